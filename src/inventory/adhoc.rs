//! Hosts named on the spot: a `-w` list or a plain list file, NodeSet
//! expressions of host strings applied one after the other. Kept apart
//! from the inventory files because no group or setting comes with them,
//! only what a host string carries (user, port).

use std::collections::HashSet;
use std::sync::Arc;

use super::index::NameIndex;
use super::nodeset::{self, Op};
use super::{Host, HostSettings, Inventory, hostlist, parse};

/// Hosts of a `-w` list or a plain list file, as NodeSet expressions of
/// host strings are applied to them; removed hosts keep their slot (dead)
/// so that a host added back keeps its first place.
#[derive(Default)]
pub(super) struct AdHoc {
    hosts: Vec<Host>,
    alive: Vec<bool>,
    index: NameIndex,
}

impl AdHoc {
    /// Applies one expression.
    pub(super) fn apply(&mut self, expr: &str) -> Result<(), String> {
        for (op, operand) in nodeset::operands(expr) {
            let hosts = Self::expand(operand)?;
            match op {
                Op::Union => {
                    self.hosts.reserve(hosts.size_hint().0);
                    self.alive.reserve(hosts.size_hint().0);
                    for host in hosts {
                        self.add(host)?;
                    }
                }
                Op::Difference => {
                    for host in hosts {
                        if let Some(i) = self.index.get(&self.hosts, &host.name) {
                            self.alive[i] = false;
                        }
                    }
                }
                Op::Intersection => {
                    let keep: HashSet<String> = hosts.map(|h| h.name).collect();
                    for (i, host) in self.hosts.iter().enumerate() {
                        self.alive[i] &= keep.contains(&host.name);
                    }
                }
                Op::Symmetric => {
                    let mut seen = HashSet::new();
                    for host in hosts {
                        if !seen.insert(host.name.clone()) {
                            continue;
                        }
                        match self.index.get(&self.hosts, &host.name) {
                            Some(i) if self.alive[i] => self.alive[i] = false,
                            _ => self.add(host)?,
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The hosts one operand stands for, built one at a time as they are
    /// used so that a million-host range is held once.
    fn expand(operand: &str) -> Result<impl Iterator<Item = Host>, String> {
        if let Some(group) = operand.strip_prefix('@') {
            return Err(format!(
                "@{group} is a group: groups need an inventory (--hosts FILE, PUSHRUN_HOSTS or ./hosts.yaml)"
            ));
        }
        let hs = nodeset::host_string(operand)?;
        if let Some(user) = hs.user {
            parse::check_user(user).map_err(|p| p.message)?;
        }
        let names = if hs.ipv6 {
            vec![hs.pattern.to_owned()]
        } else {
            hostlist::expand(hs.pattern).map_err(|e| e.to_string())?
        };
        for name in &names {
            parse::check_host_name(name).map_err(|p| p.message)?;
        }
        let settings = Arc::new(HostSettings {
            user: hs.user.map(str::to_owned),
            port: hs.port,
            ..HostSettings::default()
        });
        Ok(names.into_iter().map(move |name| Host {
            name,
            settings: Arc::clone(&settings),
            groups: Vec::new(),
        }))
    }

    fn add(&mut self, host: Host) -> Result<(), String> {
        let Some(i) = self.index.get(&self.hosts, &host.name) else {
            self.hosts.push(host);
            let last = self.hosts.len() - 1;
            self.index.insert(&self.hosts, &self.hosts[last].name, last);
            self.alive.push(true);
            return Ok(());
        };
        if !self.alive[i] {
            self.hosts[i] = host;
            self.alive[i] = true;
            return Ok(());
        }
        let had = &self.hosts[i].settings;
        if had.user != host.settings.user {
            return Err(format!("host {} given with different users", host.name));
        }
        if had.port != host.settings.port {
            return Err(format!("host {} given with different ports", host.name));
        }
        Ok(())
    }

    /// The live hosts, or `None` when there are none.
    pub(super) fn finish(self) -> Option<Inventory> {
        if self.alive.iter().all(|&alive| alive) {
            let index = self.index;
            return (!self.hosts.is_empty()).then(|| Inventory {
                hosts: self.hosts,
                index,
                groups: Vec::new(),
                notes: Vec::new(),
            });
        }
        let hosts: Vec<Host> = self
            .hosts
            .into_iter()
            .zip(self.alive)
            .filter_map(|(host, alive)| alive.then_some(host))
            .collect();
        (!hosts.is_empty()).then(|| Inventory::new(hosts, Vec::new()))
    }
}
