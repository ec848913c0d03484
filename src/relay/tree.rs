//! The shape of a run with relays: which relays a selection needs, each
//! host's route, and the subtree each top relay serves.

use std::collections::{HashMap, HashSet};

use crate::events::HostId;
use crate::inventory::Host;

/// A host's `via`, unless it names the host itself (as a group or the
/// defaults may, for the relay too).
fn via(host: &Host) -> Option<&str> {
    host.settings.via.as_deref().filter(|v| *v != host.name)
}

/// The relays `selected` hosts are reached through that are not selected
/// themselves, in inventory order. Checks every `via` on the way: it must
/// name a host of the inventory, and lead to a host with none.
pub fn hops(all: &[Host], selected: &[Host]) -> Result<Vec<Host>, String> {
    // only hosts named in some `via` are looked up: memory in the number of
    // relays, not of hosts
    let named: HashSet<&str> = all.iter().chain(selected).filter_map(via).collect();
    let index: HashMap<&str, usize> = all
        .iter()
        .enumerate()
        .filter(|(_, h)| named.contains(h.name.as_str()))
        .map(|(i, h)| (h.name.as_str(), i))
        .collect();
    let chosen: HashSet<&str> = selected
        .iter()
        .map(|h| h.name.as_str())
        .filter(|n| named.contains(n))
        .collect();
    let mut needed = std::collections::BTreeSet::new();
    for host in selected {
        let mut chain = vec![host.name.as_str()];
        let mut current = host;
        while let Some(relay) = via(current) {
            let Some(&i) = index.get(relay) else {
                return Err(format!(
                    "host {}: via {relay}: no such host in the inventory",
                    current.name
                ));
            };
            if chain.contains(&relay) {
                chain.push(relay);
                return Err(format!("via loop: {}", chain.join(" -> ")));
            }
            chain.push(relay);
            if !chosen.contains(relay) {
                needed.insert(i);
            }
            current = &all[i];
        }
    }
    Ok(needed.into_iter().map(|i| all[i].clone()).collect())
}

/// The relays from the top down that `host` is reached through.
fn route<'a>(known: &HashMap<&str, &'a Host>, host: &'a Host) -> Vec<&'a Host> {
    let mut chain = Vec::new();
    let mut current = host;
    while let Some(next) = via(current).and_then(|r| known.get(r)) {
        if chain.iter().any(|h: &&Host| h.name == next.name) || chain.len() > known.len() {
            break;
        }
        chain.push(*next);
        current = next;
    }
    chain.reverse();
    chain
}

fn by_name<'a>(hosts: &'a [Host], hops: &'a [Host]) -> HashMap<&'a str, &'a Host> {
    hosts
        .iter()
        .chain(hops)
        .map(|h| (h.name.as_str(), h))
        .collect()
}

/// Each host's place in the tree (`r1/r2/node042`), `None` for direct hosts.
pub fn paths(hosts: &[Host], hops: &[Host]) -> Vec<Option<String>> {
    let known = by_name(hosts, hops);
    hosts
        .iter()
        .map(|h| {
            let chain = route(&known, h);
            (!chain.is_empty()).then(|| {
                let mut names: Vec<&str> = chain.iter().map(|r| r.name.as_str()).collect();
                names.push(&h.name);
                names.join("/")
            })
        })
        .collect()
}

/// The selection as a tree, for `pushrun hosts`: each host's `line`,
/// indented under the relay it is reached through; relays that are only
/// hops are marked so. See [`tree_each`].
pub fn tree(hosts: &[Host], hops: &[Host], line: impl Fn(&Host) -> String) -> Vec<String> {
    let mut out = Vec::with_capacity(hosts.len() + hops.len());
    tree_each(hosts, hops, line, |l| out.push(l));
    out
}

/// [`tree`], each line handed to `emit` as it is made rather than kept.
/// Linear in the number of hosts, and its memory in the number of relays:
/// only hosts that others name in `via` are indexed, each host is put under
/// its parent once, and the tree is walked once, depth first, without
/// recursion (a long chain of relays cannot overflow the stack).
pub fn tree_each(
    hosts: &[Host],
    hops: &[Host],
    line: impl Fn(&Host) -> String,
    mut emit: impl FnMut(String),
) {
    let all = || hosts.iter().chain(hops);
    let named: HashSet<&str> = all().filter_map(via).collect();
    // names are unique in an inventory, and hops are not selected hosts
    let relays: HashMap<&str, usize> = all()
        .enumerate()
        .filter(|(_, h)| named.contains(h.name.as_str()))
        .map(|(i, h)| (h.name.as_str(), i))
        .collect();
    let parent = |h: &Host| via(h).and_then(|r| relays.get(r)).copied();
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, h) in all().enumerate() {
        if let Some(p) = parent(h) {
            children.entry(p).or_default().push(i);
        }
    }
    let at = |i: usize| {
        if i < hosts.len() {
            &hosts[i]
        } else {
            &hops[i - hosts.len()]
        }
    };
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for (root, h) in all().enumerate() {
        if parent(h).is_some() {
            continue;
        }
        stack.push((root, 0));
        while let Some((i, depth)) = stack.pop() {
            let h = at(i);
            let mut text = format!("{}{}", "  ".repeat(depth), line(h));
            if i >= hosts.len() {
                text.push_str("  (relay only)");
            }
            emit(text);
            if let Some(below) = children.get(&i) {
                stack.extend(below.iter().rev().map(|&c| (c, depth + 1)));
            }
        }
    }
}

/// One top relay at this level and what is behind it.
pub(super) struct Subtree {
    /// The relay.
    pub(super) relay: Host,
    /// Job hosts behind it, with their ids at this level.
    pub(super) hosts: Vec<(HostId, Host)>,
    /// Hops behind it (not the relay itself).
    pub(super) hops: Vec<Host>,
}

/// Splits the job hosts into direct ones and subtrees, one per top relay.
pub(super) fn split(hosts: &[Host], hops: &[Host]) -> (Vec<HostId>, Vec<Subtree>) {
    let known = by_name(hosts, hops);
    let mut direct = Vec::new();
    let mut subtrees: Vec<Subtree> = Vec::new();
    // each top relay's place in `subtrees`, so placing a host is one lookup
    let mut places: HashMap<String, usize> = HashMap::new();
    let mut place = |subtrees: &mut Vec<Subtree>, top: &Host| -> usize {
        *places.entry(top.name.clone()).or_insert_with(|| {
            subtrees.push(Subtree {
                relay: top.clone(),
                hosts: Vec::new(),
                hops: Vec::new(),
            });
            subtrees.len() - 1
        })
    };
    let below = |h: &Host, top: &Host| {
        let mut h = h.clone();
        if h.settings.via.as_deref() == Some(top.name.as_str()) {
            std::sync::Arc::make_mut(&mut h.settings).via = None;
        }
        h
    };
    for (id, h) in hosts.iter().enumerate() {
        match route(&known, h).first() {
            None => direct.push(id),
            Some(top) => {
                let i = place(&mut subtrees, top);
                subtrees[i].hosts.push((id, below(h, top)));
            }
        }
    }
    for h in hops {
        if let Some(top) = route(&known, h).first() {
            let i = place(&mut subtrees, top);
            subtrees[i].hops.push(below(h, top));
        }
    }
    (direct, subtrees)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Inventory;

    fn inventory(text: &str) -> Inventory {
        Inventory::parse(text, "hosts.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn names(hosts: &[Host]) -> Vec<&str> {
        hosts.iter().map(|h| h.name.as_str()).collect()
    }

    const TREE: &str = "
hosts:
  r0:
  r1: {via: r0}
  r2: {via: r0, forward_agent: true}
  a1: {via: r1}
  a2: {via: r1}
  b1: {via: r2}
  d1:
";

    #[test]
    fn selecting_leaves_pulls_in_their_relays() {
        let inv = inventory(TREE);
        let selected = inv.select(&["a1,b1,d1".to_string()]).unwrap();
        let hops = hops(inv.hosts(), &selected).unwrap();
        assert_eq!(names(&hops), ["r0", "r1", "r2"]);
        let selected = inv.select(&["r1,a2".to_string()]).unwrap();
        assert_eq!(names(&super::hops(inv.hosts(), &selected).unwrap()), ["r0"]);
        assert_eq!(
            paths(&selected, &super::hops(inv.hosts(), &selected).unwrap()),
            [Some("r0/r1".to_string()), Some("r0/r1/a2".to_string())]
        );
    }

    #[test]
    fn the_plan_splits_into_direct_hosts_and_one_subtree_per_top_relay() {
        let inv = inventory(TREE);
        let selected = inv.select(&["a1,a2,b1,d1".to_string()]).unwrap();
        let hops = hops(inv.hosts(), &selected).unwrap();
        let (direct, subtrees) = split(&selected, &hops);
        assert_eq!(direct, [3]);
        assert_eq!(subtrees.len(), 1);
        let s = &subtrees[0];
        assert_eq!(s.relay.name, "r0");
        assert_eq!(
            s.hosts.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(names(&s.hops), ["r1", "r2"]);
        // Below r0, r1 and r2 are direct; the leaves still go through them.
        assert_eq!(s.hops[0].settings.via, None);
        assert_eq!(s.hosts[0].1.settings.via.as_deref(), Some("r1"));
        let inner: Vec<Host> = s.hosts.iter().map(|(_, h)| h.clone()).collect();
        let (direct, subtrees) = split(&inner, &s.hops);
        assert!(direct.is_empty());
        assert_eq!(
            subtrees
                .iter()
                .map(|s| s.relay.name.as_str())
                .collect::<Vec<_>>(),
            ["r1", "r2"]
        );
        assert_eq!(subtrees[1].relay.settings.forward_agent, Some(true));
    }

    #[test]
    fn bad_vias_are_refused() {
        let inv = inventory("hosts:\n  a: {via: nowhere}\n");
        let all = inv.hosts();
        assert_eq!(
            hops(all, all).unwrap_err(),
            "host a: via nowhere: no such host in the inventory"
        );
        let inv = inventory("hosts:\n  a: {via: b}\n  b: {via: c}\n  c: {via: a}\n");
        let selected = inv.select(&["a".to_string()]).unwrap();
        assert_eq!(
            hops(inv.hosts(), &selected).unwrap_err(),
            "via loop: a -> b -> c -> a"
        );
        // via in the defaults: the relay itself is direct.
        let inv = inventory("defaults: {via: gw}\nhosts:\n  gw:\n  n1:\n");
        let selected = inv.select(&["n1".to_string()]).unwrap();
        assert_eq!(names(&hops(inv.hosts(), &selected).unwrap()), ["gw"]);
    }

    #[test]
    fn bad_relay_settings_are_inventory_errors() {
        let error = |text: &str| {
            Inventory::parse(text, "hosts.yaml")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error("hosts:\n  a: {forward_agent: maybe}\n"),
            "hosts.yaml:2: forward_agent must be true or false"
        );
        assert_eq!(
            error("hosts:\n  a:\n    via: \"x y\"\n"),
            "hosts.yaml:3: bad host name \"x y\""
        );
        let inv = inventory("groups:\n  dc2: {members: [n1, n2], via: gw2}\nhosts:\n  gw2:\n");
        let n1 = inv.hosts().iter().find(|h| h.name == "n1").unwrap();
        assert_eq!(n1.settings.via.as_deref(), Some("gw2"));
    }

    #[test]
    fn the_tree_shows_relays_above_their_hosts() {
        let inv = inventory(TREE);
        let selected = inv.select(&["a1,b1,d1".to_string()]).unwrap();
        let hops = hops(inv.hosts(), &selected).unwrap();
        let lines = tree(&selected, &hops, |h| h.name.clone());
        assert_eq!(
            lines,
            [
                "d1",
                "r0  (relay only)",
                "  r1  (relay only)",
                "    a1",
                "  r2  (relay only)",
                "    b1"
            ]
        );
    }
}
