//! pushrun.yaml, the optional settings at the top of a payload: the entry
//! point, a timeout and environment values. It is deserialized by hand
//! (rather than with derive) so that every error, unknown and duplicate keys
//! included, is raised while serde_yaml deserializes the offending key or
//! value and therefore carries its line. The entry point is checked here too,
//! against the payload's file list, before any file is hashed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

use super::PayloadError;
use super::manifest::check_path;

/// Optional configuration file at the top of a payload directory.
pub(super) const CONFIG_NAME: &str = "pushrun.yaml";
/// Entry point when pushrun.yaml does not name one.
const DEFAULT_ENTRY: &str = "run";

/// What pushrun.yaml and the entry point come to.
pub(super) struct Settings {
    /// Manifest path of the entry point.
    pub(super) entry: String,
    /// `timeout:`.
    pub(super) timeout: Option<Duration>,
    /// `env:`, values as strings.
    pub(super) env: BTreeMap<String, String>,
}

/// Checks the names of `files` (sorted `(path, normalized mode)`), parses
/// pushrun.yaml and checks the entry point. `base` is the payload as shown in
/// messages.
pub(super) fn settle(
    base: &Path,
    files: &[(&str, u32)],
    config: Option<&[u8]>,
) -> Result<Settings, PayloadError> {
    for (path, _) in files {
        check_path(path).map_err(|_| PayloadError::BadName(base.join(path)))?;
    }
    let config_error = |line, message| PayloadError::Config {
        path: base.join(CONFIG_NAME),
        line,
        message,
    };
    let cfg = match config {
        Some(text) => parse_config(text).map_err(|(line, message)| config_error(line, message))?,
        None => Config::default(),
    };
    let entry = cfg
        .entry
        .clone()
        .unwrap_or_else(|| DEFAULT_ENTRY.to_string());
    let is_dir = files.iter().any(|(p, _)| {
        p.strip_prefix(entry.as_str())
            .is_some_and(|r| r.starts_with('/'))
    });
    match files.iter().find(|(p, _)| *p == entry) {
        Some((_, mode)) if mode & 0o111 == 0 => {
            return Err(PayloadError::NotExecutable(base.join(&entry)));
        }
        Some(_) => {}
        None if is_dir => return Err(PayloadError::EntryNotAFile(base.join(&entry))),
        None if cfg.entry.is_none() => return Err(PayloadError::NoEntry(base.to_path_buf())),
        None => {
            return Err(config_error(
                None,
                format!("entry {entry:?} is not a file in the payload"),
            ));
        }
    }
    Ok(Settings {
        entry,
        timeout: cfg.timeout,
        env: cfg.env,
    })
}

/// pushrun.yaml as written; every key is optional.
#[derive(Debug, Default)]
struct Config {
    entry: Option<String>,
    timeout: Option<Duration>,
    env: BTreeMap<String, String>,
}

/// Parses pushrun.yaml; errors are (line, message).
fn parse_config(text: &[u8]) -> Result<Config, (Option<usize>, String)> {
    match serde_yaml::from_slice::<Option<Config>>(text) {
        Ok(cfg) => Ok(cfg.unwrap_or_default()),
        Err(e) => {
            let location = e.location();
            let mut message = e.to_string();
            if let Some(loc) = &location {
                // The line goes in front, as in "pushrun.yaml:3: ...".
                message = message.replacen(
                    &format!(" at line {} column {}", loc.line(), loc.column()),
                    "",
                    1,
                );
            }
            Err((location.map(|l| l.line()), message.replace('\n', " ")))
        }
    }
}

impl<'de> de::Deserialize<'de> for Config {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ConfigVisitor)
    }
}

struct ConfigVisitor;

impl<'de> Visitor<'de> for ConfigVisitor {
    type Value = Config;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping with keys entry, timeout, env")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Config, A::Error> {
        let mut cfg = Config::default();
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key_seed(KeySeed {
            env: false,
            seen: &mut seen,
        })? {
            match key.as_str() {
                "entry" => cfg.entry = Some(map.next_value::<EntryPath>()?.0),
                "timeout" => cfg.timeout = Some(map.next_value::<Timeout>()?.0),
                _ => cfg.env = map.next_value::<Env>()?.0,
            }
        }
        Ok(cfg)
    }
}

/// Reads a mapping key of pushrun.yaml (`env` false) or of `env:` (`env`
/// true), rejecting unknown or invalid and duplicate keys. The checks run in
/// `visit_str`, inside serde_yaml's handling of the key, so that errors carry
/// the key's line.
struct KeySeed<'a> {
    env: bool,
    seen: &'a mut BTreeSet<String>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.env {
            "a variable name"
        } else {
            "one of entry, timeout, env"
        })
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<String, E> {
        if self.env {
            let mut bytes = key.bytes();
            let valid = bytes
                .next()
                .is_some_and(|b| b == b'_' || b.is_ascii_alphabetic())
                && bytes.all(|b| b == b'_' || b.is_ascii_alphanumeric());
            if !valid {
                return Err(E::custom(format_args!(
                    "name {key:?} is not valid (letters, digits and _, not starting with a digit)"
                )));
            }
        } else if !["entry", "timeout", "env"].contains(&key) {
            return Err(E::custom(format_args!("unknown key {key:?}")));
        }
        if !self.seen.insert(key.to_string()) {
            return Err(E::custom(format_args!("duplicate key {key:?}")));
        }
        Ok(key.to_string())
    }
}

/// `entry:`, normalized ("./bin//run" is "bin/run").
struct EntryPath(String);

impl<'de> de::Deserialize<'de> for EntryPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(EntryVisitor)
    }
}

struct EntryVisitor;

impl Visitor<'_> for EntryVisitor {
    type Value = EntryPath;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a relative path")
    }

    fn visit_str<E: de::Error>(self, raw: &str) -> Result<EntryPath, E> {
        let parts: Vec<&str> = raw
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        let path = parts.join("/");
        if raw.starts_with('/')
            || parts.is_empty()
            || parts.contains(&"..")
            || check_path(&path).is_err()
        {
            return Err(E::custom(format_args!(
                "{raw:?} must be a relative path inside the payload"
            )));
        }
        Ok(EntryPath(path))
    }
}

/// `timeout:`, a number of seconds > 0.
struct Timeout(Duration);

const TIMEOUT_EXPECTED: &str = "a number of seconds > 0";

impl<'de> de::Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TimeoutVisitor)
    }
}

struct TimeoutVisitor;

impl Visitor<'_> for TimeoutVisitor {
    type Value = Timeout;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(TIMEOUT_EXPECTED)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timeout, E> {
        if v == 0 {
            return Err(E::invalid_value(
                de::Unexpected::Unsigned(v),
                &TIMEOUT_EXPECTED,
            ));
        }
        Ok(Timeout(Duration::from_secs(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timeout, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::invalid_value(
                de::Unexpected::Signed(v),
                &TIMEOUT_EXPECTED,
            )),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Timeout, E> {
        match Duration::try_from_secs_f64(v) {
            Ok(d) if !d.is_zero() => Ok(Timeout(d)),
            _ => Err(E::invalid_value(
                de::Unexpected::Float(v),
                &TIMEOUT_EXPECTED,
            )),
        }
    }
}

/// `env:`, NAME → scalar.
struct Env(BTreeMap<String, String>);

impl<'de> de::Deserialize<'de> for Env {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EnvVisitor)
    }
}

struct EnvVisitor;

impl<'de> Visitor<'de> for EnvVisitor {
    type Value = Env;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of variable names to values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Env, A::Error> {
        let mut env = BTreeMap::new();
        let mut seen = BTreeSet::new();
        while let Some(name) = map.next_key_seed(KeySeed {
            env: true,
            seen: &mut seen,
        })? {
            let value = map.next_value::<EnvValue>()?.0;
            env.insert(name, value);
        }
        Ok(Env(env))
    }
}

/// An env value: a string, number or boolean, as a string.
struct EnvValue(String);

impl<'de> de::Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EnvValueVisitor)
    }
}

struct EnvValueVisitor;

impl Visitor<'_> for EnvValueVisitor {
    type Value = EnvValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number or boolean")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
        if v.contains('\0') {
            return Err(E::custom("env value with a NUL byte is not supported"));
        }
        Ok(EnvValue(v.to_string()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
        Ok(EnvValue(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
        Ok(EnvValue(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
        Ok(EnvValue(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
        Ok(EnvValue(v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use tempfile::TempDir;

    use super::*;
    use crate::payload::Payload;
    use crate::payload::fixtures::*;

    #[test]
    fn config_entry_timeout_env() {
        let t = TempDir::new().unwrap();
        put(t.path(), "bin/start", RUN, true);
        let yaml = "# settings\nentry: ./bin//start\ntimeout: 2.5\nenv:\n  FOO: bar baz\n  N: 3\n  NEG: -4\n  B: true\n  F: 1.5\n  _x9: ''\n";
        put(t.path(), "pushrun.yaml", yaml.as_bytes(), false);
        let p = Payload::load(t.path()).unwrap();
        assert_eq!(p.entry(), "bin/start");
        assert_eq!(p.timeout(), Some(Duration::from_millis(2500)));
        let env: Vec<(&str, &str)> = p
            .env()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("B", "true"),
                ("F", "1.5"),
                ("FOO", "bar baz"),
                ("N", "3"),
                ("NEG", "-4"),
                ("_x9", "")
            ]
        );
        // pushrun.yaml is part of the payload like any other file.
        assert_eq!(
            p.entries()
                .iter()
                .map(|e| e.path.as_str())
                .collect::<Vec<_>>(),
            ["bin/start", "pushrun.yaml"]
        );

        put(
            t.path(),
            "pushrun.yaml",
            b"timeout: 30\nentry: bin/start\n",
            false,
        );
        let p = Payload::load(t.path()).unwrap();
        assert_eq!(
            (p.timeout(), p.env().len()),
            (Some(Duration::from_secs(30)), 0)
        );

        // Empty or comment-only: defaults (and then `run` is required).
        let t = with_run();
        for text in ["", "# nothing\n", "~\n"] {
            put(t.path(), "pushrun.yaml", text.as_bytes(), false);
            let p = Payload::load(t.path()).unwrap();
            assert_eq!(
                (p.entry(), p.timeout(), p.env().len()),
                ("run", None, 0),
                "{text:?}"
            );
        }
    }

    /// Writes each pushrun.yaml of `cases` in turn and checks the load error.
    fn assert_config_errors(t: &TempDir, cases: &[(&str, String)]) {
        for (yaml, want) in cases {
            put(t.path(), "pushrun.yaml", yaml.as_bytes(), false);
            assert_eq!(&err(t.path()), want, "{yaml:?}");
        }
    }

    #[test]
    fn config_errors_name_file_and_line() {
        let t = with_run();
        let f = format!("{}/pushrun.yaml", d(&t));
        let cases = [
            (
                "timeout: 5\nenv: {}\nentyr: run\n",
                format!("{f}:3: unknown key \"entyr\""),
            ),
            (
                "timeout: 5\ntimeout: 6\n",
                format!("{f}:2: duplicate key \"timeout\""),
            ),
            (
                "entry: ../run\n",
                format!("{f}:1: entry: \"../run\" must be a relative path inside the payload"),
            ),
            (
                "entry: /bin/sh\n",
                format!("{f}:1: entry: \"/bin/sh\" must be a relative path inside the payload"),
            ),
            (
                "entry: nope\n",
                format!("{f}: entry \"nope\" is not a file in the payload"),
            ),
            (
                "- run\n",
                format!(
                    "{f}:1: invalid type: sequence, expected a mapping with keys entry, timeout, env"
                ),
            ),
            (
                "timeout: 5\nenv: {A: 1\n",
                format!(
                    "{f}:3: did not find expected ',' or '}}', while parsing a flow mapping at line 2 column 6"
                ),
            ),
            (
                "\tentry: run\n",
                format!(
                    "{f}:1: found character that cannot start any token, while scanning for the next token"
                ),
            ),
        ];
        assert_config_errors(&t, &cases);
    }

    #[test]
    fn config_value_errors_name_file_and_line() {
        let t = with_run();
        let f = format!("{}/pushrun.yaml", d(&t));
        let cases = [
            (
                "timeout: 0\n",
                format!(
                    "{f}:1: timeout: invalid value: integer `0`, expected a number of seconds > 0"
                ),
            ),
            (
                "\ntimeout: -1\n",
                format!(
                    "{f}:2: timeout: invalid value: integer `-1`, expected a number of seconds > 0"
                ),
            ),
            (
                "timeout: 1e-12\n",
                format!(
                    "{f}:1: timeout: invalid value: floating point `0.000000000001`, expected a number of seconds > 0"
                ),
            ),
            (
                "timeout: .inf\n",
                format!(
                    "{f}:1: timeout: invalid value: floating point `inf`, expected a number of seconds > 0"
                ),
            ),
            (
                "timeout: 30s\n",
                format!(
                    "{f}:1: timeout: invalid type: string \"30s\", expected a number of seconds > 0"
                ),
            ),
            (
                "env:\n  OK: 1\n  9X: 2\n",
                format!(
                    "{f}:3: env: name \"9X\" is not valid (letters, digits and _, not starting with a digit)"
                ),
            ),
            (
                "env:\n  A-B: 2\n",
                format!(
                    "{f}:2: env: name \"A-B\" is not valid (letters, digits and _, not starting with a digit)"
                ),
            ),
            (
                "env:\n  A: 1\n  A: 2\n",
                format!("{f}:3: env: duplicate key \"A\""),
            ),
            (
                "env:\n  A: [1]\n",
                format!(
                    "{f}:2: env.A: invalid type: sequence, expected a string, number or boolean"
                ),
            ),
            (
                "env: [A]\n",
                format!(
                    "{f}:1: env: invalid type: sequence, expected a mapping of variable names to values"
                ),
            ),
        ];
        assert_config_errors(&t, &cases);
    }
}
