//! The inventory (hosts.yaml): which hosts exist, how to reach them, and the
//! groups `--limit` selects by. Three shapes occur in practice and all are
//! read: a plain list of names, `hosts:` as a list (as a fleet tool writes
//! it), and `hosts:` as a mapping beside `defaults:` and `groups:`.
//!
//! Inventories are edited by hand and fixed from the message alone, so each
//! mistake is one line naming file, line and problem. Hand-written serde
//! visitors check every node while serde_yaml still knows its position, and
//! keep the wording in a shared `Ctx`. Problems found only after parsing
//! (`@group` references, the earlier of two duplicates) are located by
//! parsing again with a probe that fails on purpose at that node: exact,
//! where scanning the text for the key is fooled by flow style and quoting.
//!
//! YAML forbids `[` in an unquoted scalar inside a flow list, yet range users
//! write `members: [node[001-002], db1]`. When the parser stops at such a
//! `[`, that token alone is quoted and the text parsed again, so valid YAML
//! is never altered and lines stay put.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::io;
use std::path::{Path, PathBuf};

use serde::de::{
    self, DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};

pub mod hostlist;

use hostlist::RangeError;

/// How to reach a host. The same settings are accepted in `defaults:`, in
/// groups and in host entries; [`Host::settings`] holds the merged result.
/// Serializable, so that a relay receives them as merged here.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostSettings {
    /// Where to connect; the host name when unset.
    pub address: Option<String>,
    /// Login user; ssh's default when unset.
    pub user: Option<String>,
    /// sshd port; ssh's default when unset.
    pub port: Option<u16>,
    /// Private key file, `~/` expanded against `$HOME`.
    pub identity_file: Option<PathBuf>,
    /// `Key=Value` options for `ssh -o`, most specific first, since ssh keeps
    /// the first value it is given.
    pub ssh_options: Vec<String>,
    /// Absolute directory for pushed files on the host.
    pub remote_tmp: Option<String>,
    /// Environment variables for remote commands.
    pub vars: BTreeMap<String, String>,
    /// The initiator's environment variable holding this host's login password.
    pub password_env: Option<String>,
    /// Run commands and payloads through sudo.
    pub become_: Option<bool>,
    /// Whom sudo runs them as (root when unset).
    pub become_user: Option<String>,
    /// The initiator's environment variable holding the sudo password.
    pub become_password_env: Option<String>,
    /// PTY policy for this host: `yes`, `no` or `auto`.
    pub pty: Option<PtySetting>,
    /// A jump host, `[user@]host[:port]` (ssh's ProxyJump).
    pub jump: Option<String>,
    /// The relay host this host is reached through (see `relay`).
    pub via: Option<String>,
    /// For a relay: forward the ssh agent to it, for its ssh to the hosts behind it.
    pub forward_agent: Option<bool>,
}

/// A host's `pty:` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PtySetting {
    /// Never a PTY.
    No,
    /// Always a PTY.
    Yes,
    /// A PTY where needed (sudo's requiretty) and allowed.
    Auto,
}

impl HostSettings {
    /// Layers `over` on top of these settings: its scalars and vars win, its
    /// ssh options go first.
    fn overlay(&mut self, over: &HostSettings) {
        fn take<T: Clone>(slot: &mut Option<T>, over: &Option<T>) {
            if over.is_some() {
                slot.clone_from(over);
            }
        }
        take(&mut self.address, &over.address);
        take(&mut self.user, &over.user);
        take(&mut self.port, &over.port);
        take(&mut self.identity_file, &over.identity_file);
        take(&mut self.remote_tmp, &over.remote_tmp);
        take(&mut self.password_env, &over.password_env);
        take(&mut self.become_, &over.become_);
        take(&mut self.become_user, &over.become_user);
        take(&mut self.become_password_env, &over.become_password_env);
        take(&mut self.pty, &over.pty);
        take(&mut self.jump, &over.jump);
        take(&mut self.via, &over.via);
        take(&mut self.forward_agent, &over.forward_agent);
        self.ssh_options
            .splice(0..0, over.ssh_options.iter().cloned());
        self.vars
            .extend(over.vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// One host of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Host {
    /// The name it is known and selected by.
    pub name: String,
    /// Defaults, groups and the host's own entry, merged.
    pub settings: HostSettings,
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
    index: HashMap<String, usize>,
    groups: Vec<Group>,
}

#[derive(Debug, Clone)]
struct Group {
    name: String,
    /// Indexes into `Inventory::hosts`.
    members: BTreeSet<usize>,
}

/// A bad inventory or selection; `Display` is the whole one-line message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    /// The inventory file does not exist.
    #[error("{origin}: file not found")]
    NotFound {
        /// The file, as given.
        origin: String,
    },
    /// The inventory file exists but cannot be read as text.
    #[error("{origin}: cannot read: {reason}")]
    Unreadable {
        /// The file, as given.
        origin: String,
        /// The system's explanation.
        reason: String,
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
    BadPattern(RangeError),
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
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &origin),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(InventoryError::NotFound { origin })
            }
            Err(e) => Err(InventoryError::Unreadable {
                origin,
                reason: e.to_string(),
            }),
        }
    }

    /// Parses inventory text; `origin` names it in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Inventory, InventoryError> {
        let text = &*checked_text(text, origin)?;
        let ctx = Ctx {
            problem: RefCell::default(),
            home: std::env::var_os("HOME").map(PathBuf::from),
        };
        let raw = match FileSeed(&ctx).deserialize(serde_yaml::Deserializer::from_str(text)) {
            Ok(raw) => raw,
            Err(error) => {
                let line = error.location().map(|l| l.line());
                let problem = ctx
                    .problem
                    .take()
                    .unwrap_or_else(|| Problem::new(yaml_message(&error)));
                return Err(report(problem, line, text, origin));
            }
        };
        let (hosts, groups) = build(raw).map_err(|p| report(p, None, text, origin))?;
        Ok(Self::new(hosts, groups))
    }

    /// Hosts from a pdsh/clush style `-w` list: names and ranges separated
    /// by commas, each optionally `user@`. Repeats are ignored.
    pub fn ad_hoc(list: &str) -> Result<Inventory, InventoryError> {
        let fail = |message: String| InventoryError::Invalid {
            origin: "-w".to_owned(),
            line: None,
            column: None,
            message,
        };
        let mut hosts: Vec<Host> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for item in hostlist::split_list(list) {
            let (user, pattern) = match item.split_once('@') {
                Some((user, pattern)) => (Some(user), pattern),
                None => (None, item.as_str()),
            };
            if let Some(user) = user {
                check_user(user).map_err(|p| fail(p.message))?;
            }
            for name in hostlist::expand(pattern).map_err(|e| fail(e.to_string()))? {
                check_host_name(&name).map_err(|p| fail(p.message))?;
                match index.get(&name) {
                    Some(&i) if hosts[i].settings.user.as_deref() != user => {
                        return Err(fail(format!("host {name} given with different users")));
                    }
                    Some(_) => {}
                    None => {
                        index.insert(name.clone(), hosts.len());
                        hosts.push(Host {
                            name,
                            settings: HostSettings {
                                user: user.map(str::to_owned),
                                ..HostSettings::default()
                            },
                            groups: Vec::new(),
                        });
                    }
                }
            }
        }
        if hosts.is_empty() {
            return Err(fail("no hosts".to_owned()));
        }
        Ok(Self::new(hosts, Vec::new()))
    }

    fn new(hosts: Vec<Host>, groups: Vec<Group>) -> Inventory {
        let index = hosts
            .iter()
            .enumerate()
            .map(|(i, host)| (host.name.clone(), i))
            .collect();
        Inventory {
            hosts,
            index,
            groups,
        }
    }

    /// All hosts, in file order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
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
        let mut included: Option<Vec<bool>> = None;
        let mut excluded = vec![false; self.hosts.len()];
        for item in patterns.iter().flat_map(|p| hostlist::split_list(p)) {
            let (marks, pattern) = match item.strip_prefix('!') {
                Some(pattern) => (&mut excluded, pattern),
                None => (
                    included.get_or_insert_with(|| vec![false; self.hosts.len()]),
                    item.as_str(),
                ),
            };
            for i in self.matching(pattern)? {
                marks[i] = true;
            }
        }
        let selected: Vec<Host> = self
            .hosts
            .iter()
            .enumerate()
            .filter(|&(i, _)| included.as_ref().is_none_or(|inc| inc[i]) && !excluded[i])
            .map(|(_, host)| host.clone())
            .collect();
        if selected.is_empty() {
            return Err(InventoryError::NoHostSelected);
        }
        Ok(selected)
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
                let hosts = self.hosts.iter().enumerate();
                matched.extend(
                    hosts
                        .filter(|(_, host)| glob_match(&pattern, &host.name))
                        .map(|(i, _)| i),
                );
            } else {
                match self.index.get(&pattern) {
                    Some(&i) => matched.push(i),
                    None => return Err(InventoryError::UnknownHost(pattern)),
                }
            }
        }
        Ok(matched)
    }
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

// ---------------------------------------------------------------------------
// Merging

/// The file as read, before groups are resolved and settings merged.
#[derive(Default)]
struct RawInventory {
    defaults: HostSettings,
    /// One per host name, in file order.
    hosts: Vec<RawHost>,
    groups: Vec<RawGroup>,
}

struct RawHost {
    name: String,
    settings: HostSettings,
}

struct RawGroup {
    name: String,
    settings: HostSettings,
    members: Vec<RawMember>,
}

enum RawMember {
    Hosts(Vec<String>),
    Group { name: String, path: NodePath },
}

/// Resolves group members (adding hosts named only there) and merges
/// settings.
fn build(raw: RawInventory) -> Result<(Vec<Host>, Vec<Group>), Problem> {
    let mut hosts: Vec<Host> = Vec::new();
    let mut own: Vec<HostSettings> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut add_host = |name: &str, settings: HostSettings| -> usize {
        *index.entry(name.to_owned()).or_insert_with(|| {
            hosts.push(Host {
                name: name.to_owned(),
                settings: HostSettings::default(),
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
                        direct[g].insert(add_host(name, HostSettings::default()));
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
    for ((host, own), groups) in hosts.iter_mut().zip(&own).zip(&memberships) {
        let mut settings = raw.defaults.clone();
        for &g in groups {
            settings.overlay(&raw.groups[g].settings);
            host.groups.push(raw.groups[g].name.clone());
        }
        settings.overlay(own);
        host.settings = settings;
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Visit {
    New,
    Active,
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

// ---------------------------------------------------------------------------
// Problems and where they are

/// One step from a node to a child, to find a node again in the text.
#[derive(Debug, Clone)]
enum Step {
    /// The mapping entry with this key.
    Key(&'static str),
    /// The n-th mapping entry.
    Entry(usize),
    /// The n-th sequence element.
    Item(usize),
}

type NodePath = Vec<Step>;

/// A problem in the file, in our words.
#[derive(Debug)]
struct Problem {
    message: String,
    /// The node at fault, when serde_yaml's position is not the right one.
    at: Option<NodePath>,
    /// An earlier definition to mention as "also at line N".
    also_at: Option<NodePath>,
}

impl Problem {
    fn new(message: impl Into<String>) -> Self {
        Problem {
            message: message.into(),
            at: None,
            also_at: None,
        }
    }

    fn at(self, path: NodePath) -> Self {
        Problem {
            at: Some(path),
            ..self
        }
    }

    fn also_at(self, path: NodePath) -> Self {
        Problem {
            also_at: Some(path),
            ..self
        }
    }
}

impl From<String> for Problem {
    fn from(message: String) -> Self {
        Problem::new(message)
    }
}

impl From<&str> for Problem {
    fn from(message: &str) -> Self {
        Problem::new(message)
    }
}

/// Turns a problem into the one-line error, `line` being serde_yaml's.
fn report(problem: Problem, line: Option<usize>, text: &str, origin: &str) -> InventoryError {
    let line = problem.at.as_deref().and_then(|p| locate(text, p)).or(line);
    let mut message = problem.message;
    if let Some(first) = problem.also_at.as_deref().and_then(|p| locate(text, p)) {
        let _ = write!(message, " (also at line {first})");
    }
    InventoryError::Invalid {
        origin: origin.to_owned(),
        line,
        column: None,
        message,
    }
}

/// Checks the YAML syntax and returns the text to read, with host ranges
/// written bare in flow collections quoted (see the module docs). Lines are
/// unchanged, so later errors and `locate` can use the returned text.
fn checked_text<'t>(text: &'t str, origin: &str) -> Result<Cow<'t, str>, InventoryError> {
    let mut current = Cow::Borrowed(text);
    // Offsets in `current` of the quotes added, in increasing order: each
    // repair is at the parser's first error, after the previous one.
    let mut added: Vec<usize> = Vec::new();
    loop {
        let Err(error) = serde_yaml::from_str::<IgnoredAny>(&current) else {
            return Ok(current);
        };
        if let Some((start, end)) = bare_range(&current, &error) {
            let mut fixed = String::with_capacity(current.len() + 2);
            fixed.push_str(&current[..start]);
            fixed.push('"');
            fixed.push_str(&current[start..end]);
            fixed.push('"');
            fixed.push_str(&current[end..]);
            added.extend([start, end + 1]);
            current = Cow::Owned(fixed);
            continue;
        }
        let (line, column) = match error.location() {
            Some(l) if added.is_empty() => (Some(l.line()), Some(l.column())),
            Some(l) => {
                let index = l.index() - added.iter().filter(|&&q| q < l.index()).count();
                let (line, column) = line_column(text, index);
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        return Err(InventoryError::Invalid {
            origin: origin.to_owned(),
            line,
            column,
            message: format!("yaml syntax error: {}", yaml_message(&error)),
        });
    }
}

/// The byte span of a host range such as `node[1-3]` written unquoted in a
/// flow collection, when that is where the parser stopped: YAML forbids `[`
/// inside plain scalars there, and libyaml reports the `[`.
fn bare_range(text: &str, error: &serde_yaml::Error) -> Option<(usize, usize)> {
    let at = error.location()?.index();
    if !text.get(at..)?.starts_with('[')
        || !error
            .to_string()
            .starts_with("did not find expected ',' or ")
    {
        return None;
    }
    let delimiter = |c: char| c.is_whitespace() || matches!(c, '[' | ']' | '{' | '}' | ',');
    let start = text[..at]
        .char_indices()
        .rev()
        .find(|&(_, c)| delimiter(c))
        .map_or(0, |(i, c)| i + c.len_utf8());
    if start == at {
        return None;
    }
    let mut depth = 0usize;
    let mut end = text.len();
    let mut chars = text[start..].char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let key_end = c == ':'
            && chars
                .peek()
                .is_none_or(|&(_, next)| next.is_whitespace() || matches!(next, ',' | ']' | '}'));
        if depth == 0 && (c.is_whitespace() || matches!(c, ',' | ']' | '}') || key_end) {
            end = start + i;
            break;
        }
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            '"' | '\'' | '\\' => return None,
            c if c.is_whitespace() => return None,
            _ => {}
        }
    }
    (depth == 0 && end > at).then_some((start, end))
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, index: usize) -> (usize, usize) {
    let before = text.get(..index).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// serde_yaml's message without the position it appends (we print that
/// ourselves).
fn yaml_message(error: &serde_yaml::Error) -> String {
    let message = error.to_string();
    match error.location() {
        Some(l) => message.replacen(
            &format!(" at line {} column {}", l.line(), l.column()),
            "",
            1,
        ),
        None => message,
    }
}

/// The line of the node at `path` (keys for `Key`/`Entry`, elements for
/// `Item`): a second parse stops with an error at that node, and serde_yaml
/// marks the error with the node's position.
fn locate(text: &str, path: &[Step]) -> Option<usize> {
    let error = Probe(path)
        .deserialize(serde_yaml::Deserializer::from_str(text))
        .err()?;
    error.location().map(|l| l.line())
}

/// Walks `path`; at its end every `visit_*` (the defaults included) fails.
struct Probe<'p>(&'p [Step]);

const FOUND: &str = "found";

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(FOUND)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (target, rest) = match self.0.split_first() {
            None => return Err(A::Error::custom(FOUND)),
            Some((&Step::Item(n), rest)) => (n, rest),
            Some(_) => (usize::MAX, &[][..]),
        };
        let mut i = 0;
        loop {
            let more = if i == target {
                seq.next_element_seed(Probe(rest))?.is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((step, rest)) = self.0.split_first() else {
            return Err(A::Error::custom(FOUND));
        };
        let mut index = 0;
        while let Some(hit) = map.next_key_seed(ProbeKey {
            step,
            index,
            last: rest.is_empty(),
        })? {
            if hit {
                map.next_value_seed(Probe(rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
            index += 1;
        }
        Ok(())
    }
}

/// A key on the probe's path: tells whether it is the step's key, and fails
/// there when it is the last step.
struct ProbeKey<'p> {
    step: &'p Step,
    index: usize,
    last: bool,
}

impl<'de> DeserializeSeed<'de> for ProbeKey<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for ProbeKey<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        let hit = match self.step {
            Step::Key(name) => key == *name,
            Step::Entry(n) => self.index == *n,
            Step::Item(_) => false,
        };
        if hit && self.last {
            return Err(E::custom(FOUND));
        }
        Ok(hit)
    }
}

// ---------------------------------------------------------------------------
// Reading the YAML

/// State shared by the visitors.
struct Ctx {
    /// The first problem found, in our words.
    problem: RefCell<Option<Problem>>,
    home: Option<PathBuf>,
}

impl Ctx {
    /// Records `problem` and returns an error for serde_yaml to mark with
    /// the position of the node being visited.
    fn fail<E: de::Error>(&self, problem: impl Into<Problem>) -> E {
        let problem = problem.into();
        let error = E::custom(&problem.message);
        self.problem.borrow_mut().get_or_insert(problem);
        error
    }

    /// Words an error raised by serde_yaml itself (a node of the wrong kind),
    /// unless a node inside already recorded its problem.
    fn note<E>(&self, error: E, message: impl FnOnce() -> String) -> E {
        self.problem
            .borrow_mut()
            .get_or_insert_with(|| Problem::new(message()));
        error
    }
}

/// YAML null: `~`, `null` or nothing. Scalars are read as their text, so a
/// quoted "null" counts too, which no host, user or path is called.
fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

fn non_null(text: &str) -> Option<&str> {
    (!is_null(text)).then_some(text)
}

/// A scalar node, read as its source text (`1.10` stays `1.10`) and checked
/// by `parse` inside the visit, so that errors carry the node's line.
struct Scalar<'a, F> {
    ctx: &'a Ctx,
    what: &'a str,
    parse: F,
}

fn scalar<'a, T, F>(ctx: &'a Ctx, what: &'a str, parse: F) -> Scalar<'a, F>
where
    F: FnOnce(&str) -> Result<T, Problem>,
{
    Scalar { ctx, what, parse }
}

impl<'de, T, F> DeserializeSeed<'de> for Scalar<'_, F>
where
    F: FnOnce(&str) -> Result<T, Problem>,
{
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        let (ctx, what) = (self.ctx, self.what);
        deserializer
            .deserialize_str(self)
            .map_err(|e| ctx.note(e, || format!("{what} must be a single value")))
    }
}

impl<'de, T, F> Visitor<'de> for Scalar<'_, F>
where
    F: FnOnce(&str) -> Result<T, Problem>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} as a single value", self.what)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.parse)(text).map_err(|problem| self.ctx.fail(problem))
    }
}

/// A key that must be one of `allowed` and not repeat one in `seen`.
fn known_key<'a>(
    ctx: &'a Ctx,
    what: &'static str,
    allowed: &'static [&'static str],
    seen: &'a [&'static str],
    context: &'a str,
) -> Scalar<'a, impl FnOnce(&str) -> Result<&'static str, Problem>> {
    scalar(ctx, what, move |text| {
        let Some(&key) = allowed.iter().find(|&&key| key == text) else {
            return Err(format!(
                "unknown {what} {text:?}{context} (expected one of {})",
                allowed.join(", ")
            )
            .into());
        };
        if seen.contains(&key) {
            return Err(format!("duplicate {what} {text:?}{context}").into());
        }
        Ok(key)
    })
}

/// Reads a sequence of scalars, each checked by `item(index, text)`.
fn read_list<'de, A, T>(
    ctx: &Ctx,
    mut seq: A,
    what: &str,
    mut item: impl FnMut(usize, &str) -> Result<T, Problem>,
) -> Result<Vec<T>, A::Error>
where
    A: SeqAccess<'de>,
{
    let mut values = Vec::new();
    while let Some(value) =
        seq.next_element_seed(scalar(ctx, what, |text| item(values.len(), text)))?
    {
        values.push(value);
    }
    Ok(values)
}

/// Top-level keys.
const FILE_KEYS: &[&str] = &["defaults", "hosts", "groups"];
/// Keys of `defaults:` and host entries.
const SETTING_KEYS: &[&str] = &[
    "address",
    "user",
    "port",
    "identity_file",
    "ssh_options",
    "remote_tmp",
    "vars",
    "password_env",
    "become",
    "become_user",
    "become_password_env",
    "pty",
    "jump",
    "via",
    "forward_agent",
];
/// Keys of a group: its members, and every setting.
static GROUP_KEYS: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| [&["members"], SETTING_KEYS].concat());

/// The whole document.
struct FileSeed<'a>(&'a Ctx);

impl<'de> DeserializeSeed<'de> for FileSeed<'_> {
    type Value = RawInventory;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawInventory, D::Error> {
        let ctx = self.0;
        deserializer.deserialize_any(self).map_err(|e| {
            ctx.note(e, || {
                "expected a list of hosts or a mapping with hosts:".to_owned()
            })
        })
    }
}

impl<'de> Visitor<'de> for FileSeed<'_> {
    type Value = RawInventory;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of hosts or a mapping with hosts:")
    }

    fn visit_unit<E: de::Error>(self) -> Result<RawInventory, E> {
        Ok(RawInventory::default())
    }

    /// An empty document.
    fn visit_none<E: de::Error>(self) -> Result<RawInventory, E> {
        Ok(RawInventory::default())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawInventory, A::Error> {
        let mut defined = HashMap::new();
        let names = read_list(self.0, seq, "host name", |i, text| {
            define_hosts(text, &[Step::Item(i)], &mut defined)
        })?;
        Ok(RawInventory {
            hosts: plain_hosts(names),
            ..RawInventory::default()
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawInventory, A::Error> {
        let ctx = self.0;
        let mut raw = RawInventory::default();
        let mut seen = Vec::new();
        while let Some(key) =
            map.next_key_seed(known_key(ctx, "top-level key", FILE_KEYS, &seen, ""))?
        {
            seen.push(key);
            match key {
                "defaults" => {
                    raw.defaults = map
                        .next_value_seed(SettingsSeed {
                            ctx,
                            owner: Owner::Defaults,
                        })?
                        .settings;
                }
                "hosts" => raw.hosts = map.next_value_seed(HostsSeed(ctx))?,
                "groups" => raw.groups = map.next_value_seed(GroupsSeed(ctx))?,
                _ => unreachable!("known_key returns allowed keys only"),
            }
        }
        Ok(raw)
    }
}

fn plain_hosts(names: Vec<Vec<String>>) -> Vec<RawHost> {
    names
        .into_iter()
        .flatten()
        .map(|name| RawHost {
            name,
            settings: HostSettings::default(),
        })
        .collect()
}

/// Expands a host key or list item, checking names and duplicates against
/// `defined` (name → where it was defined).
fn define_hosts(
    text: &str,
    path: &[Step],
    defined: &mut HashMap<String, NodePath>,
) -> Result<Vec<String>, Problem> {
    if is_null(text) {
        return Err("empty host name".into());
    }
    let names = hostlist::expand(text).map_err(|e| Problem::new(e.to_string()))?;
    for name in &names {
        check_host_name(name)?;
        if let Some(first) = defined.get(name) {
            return Err(Problem::new(format!("duplicate host {name}")).also_at(first.clone()));
        }
        defined.insert(name.clone(), path.to_vec());
    }
    Ok(names)
}

/// Rejects names that ssh would misread (`-o…`) or that clash with list,
/// user, glob or exclusion syntax.
fn check_host_name(name: &str) -> Result<(), Problem> {
    let bad = name.starts_with('-')
        || name
            .chars()
            .any(|c| c.is_whitespace() || ",@*?![]".contains(c));
    if bad {
        return Err(format!("bad host name {name:?}").into());
    }
    Ok(())
}

fn check_user(user: &str) -> Result<(), Problem> {
    if user.is_empty()
        || user.starts_with('-')
        || user.contains(|c: char| c.is_whitespace() || c == '@')
    {
        return Err(format!("bad user name {user:?}").into());
    }
    Ok(())
}

/// `hosts:` as a list or as a mapping of names/ranges to settings.
struct HostsSeed<'a>(&'a Ctx);

impl<'de> DeserializeSeed<'de> for HostsSeed<'_> {
    type Value = Vec<RawHost>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<RawHost>, D::Error> {
        let ctx = self.0;
        deserializer
            .deserialize_any(self)
            .map_err(|e| ctx.note(e, || "hosts must be a list or a mapping".to_owned()))
    }
}

impl<'de> Visitor<'de> for HostsSeed<'_> {
    type Value = Vec<RawHost>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list or mapping of hosts")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vec<RawHost>, E> {
        Ok(Vec::new())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<RawHost>, A::Error> {
        let mut defined = HashMap::new();
        let names = read_list(self.0, seq, "host name", |i, text| {
            define_hosts(text, &[Step::Key("hosts"), Step::Item(i)], &mut defined)
        })?;
        Ok(plain_hosts(names))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<RawHost>, A::Error> {
        let ctx = self.0;
        let mut defined = HashMap::new();
        let mut hosts = Vec::new();
        let mut entry = 0;
        while let Some((key, names)) = map.next_key_seed(scalar(ctx, "host name", |text| {
            let path = [Step::Key("hosts"), Step::Entry(entry)];
            Ok((text.to_owned(), define_hosts(text, &path, &mut defined)?))
        }))? {
            let owner = Owner::Host {
                key: &key,
                count: names.len(),
            };
            let settings = map.next_value_seed(SettingsSeed { ctx, owner })?.settings;
            hosts.extend(names.into_iter().map(|name| RawHost {
                name,
                settings: settings.clone(),
            }));
            entry += 1;
        }
        Ok(hosts)
    }
}

/// `groups:`, a mapping of group names to members and settings.
struct GroupsSeed<'a>(&'a Ctx);

impl<'de> DeserializeSeed<'de> for GroupsSeed<'_> {
    type Value = Vec<RawGroup>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<RawGroup>, D::Error> {
        let ctx = self.0;
        deserializer
            .deserialize_any(self)
            .map_err(|e| ctx.note(e, || "groups must be a mapping".to_owned()))
    }
}

impl<'de> Visitor<'de> for GroupsSeed<'_> {
    type Value = Vec<RawGroup>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of groups")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vec<RawGroup>, E> {
        Ok(Vec::new())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<RawGroup>, A::Error> {
        let ctx = self.0;
        let mut groups: Vec<RawGroup> = Vec::new();
        while let Some(name) = map.next_key_seed(scalar(ctx, "group name", |text| {
            check_group_name(text)?;
            match groups.iter().position(|group| group.name == text) {
                Some(first) => Err(Problem::new(format!("duplicate group {text}"))
                    .also_at(vec![Step::Key("groups"), Step::Entry(first)])),
                None => Ok(text.to_owned()),
            }
        }))? {
            let owner = Owner::Group {
                name: &name,
                index: groups.len(),
            };
            let RawSettings { settings, members } =
                map.next_value_seed(SettingsSeed { ctx, owner })?;
            groups.push(RawGroup {
                name,
                settings,
                members,
            });
        }
        Ok(groups)
    }
}

fn check_group_name(name: &str) -> Result<(), Problem> {
    let good = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if good {
        Ok(())
    } else {
        Err(format!("bad group name {name:?}").into())
    }
}

/// Whose settings are being read.
#[derive(Clone, Copy)]
enum Owner<'a> {
    Defaults,
    /// A host key, expanding to `count` hosts.
    Host {
        key: &'a str,
        count: usize,
    },
    /// The group at `index` in `groups:`.
    Group {
        name: &'a str,
        index: usize,
    },
}

impl fmt::Display for Owner<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Defaults => f.write_str("defaults"),
            Owner::Host { key, .. } => write!(f, "host {key}"),
            Owner::Group { name, .. } => write!(f, "group {name}"),
        }
    }
}

#[derive(Default)]
struct RawSettings {
    settings: HostSettings,
    /// Only for groups.
    members: Vec<RawMember>,
}

/// The settings mapping of defaults, a host or a group (null: no settings).
struct SettingsSeed<'a> {
    ctx: &'a Ctx,
    owner: Owner<'a>,
}

impl<'de> DeserializeSeed<'de> for SettingsSeed<'_> {
    type Value = RawSettings;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawSettings, D::Error> {
        let (ctx, owner) = (self.ctx, self.owner);
        deserializer
            .deserialize_any(self)
            .map_err(|e| ctx.note(e, || format!("{owner} must be a mapping")))
    }
}

impl<'de> Visitor<'de> for SettingsSeed<'_> {
    type Value = RawSettings;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "settings for {}", self.owner)
    }

    fn visit_unit<E: de::Error>(self) -> Result<RawSettings, E> {
        Ok(RawSettings::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSettings, A::Error> {
        let ctx = self.ctx;
        let allowed = match self.owner {
            Owner::Group { .. } => GROUP_KEYS.as_slice(),
            _ => SETTING_KEYS,
        };
        let context = format!(" for {}", self.owner);
        let mut raw = RawSettings::default();
        let s = &mut raw.settings;
        let mut seen = Vec::new();
        while let Some(key) = map.next_key_seed(known_key(ctx, "key", allowed, &seen, &context))? {
            seen.push(key);
            match key {
                "address" => {
                    let count = match self.owner {
                        Owner::Host { count, .. } => count,
                        _ => 1,
                    };
                    s.address = map.next_value_seed(scalar(ctx, key, |text| {
                        let Some(address) = non_null(text) else {
                            return Ok(None);
                        };
                        if count > 1 {
                            return Err(
                                format!("address given for a range of {count} hosts").into()
                            );
                        }
                        check_host_name(address).map_err(|_| format!("bad address {address:?}"))?;
                        Ok(Some(address.to_owned()))
                    }))?;
                }
                "user" | "become_user" | "password_env" | "become_password_env" => {
                    let check: fn(&str) -> Result<(), Problem> = if key.ends_with("user") {
                        check_user
                    } else {
                        check_env_name
                    };
                    let value = map.next_value_seed(scalar(ctx, key, |text| {
                        non_null(text)
                            .map(|name| check(name).map(|()| name.to_owned()))
                            .transpose()
                    }))?;
                    *match key {
                        "user" => &mut s.user,
                        "become_user" => &mut s.become_user,
                        "password_env" => &mut s.password_env,
                        _ => &mut s.become_password_env,
                    } = value;
                }
                "port" => {
                    s.port = map.next_value_seed(scalar(ctx, key, |text| {
                        non_null(text)
                            .map(|port| match port.parse::<u16>() {
                                Ok(port) if port > 0 => Ok(port),
                                _ => Err("port must be 1-65535".into()),
                            })
                            .transpose()
                    }))?;
                }
                "identity_file" => {
                    s.identity_file = map.next_value_seed(scalar(ctx, key, |text| {
                        Ok(non_null(text).map(|path| expand_tilde(path, ctx.home.as_deref())))
                    }))?;
                }
                "remote_tmp" => {
                    s.remote_tmp = map.next_value_seed(scalar(ctx, key, |text| {
                        non_null(text)
                            .map(|dir| {
                                if dir.starts_with('/') {
                                    Ok(dir.to_owned())
                                } else {
                                    Err("remote_tmp must be an absolute path".into())
                                }
                            })
                            .transpose()
                    }))?;
                }
                "ssh_options" => {
                    s.ssh_options = map.next_value_seed(ListSeed {
                        ctx,
                        what: "ssh_options",
                        item: |_, text: &str| check_ssh_option(text),
                    })?;
                }
                "vars" => s.vars = map.next_value_seed(VarsSeed(ctx))?,
                "become" | "forward_agent" => {
                    let flag = map.next_value_seed(scalar(ctx, key, |text| {
                        non_null(text)
                            .map(|flag| {
                                parse_bool(flag)
                                    .map_err(|_| format!("{key} must be true or false").into())
                            })
                            .transpose()
                    }))?;
                    if key == "become" {
                        s.become_ = flag;
                    } else {
                        s.forward_agent = flag;
                    }
                }
                "pty" => {
                    s.pty = map.next_value_seed(scalar(ctx, key, |text| {
                        non_null(text)
                            .map(|mode| match mode {
                                "auto" => Ok(PtySetting::Auto),
                                _ => parse_bool(mode)
                                    .map(|on| if on { PtySetting::Yes } else { PtySetting::No })
                                    .map_err(|_| {
                                        format!("pty must be yes, no or auto (got {mode:?})").into()
                                    }),
                            })
                            .transpose()
                    }))?;
                }
                "jump" => {
                    s.jump = map.next_value_seed(scalar(ctx, key, |text| {
                        non_null(text).map(check_jump).transpose()
                    }))?;
                }
                "via" => s.via = map.next_value_seed(scalar(ctx, key, checked_relay))?,
                "members" => {
                    let Owner::Group { index: group, .. } = self.owner else {
                        unreachable!("members is a group key only");
                    };
                    raw.members = map.next_value_seed(ListSeed {
                        ctx,
                        what: "members",
                        item: |i, text: &str| {
                            let path = vec![
                                Step::Key("groups"),
                                Step::Entry(group),
                                Step::Key("members"),
                                Step::Item(i),
                            ];
                            parse_member(text, path)
                        },
                    })?;
                }
                _ => unreachable!("known_key returns allowed keys only"),
            }
        }
        Ok(raw)
    }
}

/// YAML's booleans, as the words people write.
fn parse_bool(text: &str) -> Result<bool, Problem> {
    match text {
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Ok(true),
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Ok(false),
        _ => Err(format!("expected true or false, got {text:?}").into()),
    }
}

/// An environment variable's name.
fn check_env_name(name: &str) -> Result<(), Problem> {
    let mut chars = name.chars();
    let good = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if good {
        Ok(())
    } else {
        Err(format!("bad environment variable name {name:?}").into())
    }
}

/// `[user@]host[:port]`, as ssh's ProxyJump takes it (a comma list chains hops).
fn check_jump(text: &str) -> Result<String, Problem> {
    for hop in text.split(',') {
        let (user, rest) = match hop.split_once('@') {
            Some((user, rest)) => (Some(user), rest),
            None => (None, hop),
        };
        if let Some(user) = user {
            check_user(user)?;
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            _ => (rest, None),
        };
        let bad = || {
            Problem::new(format!(
                "bad jump host {hop:?} (expected [user@]host[:port])"
            ))
        };
        if host.is_empty() || host.starts_with('-') || host.contains(char::is_whitespace) {
            return Err(bad());
        }
        if let Some(port) = port
            && !port.parse::<u16>().is_ok_and(|p| p > 0)
        {
            return Err(bad());
        }
    }
    Ok(text.to_owned())
}

/// `via:`: null, or a host name (that it names a host is checked on selection).
fn checked_relay(text: &str) -> Result<Option<String>, Problem> {
    let relay = non_null(text).map(str::to_owned);
    relay.as_deref().map(check_host_name).transpose()?;
    Ok(relay)
}

/// `~/x` → `$HOME/x`; left alone when `$HOME` is unknown.
fn expand_tilde(path: &str, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix('~'), home) {
        (Some(""), Some(home)) => home.to_owned(),
        (Some(rest), Some(home)) if rest.starts_with('/') => home.join(&rest[1..]),
        _ => PathBuf::from(path),
    }
}

fn check_ssh_option(text: &str) -> Result<String, Problem> {
    let good = text
        .split_once('=')
        .is_some_and(|(key, _)| !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric()));
    if good {
        Ok(text.to_owned())
    } else {
        Err(format!("bad ssh option {text:?} (expected Key=Value)").into())
    }
}

fn parse_member(text: &str, path: NodePath) -> Result<RawMember, Problem> {
    if is_null(text) {
        return Err("empty group member".into());
    }
    if let Some(name) = text.strip_prefix('@') {
        check_group_name(name)?;
        return Ok(RawMember::Group {
            name: name.to_owned(),
            path,
        });
    }
    let names = hostlist::expand(text).map_err(|e| Problem::new(e.to_string()))?;
    for name in &names {
        check_host_name(name)?;
    }
    Ok(RawMember::Hosts(names))
}

/// A list of scalars (null: empty).
struct ListSeed<'a, F> {
    ctx: &'a Ctx,
    what: &'static str,
    item: F,
}

impl<'de, T, F> DeserializeSeed<'de> for ListSeed<'_, F>
where
    F: FnMut(usize, &str) -> Result<T, Problem>,
{
    type Value = Vec<T>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<T>, D::Error> {
        let (ctx, what) = (self.ctx, self.what);
        deserializer
            .deserialize_any(self)
            .map_err(|e| ctx.note(e, || format!("{what} must be a list")))
    }
}

impl<'de, T, F> Visitor<'de> for ListSeed<'_, F>
where
    F: FnMut(usize, &str) -> Result<T, Problem>,
{
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list for {}", self.what)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vec<T>, E> {
        Ok(Vec::new())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<T>, A::Error> {
        read_list(self.ctx, seq, self.what, self.item)
    }
}

/// `vars:`, environment variable names to scalar values (null: empty).
struct VarsSeed<'a>(&'a Ctx);

impl<'de> DeserializeSeed<'de> for VarsSeed<'_> {
    type Value = BTreeMap<String, String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let ctx = self.0;
        deserializer
            .deserialize_any(self)
            .map_err(|e| ctx.note(e, || "vars must be a mapping".to_owned()))
    }
}

impl<'de> Visitor<'de> for VarsSeed<'_> {
    type Value = BTreeMap<String, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of variables")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(BTreeMap::new())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let ctx = self.0;
        let mut vars = BTreeMap::new();
        while let Some(name) = map.next_key_seed(scalar(ctx, "variable name", |text| {
            if !is_env_name(text) {
                return Err(format!(
                    "bad variable name {text:?} (must match [A-Za-z_][A-Za-z0-9_]*)"
                )
                .into());
            }
            if vars.contains_key(text) {
                return Err(format!("duplicate variable {text}").into());
            }
            Ok(text.to_owned())
        }))? {
            let what = format!("variable {name}");
            let value = map.next_value_seed(scalar(ctx, &what, |text| {
                Ok(non_null(text).unwrap_or_default().to_owned())
            }))?;
            vars.insert(name, value);
        }
        Ok(vars)
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS_LIST: &str = "address, user, port, identity_file, ssh_options, remote_tmp, vars, password_env, become, become_user, become_password_env, pty, jump, via, forward_agent";

    fn parse(lines: &[&str]) -> Inventory {
        Inventory::parse(&lines.join("\n"), "hosts.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn error(lines: &[&str]) -> String {
        match Inventory::parse(&lines.join("\n"), "hosts.yaml") {
            Ok(inventory) => panic!("parsed: {:?}", inventory.hosts()),
            Err(e) => e.to_string(),
        }
    }

    fn names(hosts: &[Host]) -> Vec<&str> {
        hosts.iter().map(|host| host.name.as_str()).collect()
    }

    fn host<'a>(inventory: &'a Inventory, name: &str) -> &'a Host {
        let found = inventory.hosts().iter().find(|host| host.name == name);
        found.unwrap_or_else(|| panic!("no host {name}"))
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|&s| s.to_owned()).collect()
    }

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plain_list() {
        let inventory = parse(&["- node1", "- web[01-03]"]);
        assert_eq!(
            names(inventory.hosts()),
            ["node1", "web01", "web02", "web03"]
        );
        assert_eq!(inventory.hosts()[1].settings, HostSettings::default());
        assert!(inventory.hosts()[1].groups.is_empty());
        assert_eq!(inventory.group_names().count(), 0);
    }

    #[test]
    fn hosts_as_a_list_as_written_by_fleet_tools() {
        let inventory =
            Inventory::parse("hosts:\n  - 127.0.1.1\n  - 127.0.1.2\n", "hosts.yaml").unwrap();
        assert_eq!(names(inventory.hosts()), ["127.0.1.1", "127.0.1.2"]);
        assert_eq!(inventory.hosts()[0].address(), "127.0.1.1");
        assert_eq!(inventory.hosts()[0].settings, HostSettings::default());
    }

    #[test]
    fn hosts_as_a_mapping_with_defaults_and_groups() {
        let inventory = parse(&[
            "defaults:",
            "  user: ops",
            "  ssh_options: [\"ConnectTimeout=5\"]",
            "  vars: {ENV: prod, ROLE: none}",
            "hosts:",
            "  node[001-003]:",
            "    user: admin",
            "    port: 2222",
            "  db1:",
            "  gw:",
            "    address: 10.0.0.1",
            "groups:",
            "  web:",
            "    members: [node[001-002], db1, \"@othergroup\"]",
            "    user: deploy",
            "    ssh_options: [\"Compression=yes\"]",
            "    vars: {ROLE: web}",
            "  othergroup:",
            "    members: [extra1]",
            "    port: 2200",
        ]);
        assert_eq!(
            names(inventory.hosts()),
            ["node001", "node002", "node003", "db1", "gw", "extra1"]
        );
        assert_eq!(
            inventory.group_names().collect::<Vec<_>>(),
            ["web", "othergroup"]
        );

        let node001 = host(&inventory, "node001");
        assert_eq!(node001.groups, ["web"]);
        assert_eq!(
            node001.settings,
            HostSettings {
                user: Some("admin".into()),
                port: Some(2222),
                ssh_options: strings(&["Compression=yes", "ConnectTimeout=5"]),
                vars: vars(&[("ENV", "prod"), ("ROLE", "web")]),
                ..HostSettings::default()
            }
        );
        assert_eq!(node001.address(), "node001");

        let node003 = host(&inventory, "node003");
        assert!(node003.groups.is_empty());
        assert_eq!(
            node003.settings,
            HostSettings {
                user: Some("admin".into()),
                port: Some(2222),
                ssh_options: strings(&["ConnectTimeout=5"]),
                vars: vars(&[("ENV", "prod"), ("ROLE", "none")]),
                ..HostSettings::default()
            }
        );

        let db1 = host(&inventory, "db1");
        assert_eq!(db1.settings.user.as_deref(), Some("deploy"));
        assert_eq!(db1.settings.port, None);

        let gw = host(&inventory, "gw");
        assert_eq!(gw.address(), "10.0.0.1");
        assert_eq!(gw.settings.user.as_deref(), Some("ops"));

        // Named only as a member: defined by the group, in both groups
        // through the @othergroup reference.
        let extra1 = host(&inventory, "extra1");
        assert_eq!(extra1.groups, ["web", "othergroup"]);
        assert_eq!(
            extra1.settings,
            HostSettings {
                user: Some("deploy".into()),
                port: Some(2200),
                ssh_options: strings(&["Compression=yes", "ConnectTimeout=5"]),
                vars: vars(&[("ENV", "prod"), ("ROLE", "web")]),
                ..HostSettings::default()
            }
        );
    }

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
            h.settings,
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
            other.settings,
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
    fn vars_keep_the_text_of_their_values() {
        let inventory = parse(&[
            "hosts:",
            "  a:",
            "    vars:",
            "      VERSION: 1.10",
            "      ZIP: 010",
            "      FLAG: true",
            "      EMPTY: ~",
            "      NOTHING:",
            "      TEXT: \"x y\"",
            "      N: 42",
            "      _under_1: ok",
        ]);
        assert_eq!(
            host(&inventory, "a").settings.vars,
            vars(&[
                ("VERSION", "1.10"),
                ("ZIP", "010"),
                ("FLAG", "true"),
                ("EMPTY", ""),
                ("NOTHING", ""),
                ("TEXT", "x y"),
                ("N", "42"),
                ("_under_1", "ok"),
            ])
        );
    }

    #[test]
    fn identity_file_expands_home() {
        let home = Some(Path::new("/home/ops"));
        assert_eq!(
            expand_tilde("~/.ssh/id", home),
            PathBuf::from("/home/ops/.ssh/id")
        );
        assert_eq!(expand_tilde("~", home), PathBuf::from("/home/ops"));
        assert_eq!(expand_tilde("~bob/id", home), PathBuf::from("~bob/id"));
        assert_eq!(expand_tilde("/etc/key", home), PathBuf::from("/etc/key"));
        assert_eq!(expand_tilde("~/.ssh/id", None), PathBuf::from("~/.ssh/id"));

        let inventory = parse(&[
            "hosts:",
            "  a:",
            "    identity_file: ~/.ssh/fleet",
            "  b:",
            "    identity_file: keys/b",
        ]);
        let expected = match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".ssh/fleet"),
            None => PathBuf::from("~/.ssh/fleet"),
        };
        assert_eq!(host(&inventory, "a").settings.identity_file, Some(expected));
        assert_eq!(
            host(&inventory, "b").settings.identity_file,
            Some(PathBuf::from("keys/b"))
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
    fn unknown_keys() {
        assert_eq!(
            error(&["hosts:", "  node1:", "    user: a", "    usr: b"]),
            format!(
                "hosts.yaml:4: unknown key \"usr\" for host node1 (expected one of {SETTINGS_LIST})"
            )
        );
        assert_eq!(
            error(&["defaults:", "  colour: red", "hosts: [a]"]),
            format!(
                "hosts.yaml:2: unknown key \"colour\" for defaults (expected one of {SETTINGS_LIST})"
            )
        );
        assert_eq!(
            error(&["hosts: [a]", "groups:", "  web:", "    member: [a]"]),
            format!(
                "hosts.yaml:4: unknown key \"member\" for group web (expected one of members, {SETTINGS_LIST})"
            )
        );
        assert_eq!(
            error(&["hosts: [a]", "", "host: b"]),
            "hosts.yaml:3: unknown top-level key \"host\" (expected one of defaults, hosts, groups)"
        );
        assert_eq!(
            error(&["hosts:", "  a:", "    user: x", "    user: y"]),
            "hosts.yaml:4: duplicate key \"user\" for host a"
        );
        assert_eq!(
            error(&["hosts: [a]", "hosts: [b]"]),
            "hosts.yaml:2: duplicate top-level key \"hosts\""
        );
    }

    #[test]
    fn bad_ranges() {
        assert_eq!(
            error(&["hosts:", "  a:", "  node[3-1]:", "    user: x"]),
            "hosts.yaml:3: bad host range \"node[3-1]\": reversed range"
        );
        assert_eq!(
            error(&["- a", "- web[01-03", "- b"]),
            "hosts.yaml:2: bad host range \"web[01-03\": unbalanced brackets"
        );
        assert_eq!(
            error(&[
                "hosts: [a]",
                "groups:",
                "  g:",
                "    members:",
                "      - n[x-y]"
            ]),
            "hosts.yaml:5: bad host range \"n[x-y]\": \"x\" is not a number"
        );
    }

    #[test]
    fn duplicate_hosts() {
        assert_eq!(
            error(&[
                "hosts:",
                "  node[001-003]:",
                "    user: a",
                "  db1:",
                "  node[002-004]:",
            ]),
            "hosts.yaml:5: duplicate host node002 (also at line 2)"
        );
        assert_eq!(
            error(&["- a", "- b", "- a"]),
            "hosts.yaml:3: duplicate host a (also at line 1)"
        );
        assert_eq!(
            error(&["hosts:", "  - a", "  - b[1-2]", "  - b2"]),
            "hosts.yaml:4: duplicate host b2 (also at line 3)"
        );
        assert_eq!(
            error(&["hosts:", "  a:", "    port: 22", "  a:"]),
            "hosts.yaml:4: duplicate host a (also at line 2)"
        );
        assert_eq!(
            error(&["hosts:", "  n[1-3,2]:"]),
            "hosts.yaml:2: duplicate host n2 (also at line 2)"
        );
        assert_eq!(
            error(&["hosts: [a, b,", "  c, b]"]),
            "hosts.yaml:2: duplicate host b (also at line 1)"
        );
        assert_eq!(
            error(&["hosts: [a]", "groups:", "  g:", "  h:", "  g:"]),
            "hosts.yaml:5: duplicate group g (also at line 3)"
        );
    }

    #[test]
    fn bad_values() {
        for port in ["0", "70000", "-1", "ssh"] {
            assert_eq!(
                error(&[
                    "hosts:",
                    "  a:",
                    "    user: x",
                    &format!("    port: {port}")
                ]),
                "hosts.yaml:4: port must be 1-65535"
            );
        }
        assert_eq!(
            error(&["hosts:", "  a:", "    port: [22]"]),
            "hosts.yaml:3: port must be a single value"
        );
        assert_eq!(
            error(&[
                "hosts:",
                "  web[1-3]:",
                "    user: x",
                "",
                "    address: 10.0.0.1"
            ]),
            "hosts.yaml:5: address given for a range of 3 hosts"
        );
        assert_eq!(
            error(&["hosts:", "  a:", "    remote_tmp: tmp/x"]),
            "hosts.yaml:3: remote_tmp must be an absolute path"
        );
        assert_eq!(
            error(&[
                "hosts:",
                "  a:",
                "    ssh_options:",
                "      - A=1",
                "      - Compression yes"
            ]),
            "hosts.yaml:5: bad ssh option \"Compression yes\" (expected Key=Value)"
        );
        assert_eq!(
            error(&["hosts:", "  a:", "    ssh_options: Compression=yes"]),
            "hosts.yaml:3: ssh_options must be a list"
        );
        assert_eq!(
            error(&["defaults:", "  vars:", "    1X: a"]),
            "hosts.yaml:3: bad variable name \"1X\" (must match [A-Za-z_][A-Za-z0-9_]*)"
        );
        assert_eq!(
            error(&["defaults:", "  vars: {A: 1, A: 2}"]),
            "hosts.yaml:2: duplicate variable A"
        );
        assert_eq!(
            error(&["defaults:", "  vars:", "    A:", "      B: c"]),
            "hosts.yaml:4: variable A must be a single value"
        );
        assert_eq!(
            error(&["defaults:", "  vars: [A]"]),
            "hosts.yaml:2: vars must be a mapping"
        );
        assert_eq!(
            error(&["defaults:", "  user: -oProxyCommand=x"]),
            "hosts.yaml:2: bad user name \"-oProxyCommand=x\""
        );
        assert_eq!(
            error(&["hosts:", "  a:", "    address: \"b c\""]),
            "hosts.yaml:3: bad address \"b c\""
        );
    }

    #[test]
    fn bad_shapes_and_names() {
        assert_eq!(
            error(&["just a name"]),
            "hosts.yaml:1: expected a list of hosts or a mapping with hosts:"
        );
        assert_eq!(
            error(&["hosts: 5"]),
            "hosts.yaml:1: hosts must be a list or a mapping"
        );
        assert_eq!(
            error(&["hosts: [a]", "groups: [a]"]),
            "hosts.yaml:2: groups must be a mapping"
        );
        assert_eq!(
            error(&["hosts:", "  a: 5"]),
            "hosts.yaml:2: host a must be a mapping"
        );
        assert_eq!(
            error(&["hosts: [a]", "groups:", "  web: [a]"]),
            "hosts.yaml:3: group web must be a mapping"
        );
        assert_eq!(
            error(&["defaults: x", "hosts: [a]"]),
            "hosts.yaml:1: defaults must be a mapping"
        );
        assert_eq!(
            error(&["- a", "- {b: 1}"]),
            "hosts.yaml:2: host name must be a single value"
        );
        assert_eq!(error(&["- a", "-", "- b"]), "hosts.yaml:2: empty host name");
        assert_eq!(
            error(&["- a", "- \"b c\""]),
            "hosts.yaml:2: bad host name \"b c\""
        );
        assert_eq!(
            error(&["- -oProxyCommand=x"]),
            "hosts.yaml:1: bad host name \"-oProxyCommand=x\""
        );
        assert_eq!(
            error(&["hosts: [a]", "groups:", "  \"we b\":", "    members: [a]"]),
            "hosts.yaml:3: bad group name \"we b\""
        );
        assert_eq!(
            error(&["hosts: [a]", "groups:", "  g:", "    members: [a, ~]"]),
            "hosts.yaml:4: empty group member"
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

    #[test]
    fn yaml_syntax_errors() {
        assert_eq!(
            error(&["hosts:", "  - a", " b: c"]),
            "hosts.yaml:3:2: yaml syntax error: did not find expected key, while parsing a block mapping"
        );
        assert_eq!(
            error(&["hosts:", "  a: {user: x", ""]),
            "hosts.yaml:3:1: yaml syntax error: did not find expected ',' or '}', \
             while parsing a flow mapping at line 2 column 6"
        );
        assert_eq!(
            error(&["hosts:", "  a:", "    user: *nope"]),
            "hosts.yaml:3:11: yaml syntax error: unknown anchor"
        );
        assert_eq!(
            error(&["- a", "---", "- b"]),
            "hosts.yaml: yaml syntax error: deserializing from YAML containing more than one document is not supported"
        );
    }

    #[test]
    fn bare_ranges_in_flow_collections() {
        let inventory = parse(&[
            "hosts: {node[1-2]: {user: x}, db[1,3]: }",
            "groups: {g: {members: [node[1-2], db3, \"@h\"]}, h: {members: [x[01-02]]}}",
        ]);
        assert_eq!(
            names(inventory.hosts()),
            ["node1", "node2", "db1", "db3", "x01", "x02"]
        );
        assert_eq!(
            host(&inventory, "node2").settings.user.as_deref(),
            Some("x")
        );
        assert_eq!(host(&inventory, "x02").groups, ["g", "h"]);
        assert_eq!(host(&inventory, "db3").groups, ["g"]);
        // Quoted text is the parser's business, not ours.
        let inventory = parse(&["hosts: [a[1-2], 'b, c[1]']"]);
        assert_eq!(names(inventory.hosts()), ["a1", "a2", "b", "c1"]);
        // A bad range gets its own message instead of a syntax error.
        assert_eq!(
            error(&["hosts: [a,", "  node[a-c]]"]),
            "hosts.yaml:2: bad host range \"node[a-c]\": \"a\" is not a number"
        );
        // Syntax errors after a repair keep the columns of the original text.
        assert_eq!(
            error(&["hosts: [n[1-2], m[1-2], a]: x"]),
            "hosts.yaml:1:27: yaml syntax error: mapping values are not allowed in this context"
        );
        // A range at the start of a name is not repaired.
        assert_eq!(
            error(&["hosts: [[1-2].x]"]),
            "hosts.yaml:1:14: yaml syntax error: did not find expected ',' or ']', \
             while parsing a flow sequence at line 1 column 8"
        );
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
        assert_eq!(select_error(&fleet, &["zz*"]), "no host selected");
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
        assert_eq!(error("@web"), "-w: bad user name \"\"");
        assert_eq!(error("a b"), "-w: bad host name \"a b\"");
        assert_eq!(error("web*"), "-w: bad host name \"web*\"");
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
