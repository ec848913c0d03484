//! Finding a host by name without keeping every name twice.
//!
//! A `HashMap<String, usize>` beside the hosts holds a second copy of each
//! name: for a million-host range that doubled the memory of the whole
//! inventory. This index keeps each name's hash and position only, and
//! compares against the host's own name on lookup; names whose hashes
//! collide with another name are kept, rarely, in a small overflow map.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use super::Host;

/// Positions of hosts by name, for a `&[Host]` kept beside it.
#[derive(Debug, Clone, Default)]
pub(super) struct NameIndex {
    hasher: RandomState,
    by_hash: HashMap<u64, usize>,
    overflow: HashMap<String, usize>,
}

impl NameIndex {
    /// An index of `hosts`; the first of repeated names wins.
    pub(super) fn of(hosts: &[Host]) -> NameIndex {
        let mut index = NameIndex::default();
        index.by_hash.reserve(hosts.len());
        for (i, host) in hosts.iter().enumerate() {
            if index.get(hosts, &host.name).is_none() {
                index.insert(hosts, &host.name, i);
            }
        }
        index
    }

    /// Where `name` is in `hosts`.
    pub(super) fn get(&self, hosts: &[Host], name: &str) -> Option<usize> {
        let &i = self.by_hash.get(&self.hasher.hash_one(name))?;
        if hosts[i].name == name {
            Some(i)
        } else {
            self.overflow.get(name).copied()
        }
    }

    /// Records that `name`, not yet indexed, is at `i`.
    pub(super) fn insert(&mut self, hosts: &[Host], name: &str, i: usize) {
        let hash = self.hasher.hash_one(name);
        match self.by_hash.get(&hash) {
            Some(&j) if hosts[j].name != name => {
                self.overflow.insert(name.to_owned(), i);
            }
            _ => {
                self.by_hash.insert(hash, i);
            }
        }
    }
}
