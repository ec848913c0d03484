//! The inventory (hosts.yaml): which hosts exist, how to reach them, and the
//! groups `--limit` selects by. Three shapes occur in practice and all are
//! read: a plain list of names, `hosts:` as a list (as a fleet tool writes
//! it), and `hosts:` as a mapping beside `defaults:` and `groups:`.
//!
//! Loading goes text → `parse` (the file as written, every node checked
//! where serde_yaml still knows its line) → `merge` (groups resolved,
//! settings layered) → [`Inventory`], which `--limit` then selects from.
//! `settings` holds everything about one setting, and `locate` finds the
//! line of a problem noticed after parsing. Nothing here does I/O beyond
//! reading the file: the inventory is the start of the data flow, and the
//! run, its sessions and its reports build on it, never the reverse.

mod adhoc;
mod ansible;
pub mod hostlist;
mod index;
mod limits;
mod locate;
mod merge;
mod nodeset;
mod parse;
mod settings;

use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::sync::Arc;

use adhoc::AdHoc;
use hostlist::RangeError;
use index::NameIndex;
use nodeset::Op;
pub use settings::{HostSettings, PtySetting};

/// One host of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Host {
    /// The name it is known and selected by.
    pub name: String,
    /// Defaults, groups and the host's own entry, merged; shared between
    /// hosts that have the same (a million-host `-w` range holds one).
    pub settings: Arc<HostSettings>,
    /// Groups the host belongs to, directly or through `@group` members, in
    /// file order.
    pub groups: Vec<String>,
}

impl Host {
    /// Where to connect: the `address` setting, or else the name.
    pub fn address(&self) -> &str {
        self.settings.address.as_deref().unwrap_or(&self.name)
    }
}

/// Hosts in file order, and groups of them.
#[derive(Debug, Clone)]
pub struct Inventory {
    hosts: Vec<Host>,
    index: NameIndex,
    groups: Vec<Group>,
    /// What the user should know about how the file was read.
    notes: Vec<String>,
}

/// A group: its name, and every host in it, directly or through `@group`.
#[derive(Debug, Clone)]
struct Group {
    name: String,
    /// Indexes into `Inventory::hosts`.
    members: BTreeSet<usize>,
}

/// A bad inventory or selection; `Display` is the whole one-line message.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The inventory file does not exist.
    #[error("{origin}: file not found")]
    NotFound {
        /// The file, as given.
        origin: String,
    },
    /// The inventory file exists but cannot be read as text.
    #[error("{origin}: cannot read: {source}")]
    Unreadable {
        /// The file, as given.
        origin: String,
        /// The system's explanation.
        #[source]
        source: io::Error,
    },
    /// A problem in an inventory, at `origin:line[:column]` when known.
    #[error("{origin}{}: {message}", position(*.line, *.column))]
    Invalid {
        /// The file, or `-w` for an ad hoc list.
        origin: String,
        /// 1-based line of the offending node, when it is in the file.
        line: Option<usize>,
        /// 1-based column, for YAML syntax errors.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A `--limit` name or range names a host that is not in the inventory.
    #[error("unknown host {0} in --limit")]
    UnknownHost(String),
    /// A `--limit` `@group` is not in the inventory.
    #[error("unknown group @{0} in --limit")]
    UnknownGroup(String),
    /// A `--limit` range is malformed.
    #[error("{0} in --limit")]
    BadPattern(#[source] RangeError),
    /// A host of the run `--rerun` reads is no longer in its inventory.
    #[error("host {0} of the run to rerun is no longer in its inventory")]
    Gone(String),
    /// A `--limit` glob matches no host of the inventory.
    #[error("no host matches {0} in --limit")]
    NoMatch(String),
    /// The selection is empty.
    #[error("no host selected")]
    NoHostSelected,
}

fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(":{line}:{column}"),
        (Some(line), None) => format!(":{line}"),
        _ => String::new(),
    }
}

impl Inventory {
    /// Reads and parses an inventory file; messages name `path` as given.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let origin = path.display().to_string();
        limits::check_size(path, &origin)?;
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &origin),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(InventoryError::NotFound { origin })
            }
            Err(source) => Err(InventoryError::Unreadable { origin, source }),
        }
    }

    /// Reads a plain list file (`-w ^FILE`); messages name `path` as given.
    pub fn load_plain(path: &Path) -> Result<Inventory, InventoryError> {
        let origin = path.display().to_string();
        limits::check_size(path, &origin)?;
        match std::fs::read_to_string(path) {
            Ok(text) => Self::plain_list(&text, &origin),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(InventoryError::NotFound { origin })
            }
            Err(source) => Err(InventoryError::Unreadable { origin, source }),
        }
    }

    /// Parses inventory text of any kind pushrun reads, told apart by
    /// content: a plain list of host strings, an Ansible INI inventory,
    /// an Ansible YAML inventory, or pushrun's own YAML.
    pub fn parse(text: &str, origin: &str) -> Result<Inventory, InventoryError> {
        limits::check(text, origin)?;
        if is_plain_list(text) {
            return Self::plain_list(text, origin);
        }
        if ansible::is_ini(text) {
            return ansible::parse_ini(text, origin);
        }
        if let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(text)
            && ansible::is_yaml(&doc)
        {
            return ansible::parse_yaml(&doc, text, origin);
        }
        Self::parse_yaml(text, origin)
    }

    /// Parses pushrun's own YAML; `origin` names it in messages.
    fn parse_yaml(text: &str, origin: &str) -> Result<Inventory, InventoryError> {
        let text = &*parse::checked_text(text, origin)?;
        let raw = parse::read(text, origin)?;
        let (hosts, groups) =
            merge::build(raw).map_err(|p| locate::report(p, None, text, origin))?;
        Ok(Self::new(hosts, groups))
    }

    /// Hosts from a pdsh/clush style `-w` list: a NodeSet expression
    /// (ClusterShell's operators, see the README) of host strings (`user@host:port`, ranges).
    pub fn ad_hoc(list: &str) -> Result<Inventory, InventoryError> {
        let fail = |message: String| InventoryError::Invalid {
            origin: "-w".to_owned(),
            line: None,
            column: None,
            message,
        };
        let mut hosts = AdHoc::default();
        hosts.apply(list).map_err(fail)?;
        hosts.finish().ok_or_else(|| fail("no hosts".to_owned()))
    }

    /// Hosts from a plain list file: one host string, range or NodeSet
    /// expression per line, `#` comments (what pdsh's `-w ^FILE` reads).
    pub fn plain_list(text: &str, origin: &str) -> Result<Inventory, InventoryError> {
        let mut hosts = AdHoc::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split_once('#').map_or(line, |(before, _)| before);
            hosts
                .apply(line)
                .map_err(|message| InventoryError::Invalid {
                    origin: origin.to_owned(),
                    line: Some(n + 1),
                    column: None,
                    message,
                })?;
        }
        hosts.finish().ok_or_else(|| InventoryError::Invalid {
            origin: origin.to_owned(),
            line: None,
            column: None,
            message: "no hosts".to_owned(),
        })
    }

    fn new(hosts: Vec<Host>, groups: Vec<Group>) -> Inventory {
        let index = NameIndex::of(&hosts);
        Inventory {
            hosts,
            index,
            groups,
            notes: Vec::new(),
        }
    }

    /// Notes on how the file was read (Ansible variables ignored), for
    /// the user.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// All hosts, in file order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// All hosts, in file order, without copying them.
    pub fn into_hosts(self) -> Vec<Host> {
        self.hosts
    }

    /// Group names, in file order.
    pub fn group_names(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().map(|group| group.name.as_str())
    }

    /// Hosts chosen by `--limit` patterns, in inventory order.
    ///
    /// Each pattern is a comma list of names or ranges (`node[1-5]`), globs
    /// (`web*`), `@group`s, and exclusions `!item` of any of these. The
    /// result is the union of the positive items (all hosts when there are
    /// none) minus the exclusions. A name that is not in the inventory is an
    /// error even when excluded, so that a typo cannot widen the selection.
    pub fn select(&self, patterns: &[String]) -> Result<Vec<Host>, InventoryError> {
        let count = self.hosts.len();
        let mut union: Option<Vec<bool>> = None;
        let mut filters: Vec<Vec<bool>> = Vec::new();
        for pattern in patterns {
            let operands = nodeset::operands(pattern);
            let Some(&(first, _)) = operands.first() else {
                continue;
            };
            // A pattern that starts with an operator filters all hosts.
            let filter = first != Op::Union;
            let mut set = vec![filter; count];
            for (op, operand) in operands {
                let matched = self.matching(operand)?;
                combine(&mut set, op, &matched);
            }
            if filter {
                filters.push(set);
            } else if let Some(union) = &mut union {
                union.iter_mut().zip(&set).for_each(|(u, s)| *u |= s);
            } else {
                union = Some(set);
            }
        }
        let selected: Vec<Host> = self
            .hosts
            .iter()
            .enumerate()
            .filter(|&(i, _)| union.as_ref().is_none_or(|u| u[i]) && filters.iter().all(|f| f[i]))
            .map(|(_, host)| host.clone())
            .collect();
        if selected.is_empty() {
            return Err(InventoryError::NoHostSelected);
        }
        Ok(selected)
    }

    /// These hosts, by exact name, in inventory order (`--rerun`).
    pub fn pick(&self, names: &[String]) -> Result<Vec<Host>, InventoryError> {
        let mut chosen = vec![false; self.hosts.len()];
        for name in names {
            let i = self
                .index
                .get(&self.hosts, name)
                .ok_or_else(|| InventoryError::Gone(name.clone()))?;
            chosen[i] = true;
        }
        Ok(self
            .hosts
            .iter()
            .zip(chosen)
            .filter(|&(_, chosen)| chosen)
            .map(|(host, _)| host.clone())
            .collect())
    }

    /// Indexes of the hosts one `--limit` item stands for.
    fn matching(&self, item: &str) -> Result<Vec<usize>, InventoryError> {
        if let Some(name) = item.strip_prefix('@') {
            let group = self
                .groups
                .iter()
                .find(|group| group.name == name)
                .ok_or_else(|| InventoryError::UnknownGroup(name.to_owned()))?;
            return Ok(group.members.iter().copied().collect());
        }
        let mut matched = Vec::new();
        for pattern in hostlist::expand(item).map_err(InventoryError::BadPattern)? {
            if pattern.contains(['*', '?']) {
                let before = matched.len();
                let hosts = self.hosts.iter().enumerate();
                matched.extend(
                    hosts
                        .filter(|(_, host)| glob_match(&pattern, &host.name))
                        .map(|(i, _)| i),
                );
                if matched.len() == before {
                    return Err(InventoryError::NoMatch(pattern));
                }
            } else {
                match self.index.get(&self.hosts, &pattern) {
                    Some(i) => matched.push(i),
                    None => return Err(InventoryError::UnknownHost(pattern)),
                }
            }
        }
        Ok(matched)
    }
}

/// Whether a NodeSet expression has an `@group` operand.
pub fn names_a_group(expr: &str) -> bool {
    nodeset::operands(expr)
        .iter()
        .any(|(_, operand)| operand.starts_with('@'))
}

/// Whether inventory text is a plain list: one host string per line, with
/// `#` comments, and nothing YAML would read as a list or mapping (nor
/// words with spaces, which no host string has).
fn is_plain_list(text: &str) -> bool {
    let mut lines = text
        .lines()
        .map(|line| {
            line.split_once('#')
                .map_or(line, |(before, _)| before)
                .trim()
        })
        .filter(|line| !line.is_empty())
        .peekable();
    lines.peek().is_some()
        && lines.all(|line| {
            let yaml = line.starts_with(['-', '{', '"', '\'', '&', '*', '!', '|', '>', '%'])
                || line.ends_with(':')
                || line.contains(char::is_whitespace);
            let section = line.starts_with('[') && line.ends_with(']') && !line.contains(':');
            !yaml && !section
        })
}

/// Applies one operand's hosts to a selection.
fn combine(set: &mut [bool], op: Op, matched: &[usize]) {
    match op {
        Op::Union => matched.iter().for_each(|&i| set[i] = true),
        Op::Difference => matched.iter().for_each(|&i| set[i] = false),
        Op::Intersection => {
            let mut keep = vec![false; set.len()];
            matched.iter().for_each(|&i| keep[i] = true);
            set.iter_mut().zip(keep).for_each(|(s, k)| *s &= k);
        }
        Op::Symmetric => {
            let mut seen = vec![false; set.len()];
            for &i in matched {
                if !std::mem::replace(&mut seen[i], true) {
                    set[i] = !set[i];
                }
            }
        }
    }
}

/// Checks a login name given outside the inventory (`--user`) the way the
/// inventory's `user` is checked: the same names pass, the same fail.
pub fn check_user(user: &str) -> Result<(), String> {
    parse::check_user(user).map_err(|p| p.message)
}

/// Shell-style match: `*` any run of characters, `?` any one character.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // The last `*` seen: where the pattern resumes after it, and how much of
    // the text it has swallowed so far (extended one character per retry).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p + 1, t));
            p += 1;
        } else if let Some((resume, matched)) = star {
            star = Some((resume, matched + 1));
            p = resume;
            t = matched + 1;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    pub(super) const SETTINGS_LIST: &str = "address, user, port, identity_file, ssh_options, remote_tmp, vars, password_env, become, become_user, become_password_env, pty, jump, via, forward_agent";

    pub(super) fn parse(lines: &[&str]) -> Inventory {
        Inventory::parse(&lines.join("\n"), "hosts.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    pub(super) fn error(lines: &[&str]) -> String {
        match Inventory::parse(&lines.join("\n"), "hosts.yaml") {
            Ok(inventory) => panic!("parsed: {:?}", inventory.hosts()),
            Err(e) => e.to_string(),
        }
    }

    pub(super) fn names(hosts: &[Host]) -> Vec<&str> {
        hosts.iter().map(|host| host.name.as_str()).collect()
    }

    pub(super) fn host<'a>(inventory: &'a Inventory, name: &str) -> &'a Host {
        let found = inventory.hosts().iter().find(|host| host.name == name);
        found.unwrap_or_else(|| panic!("no host {name}"))
    }

    pub(super) fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|&s| s.to_owned()).collect()
    }

    pub(super) fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn load_reads_files() {
        let dir = std::env::temp_dir().join(format!("pushrun-inventory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("hosts.yaml");
        std::fs::write(&good, "- a\n- b[1-2]\n").unwrap();
        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, "hosts:\n  a:\n    usr: x\n").unwrap();
        let missing = dir.join("missing.yaml");

        let inventory = Inventory::load(&good).unwrap();
        let bad_result = Inventory::load(&bad).map(|_| ()).unwrap_err().to_string();
        let missing_result = Inventory::load(&missing)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        std::fs::remove_dir_all(&dir).unwrap();

        assert_eq!(names(inventory.hosts()), ["a", "b1", "b2"]);
        assert_eq!(
            bad_result,
            format!(
                "{}:3: unknown key \"usr\" for host a (expected one of {SETTINGS_LIST})",
                bad.display()
            )
        );
        assert_eq!(
            missing_result,
            format!("{}: file not found", missing.display())
        );
    }

    fn fleet() -> Inventory {
        parse(&[
            "hosts:",
            "  web[01-04]:",
            "  db[1-2]:",
            "  lb1:",
            "groups:",
            "  front:",
            "    members: [lb1, \"web[01-02]\"]",
            "  back:",
            "    members: [\"db[1-2]\"]",
        ])
    }

    fn selected(inventory: &Inventory, patterns: &[&str]) -> Vec<String> {
        let hosts = inventory
            .select(&strings(patterns))
            .unwrap_or_else(|e| panic!("{patterns:?}: {e}"));
        hosts.into_iter().map(|host| host.name).collect()
    }

    fn select_error(inventory: &Inventory, patterns: &[&str]) -> String {
        match inventory.select(&strings(patterns)) {
            Ok(hosts) => panic!("{patterns:?} selected {:?}", names(&hosts)),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn select_by_name_range_glob_and_group() {
        let fleet = fleet();
        let all = ["web01", "web02", "web03", "web04", "db1", "db2", "lb1"];
        assert_eq!(selected(&fleet, &[]), all);
        assert_eq!(selected(&fleet, &["lb1"]), ["lb1"]);
        assert_eq!(selected(&fleet, &["web[02-03]"]), ["web02", "web03"]);
        assert_eq!(
            selected(&fleet, &["web*"]),
            ["web01", "web02", "web03", "web04"]
        );
        assert_eq!(selected(&fleet, &["*b?"]), ["db1", "db2", "lb1"]);
        assert_eq!(selected(&fleet, &["@back"]), ["db1", "db2"]);
        assert_eq!(selected(&fleet, &["*"]), all);
    }

    #[test]
    fn select_unions_in_inventory_order() {
        let fleet = fleet();
        assert_eq!(
            selected(&fleet, &["db2,web[03-04]"]),
            ["web03", "web04", "db2"]
        );
        assert_eq!(selected(&fleet, &["lb1", "db1"]), ["db1", "lb1"]);
        assert_eq!(
            selected(&fleet, &["@front", "db1"]),
            ["web01", "web02", "db1", "lb1"]
        );
        assert_eq!(
            selected(&fleet, &["web01,web01,@front"]),
            ["web01", "web02", "lb1"]
        );
    }

    #[test]
    fn select_with_exclusions() {
        let fleet = fleet();
        assert_eq!(
            selected(&fleet, &["!@front"]),
            ["web03", "web04", "db1", "db2"]
        );
        assert_eq!(
            selected(&fleet, &["web*,!web02"]),
            ["web01", "web03", "web04"]
        );
        assert_eq!(selected(&fleet, &["@front,!lb1"]), ["web01", "web02"]);
        assert_eq!(selected(&fleet, &["!db*", "!web[01-03]"]), ["web04", "lb1"]);
        // An exclusion wins whatever the order.
        assert_eq!(selected(&fleet, &["!web01", "web[01-02]"]), ["web02"]);
    }

    #[test]
    fn select_errors() {
        let fleet = fleet();
        assert_eq!(
            select_error(&fleet, &["node9"]),
            "unknown host node9 in --limit"
        );
        assert_eq!(
            select_error(&fleet, &["web[04-05]"]),
            "unknown host web05 in --limit"
        );
        assert_eq!(
            select_error(&fleet, &["!web9"]),
            "unknown host web9 in --limit"
        );
        assert_eq!(
            select_error(&fleet, &["@nope"]),
            "unknown group @nope in --limit"
        );
        assert_eq!(
            select_error(&fleet, &["web[3-1]"]),
            "bad host range \"web[3-1]\": reversed range in --limit"
        );
        assert_eq!(select_error(&fleet, &["web*,!web*"]), "no host selected");
        assert_eq!(
            select_error(&fleet, &["zz*"]),
            "no host matches zz* in --limit"
        );
    }

    #[test]
    fn ad_hoc_lists() {
        let inventory = Inventory::ad_hoc("root@web[1-2],db1, admin@db2,db1").unwrap();
        assert_eq!(names(inventory.hosts()), ["web1", "web2", "db1", "db2"]);
        let users: Vec<Option<&str>> = inventory
            .hosts()
            .iter()
            .map(|host| host.settings.user.as_deref())
            .collect();
        assert_eq!(users, [Some("root"), Some("root"), None, Some("admin")]);
        assert_eq!(inventory.hosts()[0].address(), "web1");
        assert_eq!(inventory.group_names().count(), 0);
        assert_eq!(selected(&inventory, &["web*"]), ["web1", "web2"]);
    }

    #[test]
    fn ad_hoc_errors() {
        let error = |list: &str| Inventory::ad_hoc(list).map(|_| ()).unwrap_err().to_string();
        assert_eq!(error(""), "-w: no hosts");
        assert_eq!(error(" , "), "-w: no hosts");
        assert_eq!(
            error("a,n[2-1]"),
            "-w: bad host range \"n[2-1]\": reversed range"
        );
        assert_eq!(error("root@a,a"), "-w: host a given with different users");
        assert_eq!(
            error("@web"),
            "-w: @web is a group: groups need an inventory (--hosts FILE, PUSHRUN_HOSTS or ./hosts.yaml)"
        );
        assert_eq!(error("a b"), "-w: bad host name \"a b\"");
        assert_eq!(error("web*"), "-w: bad host name \"web*\"");
    }

    #[test]
    fn host_strings_as_inventory_keys() {
        let inventory = parse(&[
            "hosts:",
            "  ops@db1:2222:",
            "  web[1-2]:2200: {user: www}",
            "  ops@web3: {port: 22}",
            "  \"[::1]:2022\":",
        ]);
        let at = |name: &str| {
            let s = &host(&inventory, name).settings;
            (s.user.clone(), s.port)
        };
        assert_eq!(at("db1"), (Some("ops".into()), Some(2222)));
        assert_eq!(at("web2"), (Some("www".into()), Some(2200)));
        assert_eq!(at("web3"), (Some("ops".into()), Some(22)));
        assert_eq!(at("::1"), (None, Some(2022)));
        assert_eq!(
            error(&["hosts:", "  db1:x:"]),
            "hosts.yaml:2: bad port \"x\" in \"db1:x\""
        );
        let list = parse(&["- ops@a:2200", "- b"]);
        assert_eq!(host(&list, "a").settings.port, Some(2200));
    }

    #[test]
    fn glob_matching() {
        assert!(glob_match("web*", "web01"));
        assert!(glob_match("web*", "web"));
        assert!(glob_match("*01", "web01"));
        assert!(glob_match("w?b*1", "web01"));
        assert!(glob_match("*e*0*", "web01"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("web*", "db1"));
        assert!(!glob_match("web?", "web01"));
        assert!(!glob_match("*02", "web01"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
    }
}
