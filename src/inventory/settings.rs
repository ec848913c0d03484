//! A host's settings: the fields, how layers of them merge, and how one
//! settings mapping (`defaults:`, a host entry, a group) is read.
//!
//! They sit together so that a new setting is one change in one file: its
//! field, its place in [`HostSettings::overlay`], its key, and the check of
//! its value. Values are checked as they are read, one small function per
//! kind of value, so that a bad value is reported at its own line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

use super::locate::{Problem, Step};
use super::merge::RawMember;
use super::parse::{
    Ctx, ListSeed, check_host_name, check_user, known_key, non_null, parse_member, scalar,
};

/// How to reach a host. The same settings are accepted in `defaults:`, in
/// groups and in host entries; [`Host::settings`](super::Host::settings)
/// holds the merged result. Serializable, so that a relay receives them as
/// merged here.
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
    pub(super) fn overlay(&mut self, over: &HostSettings) {
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

/// Keys of `defaults:` and host entries.
pub(super) const SETTING_KEYS: &[&str] = &[
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
pub(super) static GROUP_KEYS: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| [&["members"], SETTING_KEYS].concat());

/// Whose settings are being read.
#[derive(Clone, Copy)]
pub(super) enum Owner<'a> {
    /// `defaults:`.
    Defaults,
    /// A host key, expanding to `count` hosts.
    Host { key: &'a str, count: usize },
    /// The group at `index` in `groups:`.
    Group { name: &'a str, index: usize },
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

/// One settings mapping as read.
#[derive(Default)]
pub(super) struct RawSettings {
    /// The settings given.
    pub(super) settings: HostSettings,
    /// `members:`, only for groups.
    pub(super) members: Vec<RawMember>,
}

/// The settings mapping of defaults, a host or a group (null: no settings).
pub(super) struct SettingsSeed<'a> {
    pub(super) ctx: &'a Ctx,
    pub(super) owner: Owner<'a>,
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
                    let parse = |text: &str| parse_address(text, count);
                    s.address = map.next_value_seed(scalar(ctx, key, parse))?;
                }
                "user" => s.user = map.next_value_seed(scalar(ctx, key, parse_user))?,
                "become_user" => {
                    s.become_user = map.next_value_seed(scalar(ctx, key, parse_user))?;
                }
                "password_env" => {
                    s.password_env = map.next_value_seed(scalar(ctx, key, parse_env_name))?;
                }
                "become_password_env" => {
                    s.become_password_env =
                        map.next_value_seed(scalar(ctx, key, parse_env_name))?;
                }
                "port" => s.port = map.next_value_seed(scalar(ctx, key, parse_port))?,
                "identity_file" => {
                    let parse = |text: &str| parse_identity_file(text, ctx.home.as_deref());
                    s.identity_file = map.next_value_seed(scalar(ctx, key, parse))?;
                }
                "remote_tmp" => {
                    s.remote_tmp = map.next_value_seed(scalar(ctx, key, parse_remote_tmp))?;
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
                    let flag =
                        map.next_value_seed(scalar(ctx, key, |text| parse_flag(key, text)))?;
                    if key == "become" {
                        s.become_ = flag;
                    } else {
                        s.forward_agent = flag;
                    }
                }
                "pty" => s.pty = map.next_value_seed(scalar(ctx, key, parse_pty))?,
                "jump" => s.jump = map.next_value_seed(scalar(ctx, key, parse_jump))?,
                "via" => s.via = map.next_value_seed(scalar(ctx, key, parse_via))?,
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

/// `address:`: null, or where to connect, which only one host can have.
fn parse_address(text: &str, count: usize) -> Result<Option<String>, Problem> {
    let Some(address) = non_null(text) else {
        return Ok(None);
    };
    if count > 1 {
        return Err(format!("address given for a range of {count} hosts").into());
    }
    check_host_name(address).map_err(|_| format!("bad address {address:?}"))?;
    Ok(Some(address.to_owned()))
}

/// `user:` and `become_user:`: null, or a login name.
fn parse_user(text: &str) -> Result<Option<String>, Problem> {
    non_null(text)
        .map(|name| check_user(name).map(|()| name.to_owned()))
        .transpose()
}

/// `password_env:` and `become_password_env:`: null, or a variable's name.
fn parse_env_name(text: &str) -> Result<Option<String>, Problem> {
    non_null(text)
        .map(|name| check_env_name(name).map(|()| name.to_owned()))
        .transpose()
}

/// `port:`: null, or 1-65535.
fn parse_port(text: &str) -> Result<Option<u16>, Problem> {
    non_null(text)
        .map(|port| match port.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err("port must be 1-65535".into()),
        })
        .transpose()
}

/// `identity_file:`: null, or a path, `~/` expanded against `home`.
fn parse_identity_file(text: &str, home: Option<&Path>) -> Result<Option<PathBuf>, Problem> {
    Ok(non_null(text).map(|path| expand_tilde(path, home)))
}

/// `remote_tmp:`: null, or an absolute directory.
fn parse_remote_tmp(text: &str) -> Result<Option<String>, Problem> {
    non_null(text)
        .map(|dir| {
            if dir.starts_with('/') {
                Ok(dir.to_owned())
            } else {
                Err("remote_tmp must be an absolute path".into())
            }
        })
        .transpose()
}

/// `become:` and `forward_agent:`: null, or a boolean.
fn parse_flag(key: &str, text: &str) -> Result<Option<bool>, Problem> {
    non_null(text)
        .map(|flag| parse_bool(flag).map_err(|_| format!("{key} must be true or false").into()))
        .transpose()
}

/// `pty:`: null, a boolean, or `auto`.
fn parse_pty(text: &str) -> Result<Option<PtySetting>, Problem> {
    non_null(text)
        .map(|mode| match mode {
            "auto" => Ok(PtySetting::Auto),
            _ => parse_bool(mode)
                .map(|on| if on { PtySetting::Yes } else { PtySetting::No })
                .map_err(|_| format!("pty must be yes, no or auto (got {mode:?})").into()),
        })
        .transpose()
}

/// `jump:`: null, or ssh's ProxyJump.
fn parse_jump(text: &str) -> Result<Option<String>, Problem> {
    non_null(text).map(check_jump).transpose()
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
    if is_env_name(name) {
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
fn parse_via(text: &str) -> Result<Option<String>, Problem> {
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

/// One `ssh_options` item, `Key=Value`.
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

/// `[A-Za-z_][A-Za-z0-9_]*`.
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
    use crate::inventory::tests::{error, host, parse, vars};

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
}
