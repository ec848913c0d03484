//! Reading hosts.yaml into the file as written ([`RawInventory`]).
//!
//! Inventories are edited by hand and fixed from the message alone, so each
//! mistake is one line naming file, line and problem. Hand-written serde
//! visitors check every node while serde_yaml still knows its position, and
//! keep the wording in a shared [`Ctx`]; `settings` reads the settings
//! mappings the same way.
//!
//! YAML forbids `[` in an unquoted scalar inside a flow list, yet range users
//! write `members: [node[001-002], db1]`. When the parser stops at such a
//! `[`, that token alone is quoted and the text parsed again, so valid YAML
//! is never altered and lines stay put.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::HostSettings;
use super::InventoryError;
use super::hostlist;
use super::locate::{NodePath, Problem, Step, line_column, report, yaml_message};
use super::merge::{RawGroup, RawHost, RawInventory, RawMember};
use super::settings::{Owner, RawSettings, SettingsSeed};

/// Reads the text `checked_text` returned; problems name `origin`.
pub(super) fn read(text: &str, origin: &str) -> Result<RawInventory, InventoryError> {
    let ctx = Ctx {
        problem: RefCell::default(),
        home: std::env::var_os("HOME").map(PathBuf::from),
    };
    FileSeed(&ctx)
        .deserialize(serde_yaml::Deserializer::from_str(text))
        .map_err(|error| {
            let line = error.location().map(|l| l.line());
            let problem = ctx
                .problem
                .take()
                .unwrap_or_else(|| Problem::new(yaml_message(&error)));
            report(problem, line, text, origin)
        })
}

/// Checks the YAML syntax and returns the text to read, with host ranges
/// written bare in flow collections quoted (see the module docs). Lines are
/// unchanged, so later errors and `locate` can use the returned text.
pub(super) fn checked_text<'t>(
    text: &'t str,
    origin: &str,
) -> Result<Cow<'t, str>, InventoryError> {
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

/// State shared by the visitors.
pub(super) struct Ctx {
    /// The first problem found, in our words.
    problem: RefCell<Option<Problem>>,
    /// `$HOME`, for `~/` in paths.
    pub(super) home: Option<PathBuf>,
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
    pub(super) fn note<E>(&self, error: E, message: impl FnOnce() -> String) -> E {
        self.problem
            .borrow_mut()
            .get_or_insert_with(|| Problem::new(message()));
        error
    }
}

/// YAML null: `~`, `null` or nothing. Scalars are read as their text, so a
/// quoted "null" counts too, which no host, user or path is called.
pub(super) fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// The text, unless it is null.
pub(super) fn non_null(text: &str) -> Option<&str> {
    (!is_null(text)).then_some(text)
}

/// A scalar node, read as its source text (`1.10` stays `1.10`) and checked
/// by `parse` inside the visit, so that errors carry the node's line.
pub(super) struct Scalar<'a, F> {
    ctx: &'a Ctx,
    what: &'a str,
    parse: F,
}

/// A [`Scalar`] for `what`, checked by `parse`.
pub(super) fn scalar<'a, T, F>(ctx: &'a Ctx, what: &'a str, parse: F) -> Scalar<'a, F>
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
pub(super) fn known_key<'a>(
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

/// Hosts from a plain list, with only what their host strings carry.
fn plain_hosts(keys: Vec<HostKey>) -> Vec<RawHost> {
    keys.into_iter()
        .flat_map(|key| {
            let settings = std::sync::Arc::new(key.settings(HostSettings::default()));
            key.names.into_iter().map(move |name| RawHost {
                name,
                settings: settings.clone(),
            })
        })
        .collect()
}

/// A host key or list item: its names, and the user and port a host
/// string (`ops@db1:2222`) gives them.
pub(super) struct HostKey {
    names: Vec<String>,
    user: Option<String>,
    port: Option<u16>,
}

impl HostKey {
    /// `settings`, with the key's user and port where they say none.
    fn settings(&self, mut settings: HostSettings) -> HostSettings {
        if settings.user.is_none() {
            settings.user.clone_from(&self.user);
        }
        if settings.port.is_none() {
            settings.port = self.port;
        }
        settings
    }
}

/// Expands a host key or list item, checking names and duplicates against
/// `defined` (name → where it was defined).
fn define_hosts(
    text: &str,
    path: &[Step],
    defined: &mut HashMap<String, NodePath>,
) -> Result<HostKey, Problem> {
    if is_null(text) {
        return Err("empty host name".into());
    }
    let hs = super::nodeset::host_string(text).map_err(Problem::new)?;
    if let Some(user) = hs.user {
        check_user(user)?;
    }
    let names = if hs.ipv6 {
        vec![hs.pattern.to_owned()]
    } else {
        hostlist::expand(hs.pattern).map_err(|e| Problem::new(e.to_string()))?
    };
    for name in &names {
        check_host_name(name)?;
        if let Some(first) = defined.get(name) {
            return Err(Problem::new(format!("duplicate host {name}")).also_at(first.clone()));
        }
        defined.insert(name.clone(), path.to_vec());
    }
    Ok(HostKey {
        names,
        user: hs.user.map(str::to_owned),
        port: hs.port,
    })
}

/// Rejects names that ssh would misread (`-o…`), that clash with list,
/// user, glob or NodeSet syntax, or that hold characters no host name has
/// (shell metacharacters, quotes, control characters).
pub(super) fn check_host_name(name: &str) -> Result<(), Problem> {
    let bad = name.starts_with('-')
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || ",@*?![]&^;$`'\"|<>(){}\\".contains(c));
    if bad {
        return Err(format!("bad host name {name:?}").into());
    }
    Ok(())
}

/// Rejects login names that ssh would misread or that clash with `user@host`.
pub(super) fn check_user(user: &str) -> Result<(), Problem> {
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
        while let Some((key, host_key)) = map.next_key_seed(scalar(ctx, "host name", |text| {
            let path = [Step::Key("hosts"), Step::Entry(entry)];
            Ok((text.to_owned(), define_hosts(text, &path, &mut defined)?))
        }))? {
            let owner = Owner::Host {
                key: &key,
                count: host_key.names.len(),
            };
            let settings = map.next_value_seed(SettingsSeed { ctx, owner })?.settings;
            let settings = std::sync::Arc::new(host_key.settings(settings));
            hosts.extend(host_key.names.into_iter().map(|name| RawHost {
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

/// A group name: letters, digits, `_`, `-` and `.`.
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

/// One item of a group's `members:`: `@group`, or a host name or range.
pub(super) fn parse_member(text: &str, path: NodePath) -> Result<RawMember, Problem> {
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
pub(super) struct ListSeed<'a, F> {
    pub(super) ctx: &'a Ctx,
    /// The key, for messages.
    pub(super) what: &'static str,
    /// Checks one item, given its index.
    pub(super) item: F,
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

#[cfg(test)]
mod tests {
    use crate::inventory::tests::{SETTINGS_LIST, error, host, names, parse, strings, vars};
    use crate::inventory::{HostSettings, Inventory};

    #[test]
    fn plain_list() {
        let inventory = parse(&["- node1", "- web[01-03]"]);
        assert_eq!(
            names(inventory.hosts()),
            ["node1", "web01", "web02", "web03"]
        );
        assert_eq!(*inventory.hosts()[1].settings, HostSettings::default());
        assert!(inventory.hosts()[1].groups.is_empty());
        assert_eq!(inventory.group_names().count(), 0);
    }

    #[test]
    fn hosts_as_a_list_as_written_by_fleet_tools() {
        let inventory =
            Inventory::parse("hosts:\n  - 127.0.1.1\n  - 127.0.1.2\n", "hosts.yaml").unwrap();
        assert_eq!(names(inventory.hosts()), ["127.0.1.1", "127.0.1.2"]);
        assert_eq!(inventory.hosts()[0].address(), "127.0.1.1");
        assert_eq!(*inventory.hosts()[0].settings, HostSettings::default());
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
            *node001.settings,
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
            *node003.settings,
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
            *extra1.settings,
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
}
