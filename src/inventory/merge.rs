//! From the file as read to hosts and groups: group members resolved, and
//! each host's settings merged from defaults, its groups and its own entry.
//!
//! This runs after parsing because a group may name hosts and `@groups`
//! defined anywhere in the file, before or after it. A host's groups apply in
//! their file order, later ones winning, whether the host is a direct member
//! or reached through an `@group`; its own entry wins over all of them.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::locate::{NodePath, Problem};
use super::{Group, Host, HostSettings};

/// The file as read, before groups are resolved and settings merged.
#[derive(Default)]
pub(super) struct RawInventory {
    /// `defaults:`.
    pub(super) defaults: HostSettings,
    /// One per host name, in file order.
    pub(super) hosts: Vec<RawHost>,
    /// `groups:`, in file order.
    pub(super) groups: Vec<RawGroup>,
}

/// A host named in `hosts:`, with its own settings.
pub(super) struct RawHost {
    pub(super) name: String,
    /// Shared by the names of one range key.
    pub(super) settings: Arc<HostSettings>,
}

/// A group as written: its settings and members.
pub(super) struct RawGroup {
    pub(super) name: String,
    pub(super) settings: HostSettings,
    pub(super) members: Vec<RawMember>,
}

/// One item of a group's `members:`.
pub(super) enum RawMember {
    /// A name or range, expanded.
    Hosts(Vec<String>),
    /// `@name`, and where it is written, for an error about it.
    Group { name: String, path: NodePath },
}

/// Resolves group members (adding hosts named only there) and merges
/// settings.
pub(super) fn build(raw: RawInventory) -> Result<(Vec<Host>, Vec<Group>), Problem> {
    let mut hosts: Vec<Host> = Vec::new();
    let mut own: Vec<Arc<HostSettings>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let none = Arc::new(HostSettings::default());
    let mut add_host = |name: &str, settings: Arc<HostSettings>| -> usize {
        *index.entry(name.to_owned()).or_insert_with(|| {
            hosts.push(Host {
                name: name.to_owned(),
                settings: Default::default(),
                groups: Vec::new(),
            });
            own.push(settings);
            hosts.len() - 1
        })
    };
    for host in raw.hosts {
        add_host(&host.name, host.settings);
    }

    let group_index: HashMap<&str, usize> = raw
        .groups
        .iter()
        .enumerate()
        .map(|(i, group)| (group.name.as_str(), i))
        .collect();
    let mut direct = vec![BTreeSet::new(); raw.groups.len()];
    let mut nested = vec![Vec::new(); raw.groups.len()];
    for (g, group) in raw.groups.iter().enumerate() {
        for member in &group.members {
            match member {
                RawMember::Hosts(names) => {
                    for name in names {
                        direct[g].insert(add_host(name, Arc::clone(&none)));
                    }
                }
                RawMember::Group { name, path } => {
                    let Some(&target) = group_index.get(name.as_str()) else {
                        return Err(Problem::new(format!(
                            "unknown group @{name} in members of group {}",
                            group.name
                        ))
                        .at(path.clone()));
                    };
                    nested[g].push((target, path));
                }
            }
        }
    }
    if hosts.is_empty() {
        return Err(Problem::new("no hosts"));
    }

    let mut resolver = Resolver {
        groups: &raw.groups,
        nested: &nested,
        members: direct,
        state: vec![Visit::New; raw.groups.len()],
        stack: Vec::new(),
    };
    for g in 0..raw.groups.len() {
        resolver.resolve(g)?;
    }
    let members = resolver.members;

    let mut memberships = vec![Vec::new(); hosts.len()];
    for (g, hosts_of_group) in members.iter().enumerate() {
        for &h in hosts_of_group {
            memberships[h].push(g);
        }
    }
    // Hosts of one range key in the same groups share one merged settings.
    let mut previous: Option<(&Arc<HostSettings>, &Vec<usize>, Arc<HostSettings>)> = None;
    for ((host, own), groups) in hosts.iter_mut().zip(&own).zip(&memberships) {
        host.groups = groups.iter().map(|&g| raw.groups[g].name.clone()).collect();
        if let Some((p_own, p_groups, merged)) = &previous
            && Arc::ptr_eq(p_own, own)
            && *p_groups == groups
        {
            host.settings = Arc::clone(merged);
            continue;
        }
        let mut settings = raw.defaults.clone();
        for &g in groups {
            settings.overlay(&raw.groups[g].settings);
        }
        settings.overlay(own);
        host.settings = Arc::new(settings);
        previous = Some((own, groups, Arc::clone(&host.settings)));
    }
    let groups = raw
        .groups
        .into_iter()
        .zip(members)
        .map(|(group, members)| Group {
            name: group.name,
            members,
        })
        .collect();
    Ok((hosts, groups))
}

/// Where the depth-first walk is with a group.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Visit {
    /// Not reached yet.
    New,
    /// On the current path: reaching it again is a cycle.
    Active,
    /// Its members are complete.
    Done,
}

/// Expands `@group` members depth first, reporting cycles.
struct Resolver<'a> {
    groups: &'a [RawGroup],
    nested: &'a [Vec<(usize, &'a NodePath)>],
    members: Vec<BTreeSet<usize>>,
    state: Vec<Visit>,
    stack: Vec<usize>,
}

impl Resolver<'_> {
    fn resolve(&mut self, g: usize) -> Result<(), Problem> {
        if self.state[g] == Visit::Done {
            return Ok(());
        }
        self.state[g] = Visit::Active;
        self.stack.push(g);
        for &(target, path) in &self.nested[g] {
            if self.state[target] == Visit::Active {
                let start = self.stack.iter().position(|&s| s == target).unwrap_or(0);
                let cycle: Vec<&str> = self.stack[start..]
                    .iter()
                    .chain([&target])
                    .map(|&s| self.groups[s].name.as_str())
                    .collect();
                return Err(
                    Problem::new(format!("group cycle: {}", cycle.join(" -> "))).at(path.clone())
                );
            }
            self.resolve(target)?;
            let inherited = self.members[target].clone();
            self.members[g].extend(inherited);
        }
        self.stack.pop();
        self.state[g] = Visit::Done;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::inventory::HostSettings;
    use crate::inventory::tests::{error, host, names, parse, strings, vars};

    #[test]
    fn merge_precedence() {
        let inventory = parse(&[
            "defaults:",
            "  user: d",
            "  port: 1",
            "  remote_tmp: /tmp/d",
            "  ssh_options: [D=1]",
            "  vars: {A: d, B: d, C: d, D: d}",
            "hosts:",
            "  h:",
            "    user: h",
            "    ssh_options: [H=1]",
            "    vars: {A: h}",
            "  other:",
            "groups:",
            "  first:",
            "    members: [h]",
            "    user: first",
            "    port: 2",
            "    ssh_options: [F=1, F=2]",
            "    vars: {A: first, B: first, C: first}",
            "  second:",
            "    members: [h]",
            "    port: 3",
            "    ssh_options: [S=1]",
            "    vars: {B: second}",
        ]);
        let h = host(&inventory, "h");
        assert_eq!(h.groups, ["first", "second"]);
        assert_eq!(
            *h.settings,
            HostSettings {
                user: Some("h".into()),
                port: Some(3),
                remote_tmp: Some("/tmp/d".into()),
                ssh_options: strings(&["H=1", "S=1", "F=1", "F=2", "D=1"]),
                vars: vars(&[("A", "h"), ("B", "second"), ("C", "first"), ("D", "d")]),
                ..HostSettings::default()
            }
        );
        let other = host(&inventory, "other");
        assert!(other.groups.is_empty());
        assert_eq!(
            *other.settings,
            HostSettings {
                user: Some("d".into()),
                port: Some(1),
                remote_tmp: Some("/tmp/d".into()),
                ssh_options: strings(&["D=1"]),
                vars: vars(&[("A", "d"), ("B", "d"), ("C", "d"), ("D", "d")]),
                ..HostSettings::default()
            }
        );
    }

    #[test]
    fn nested_groups() {
        let inventory = parse(&[
            "hosts: [a, b, c, d]",
            "groups:",
            "  all:",
            "    members: [\"@front\", \"@back\"]",
            "    vars: {TIER: any}",
            "  front:",
            "    members: [a, \"@edge\"]",
            "    vars: {TIER: front}",
            "  back:",
            "    members: [c]",
            "  edge:",
            "    members: [b]",
            "    vars: {TIER: edge}",
        ]);
        assert_eq!(host(&inventory, "a").groups, ["all", "front"]);
        assert_eq!(host(&inventory, "b").groups, ["all", "front", "edge"]);
        assert_eq!(host(&inventory, "c").groups, ["all", "back"]);
        assert!(host(&inventory, "d").groups.is_empty());
        assert_eq!(
            host(&inventory, "a").settings.vars,
            vars(&[("TIER", "front")])
        );
        assert_eq!(
            host(&inventory, "b").settings.vars,
            vars(&[("TIER", "edge")])
        );
        assert_eq!(
            host(&inventory, "c").settings.vars,
            vars(&[("TIER", "any")])
        );
        let all = inventory.select(&strings(&["@all"])).unwrap();
        assert_eq!(names(&all), ["a", "b", "c"]);
    }

    #[test]
    fn group_cycles_are_errors() {
        assert_eq!(
            error(&[
                "hosts: [a]",
                "groups:",
                "  x:",
                "    members: [a, \"@y\"]",
                "  y:",
                "    members:",
                "      - \"@z\"",
                "  z:",
                "    members: [\"@x\"]",
            ]),
            "hosts.yaml:9: group cycle: x -> y -> z -> x"
        );
        assert_eq!(
            error(&[
                "groups:",
                "  x:",
                "    members:",
                "      - a",
                "      - \"@x\""
            ]),
            "hosts.yaml:5: group cycle: x -> x"
        );
        // Reaching a group twice without a cycle is fine.
        let inventory = parse(&[
            "groups:",
            "  top:",
            "    members: [\"@left\", \"@right\"]",
            "  left:",
            "    members: [\"@base\"]",
            "  right:",
            "    members: [\"@base\"]",
            "  base:",
            "    members: [a]",
        ]);
        assert_eq!(
            host(&inventory, "a").groups,
            ["top", "left", "right", "base"]
        );
    }

    #[test]
    fn unknown_group_reference() {
        assert_eq!(
            error(&[
                "hosts: [a]",
                "groups:",
                "  web:",
                "    members: [a, \"@nope\"]",
            ]),
            "hosts.yaml:4: unknown group @nope in members of group web"
        );
    }

    #[test]
    fn no_hosts() {
        assert_eq!(error(&[""]), "hosts.yaml: no hosts");
        assert_eq!(error(&["# nothing yet"]), "hosts.yaml: no hosts");
        assert_eq!(error(&["hosts: []"]), "hosts.yaml: no hosts");
        assert_eq!(
            error(&["defaults:", "  user: x", "hosts:"]),
            "hosts.yaml: no hosts"
        );
        assert_eq!(
            error(&["groups:", "  g:", "    members: []"]),
            "hosts.yaml: no hosts"
        );
    }
}
