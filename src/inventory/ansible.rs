//! Ansible inventories, YAML and INI, read as they are.
//!
//! Ops people arrive with an Ansible inventory and should not have to
//! rewrite it. Both formats are read into one model (groups with hosts,
//! children and vars; hosts with vars), which is then resolved the way
//! Ansible resolves it: a host is in its groups and all their ancestors,
//! `all` holds every host, and variables layer `all` < groups by depth
//! (then name) < the host's own. The connection variables pushrun has a
//! setting for become that setting; passwords only by reference to an
//! environment variable (`{{ lookup('env', 'VAR') }}`), never inline;
//! other `ansible_*` variables are ignored with one note; plain variables
//! become the host's `vars`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde_yaml::Value;

use super::hostlist::MAX_NAMES;
use super::{Group, Host, HostSettings, Inventory, InventoryError, nodeset, parse};

/// A variable as written, with its line (0 when unknown).
#[derive(Debug, Clone)]
struct Var {
    key: String,
    value: String,
    line: usize,
}

#[derive(Debug, Default)]
struct AGroup {
    name: String,
    vars: Vec<Var>,
    parents: BTreeSet<usize>,
    hosts: Vec<usize>,
}

#[derive(Debug)]
struct AHost {
    name: String,
    port: Option<u16>,
    vars: Vec<Var>,
}

/// An Ansible inventory as written, before resolution.
#[derive(Debug, Default)]
struct Model {
    groups: Vec<AGroup>,
    group_index: HashMap<String, usize>,
    hosts: Vec<AHost>,
    host_index: HashMap<String, usize>,
}

/// A problem at a line (0: no line).
type Fault = (usize, String);

impl Model {
    fn group(&mut self, name: &str) -> usize {
        if let Some(&g) = self.group_index.get(name) {
            return g;
        }
        self.groups.push(AGroup {
            name: name.to_owned(),
            ..AGroup::default()
        });
        self.group_index
            .insert(name.to_owned(), self.groups.len() - 1);
        self.groups.len() - 1
    }

    fn child(&mut self, parent: usize, child: &str) {
        let c = self.group(child);
        self.groups[c].parents.insert(parent);
    }

    /// Adds the hosts `pattern` stands for to `group`, with `vars`.
    fn host(
        &mut self,
        group: usize,
        pattern: &str,
        vars: &[Var],
        line: usize,
    ) -> Result<(), Fault> {
        if pattern.contains('@') {
            return Err((
                line,
                format!("host {pattern:?}: set ansible_user, not user@"),
            ));
        }
        let (names, port) = split_port(pattern).map_err(|e| (line, e))?;
        for name in names {
            parse::check_host_name(&name).map_err(|p| (line, p.message))?;
            let h = match self.host_index.get(&name) {
                Some(&h) => h,
                None => {
                    self.hosts.push(AHost {
                        name: name.clone(),
                        port: None,
                        vars: Vec::new(),
                    });
                    self.host_index.insert(name, self.hosts.len() - 1);
                    self.hosts.len() - 1
                }
            };
            if port.is_some() {
                self.hosts[h].port = port;
            }
            self.hosts[h].vars.extend(vars.iter().cloned());
            if !self.groups[group].hosts.contains(&h) {
                self.groups[group].hosts.push(h);
            }
        }
        Ok(())
    }

    /// Each group's depth below `all` (the longest way down to it).
    fn depths(&self) -> Result<Vec<usize>, Fault> {
        fn depth(
            m: &Model,
            g: usize,
            memo: &mut [Option<usize>],
            path: &mut Vec<usize>,
        ) -> Result<usize, Fault> {
            if let Some(d) = memo[g] {
                return Ok(d);
            }
            if path.contains(&g) {
                return Err((0, format!("group {} is its own ancestor", m.groups[g].name)));
            }
            path.push(g);
            let mut d = usize::from(m.groups[g].name != "all");
            for &p in &m.groups[g].parents {
                d = d.max(depth(m, p, memo, path)? + 1);
            }
            path.pop();
            memo[g] = Some(d);
            Ok(d)
        }
        let mut memo = vec![None; self.groups.len()];
        (0..self.groups.len())
            .map(|g| depth(self, g, &mut memo, &mut Vec::new()))
            .collect()
    }

    /// Resolves groups and variables into pushrun's hosts.
    fn resolve(self, notes: &mut BTreeSet<String>) -> Result<(Vec<Host>, Vec<Group>), Fault> {
        let depths = self.depths()?;
        // Every group a host is in, directly or through children.
        let mut member_of: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); self.hosts.len()];
        for (g, group) in self.groups.iter().enumerate() {
            for &h in &group.hosts {
                let mut todo = vec![g];
                while let Some(x) = todo.pop() {
                    if member_of[h].insert(x) {
                        todo.extend(self.groups[x].parents.iter().copied());
                    }
                }
            }
        }
        let all = self.group_index.get("all").copied();
        let mut hosts = Vec::with_capacity(self.hosts.len());
        for (h, host) in self.hosts.iter().enumerate() {
            let mut layers: Vec<usize> = member_of[h].iter().copied().collect();
            layers.extend(all.filter(|a| !member_of[h].contains(a)));
            layers.sort_by(|&a, &b| {
                (depths[a], &self.groups[a].name).cmp(&(depths[b], &self.groups[b].name))
            });
            let mut vars: BTreeMap<String, Var> = BTreeMap::new();
            for var in layers
                .iter()
                .flat_map(|&g| &self.groups[g].vars)
                .chain(&host.vars)
            {
                vars.insert(var.key.clone(), var.clone());
            }
            let mut settings = settings(vars.into_values(), notes)?;
            if settings.port.is_none() {
                settings.port = host.port;
            }
            let mut groups: Vec<usize> = member_of[h].iter().copied().collect();
            groups.retain(|&g| self.groups[g].name != "all");
            hosts.push(Host {
                name: host.name.clone(),
                settings: Arc::new(settings),
                groups: groups
                    .iter()
                    .map(|&g| self.groups[g].name.clone())
                    .collect(),
            });
        }
        let mut groups: Vec<Group> = self
            .groups
            .iter()
            .map(|g| Group {
                name: g.name.clone(),
                members: BTreeSet::new(),
            })
            .collect();
        for (h, of) in member_of.iter().enumerate() {
            for &g in of {
                groups[g].members.insert(h);
            }
        }
        if let Some(a) = all {
            groups[a].members = (0..hosts.len()).collect();
        } else {
            groups.push(Group {
                name: "all".to_owned(),
                members: (0..hosts.len()).collect(),
            });
        }
        Ok((hosts, groups))
    }
}

/// A host entry's names and port: colons outside brackets are a port
/// (one) or an IPv6 address (more); those inside are Ansible's ranges.
fn split_port(pattern: &str) -> Result<(Vec<String>, Option<u16>), String> {
    let mut depth = 0usize;
    let colons: Vec<usize> = pattern
        .char_indices()
        .filter(|&(_, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                _ => {}
            }
            c == ':' && depth == 0
        })
        .map(|(i, _)| i)
        .collect();
    match colons[..] {
        [] => Ok((expand(pattern)?, None)),
        [at] => {
            let text = &pattern[at + 1..];
            let port = text
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("bad port {text:?} in {pattern:?}"))?;
            Ok((expand(&pattern[..at])?, Some(port)))
        }
        _ => {
            let hs = nodeset::host_string(pattern)?;
            Ok((vec![hs.pattern.to_owned()], hs.port))
        }
    }
}

/// Ansible's host ranges: `www[01:50]`, `db-[a:f]`, `n[1:9:2]`, several
/// in one name.
fn expand(pattern: &str) -> Result<Vec<String>, String> {
    let mut names = vec![String::new()];
    let mut rest = pattern;
    let bad = |why: &str| format!("bad host range {pattern:?}: {why}");
    while !rest.is_empty() {
        let Some(open) = rest.find('[') else {
            names.iter_mut().for_each(|n| n.push_str(rest));
            break;
        };
        let text = &rest[..open];
        names.iter_mut().for_each(|n| n.push_str(text));
        let inner = &rest[open + 1..];
        let close = inner.find(']').ok_or_else(|| bad("unbalanced brackets"))?;
        let parts: Vec<&str> = inner[..close].split(':').collect();
        let (lo, hi, step) = match parts[..] {
            [lo, hi] => (lo, hi, "1"),
            [lo, hi, step] => (lo, hi, step),
            _ => return Err(bad("expected [start:end] or [start:end:step]")),
        };
        let step: usize = step
            .parse()
            .ok()
            .filter(|&s| s > 0)
            .ok_or_else(|| bad("step must be a number above 0"))?;
        let items: Vec<String> = if lo.len() == 1
            && hi.len() == 1
            && lo.bytes().all(|b| b.is_ascii_alphabetic())
            && hi.bytes().all(|b| b.is_ascii_alphabetic())
        {
            let (lo, hi) = (lo.as_bytes()[0], hi.as_bytes()[0]);
            if lo > hi {
                return Err(bad("reversed range"));
            }
            (lo..=hi)
                .step_by(step)
                .map(|c| char::from(c).to_string())
                .collect()
        } else {
            let number = |t: &str| {
                t.parse::<u64>()
                    .ok()
                    .filter(|_| t.bytes().all(|b| b.is_ascii_digit()))
            };
            let (Some(a), Some(b)) = (number(lo), number(hi)) else {
                return Err(bad("bounds must be numbers or single letters"));
            };
            if a > b {
                return Err(bad("reversed range"));
            }
            if (b - a) / step as u64 >= MAX_NAMES as u64 {
                return Err(bad(&format!("expands to more than {MAX_NAMES} names")));
            }
            let width = if lo.starts_with('0') { lo.len() } else { 0 };
            (a..=b)
                .step_by(step)
                .map(|n| format!("{n:0width$}"))
                .collect()
        };
        if names.len().saturating_mul(items.len()) > MAX_NAMES {
            return Err(bad(&format!("expands to more than {MAX_NAMES} names")));
        }
        names = names
            .iter()
            .flat_map(|n| items.iter().map(move |i| format!("{n}{i}")))
            .collect();
        rest = &inner[close + 1..];
    }
    Ok(names)
}

/// The settings a host's resolved variables make.
fn settings(
    vars: impl Iterator<Item = Var>,
    notes: &mut BTreeSet<String>,
) -> Result<HostSettings, Fault> {
    let mut s = HostSettings::default();
    for Var { key, value, line } in vars {
        let fail = |why: String| (line, format!("{key}: {why}"));
        match key.as_str() {
            "ansible_host" | "ansible_ssh_host" => s.address = Some(value),
            "ansible_port" | "ansible_ssh_port" => {
                let port = value.parse::<u16>().ok().filter(|&p| p > 0);
                s.port = Some(port.ok_or_else(|| fail(format!("{value:?} is not a port")))?);
            }
            "ansible_user" | "ansible_ssh_user" => {
                parse::check_user(&value).map_err(|p| fail(p.message))?;
                s.user = Some(value);
            }
            "ansible_ssh_private_key_file" => s.identity_file = Some(home(&value)),
            "ansible_ssh_common_args" | "ansible_ssh_extra_args" => {
                s.ssh_options.extend(ssh_options(&value).map_err(fail)?);
            }
            "ansible_become" => {
                s.become_ = Some(
                    boolean(&value).ok_or_else(|| fail(format!("{value:?} is not a boolean")))?,
                )
            }
            "ansible_become_user" => s.become_user = Some(value),
            "ansible_password" | "ansible_ssh_pass" => {
                s.password_env = Some(env_ref(&value).map_err(fail)?)
            }
            "ansible_become_password" | "ansible_become_pass" => {
                s.become_password_env = Some(env_ref(&value).map_err(fail)?);
            }
            other if other.starts_with("ansible_") => {
                notes.insert(other.to_owned());
            }
            _ => {
                s.vars.insert(key, value);
            }
        }
    }
    Ok(s)
}

fn home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

fn boolean(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// `-o Key=Value` options from an ssh argument string; nothing else.
fn ssh_options(args: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut words = args.split_whitespace();
    while let Some(word) = words.next() {
        let option = match word.strip_prefix("-o") {
            Some("") => words.next().ok_or("-o without an option")?.to_owned(),
            Some(inline) => inline.to_owned(),
            None => {
                return Err(format!(
                    "{word:?}: only -o options are taken (pushrun owns ssh's other flags)"
                ));
            }
        };
        out.push(option.trim_matches(['"', '\'']).to_owned());
    }
    Ok(out)
}

/// The variable of `{{ lookup('env', 'VAR') }}`; anything else is an
/// inline secret, refused.
fn env_ref(value: &str) -> Result<String, String> {
    let inner = value
        .trim()
        .strip_prefix("{{")
        .and_then(|v| v.strip_suffix("}}"))
        .map(str::trim)
        .and_then(|v| v.strip_prefix("lookup("))
        .and_then(|v| v.strip_suffix(')'));
    let var = inner.and_then(|args| {
        let (kind, var) = args.split_once(',')?;
        let unquote = |t: &str| t.trim().trim_matches(['"', '\'']).to_owned();
        (unquote(kind) == "env").then(|| unquote(var))
    });
    match var {
        Some(var) if !var.is_empty() && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => Ok(var),
        _ => Err("inline passwords are refused (they would sit in the file and in every copy of it): write \"{{ lookup('env', 'VAR') }}\" and set VAR".to_owned()),
    }
}

/// Whether text is an Ansible INI inventory: a line that is a section
/// header (`[web]`, `[web:vars]`, `[web:children]`).
pub(super) fn is_ini(text: &str) -> bool {
    text.lines().any(|line| section(line.trim_end()).is_some())
}

/// `[name]` or `[name:vars]` / `[name:children]`: the name and the kind.
fn section(line: &str) -> Option<(&str, &str)> {
    let inner = line.strip_prefix('[')?.strip_suffix(']')?;
    let (name, kind) = inner.split_once(':').unwrap_or((inner, ""));
    let good = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    (good && matches!(kind, "" | "vars" | "children")).then_some((name, kind))
}

/// Splits a host line into words, quotes kept together and removed.
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut started = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                started = true;
            }
            (None, c) if c.is_whitespace() => {
                if started {
                    out.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (None, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".to_owned());
    }
    if started {
        out.push(word);
    }
    Ok(out)
}

/// Reads an Ansible INI inventory.
pub(super) fn parse_ini(text: &str, origin: &str) -> Result<Inventory, InventoryError> {
    let mut model = Model::default();
    let all = model.group("all");
    let ungrouped = model.group("ungrouped");
    model.child(all, "ungrouped");
    let fail = |(line, message): Fault| invalid(origin, line, message);
    let mut current = (ungrouped, "");
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some((name, kind)) = section(line) {
            let g = model.group(name);
            if name != "all" && name != "ungrouped" {
                model.child(all, name);
            }
            current = (g, kind);
            continue;
        }
        if line.starts_with('[') {
            return Err(fail((line_no, format!("bad section header {line:?}"))));
        }
        let (group, kind) = current;
        match kind {
            "vars" => {
                let (key, value) = line
                    .split_once('=')
                    .ok_or_else(|| fail((line_no, "expected key=value".into())))?;
                let value = words(value).map_err(|e| fail((line_no, e)))?.join(" ");
                model.groups[group].vars.push(Var {
                    key: key.trim().to_owned(),
                    value,
                    line: line_no,
                });
            }
            "children" => {
                let name = line.split_whitespace().next().unwrap_or(line);
                model.child(group, name);
            }
            _ => {
                let mut words = words(line).map_err(|e| fail((line_no, e)))?.into_iter();
                let pattern = words.next().unwrap_or_default();
                let vars = words
                    .map(|w| match w.split_once('=') {
                        Some((k, v)) => Ok(Var {
                            key: k.to_owned(),
                            value: v.to_owned(),
                            line: line_no,
                        }),
                        None => Err(fail((
                            line_no,
                            format!("{w:?}: expected key=value after the host"),
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                model.host(group, &pattern, &vars, line_no).map_err(fail)?;
            }
        }
    }
    finish(model, origin)
}

/// Whether a YAML document is an Ansible inventory: a mapping of group
/// names (not only pushrun's own top-level keys) to mappings, one at
/// least with `hosts`, `children` or `vars`.
pub(super) fn is_yaml(doc: &Value) -> bool {
    let Value::Mapping(top) = doc else {
        return false;
    };
    let own = ["hosts", "defaults", "groups"];
    let mut keys = top.keys();
    !top.is_empty()
        && !keys.all(|k| k.as_str().is_some_and(|k| own.contains(&k)))
        && top
            .values()
            .all(|v| matches!(v, Value::Null | Value::Mapping(_)))
        && top.values().any(|v| match v {
            Value::Mapping(m) => m.keys().any(|k| {
                k.as_str()
                    .is_some_and(|k| ["hosts", "children", "vars"].contains(&k))
            }),
            _ => false,
        })
}

/// Reads an Ansible YAML inventory (already parsed as `doc`).
pub(super) fn parse_yaml(
    doc: &Value,
    text: &str,
    origin: &str,
) -> Result<Inventory, InventoryError> {
    let mut model = Model::default();
    let all = model.group("all");
    let lines = Lines(text);
    let Value::Mapping(top) = doc else {
        return Err(invalid(origin, 0, "expected a mapping of groups".into()));
    };
    for (name, body) in top {
        let name = key(name);
        let g = model.group(&name);
        if name != "all" {
            model.child(all, &name);
        }
        yaml_group(&mut model, g, body, &lines).map_err(|(l, m)| invalid(origin, l, m))?;
    }
    finish(model, origin)
}

/// Finds the line of a key, for messages (YAML values carry none).
struct Lines<'a>(&'a str);

impl Lines<'_> {
    fn of(&self, needle: &str) -> usize {
        self.0
            .lines()
            .position(|l| {
                l.trim_start()
                    .trim_start_matches(['"', '\''])
                    .starts_with(needle)
            })
            .map_or(0, |i| i + 1)
    }
}

fn key(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => scalar_text(other),
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

fn yaml_vars(v: &Value, lines: &Lines<'_>) -> Result<Vec<Var>, Fault> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Mapping(m) => Ok(m
            .iter()
            .map(|(k, v)| {
                let key = key(k);
                let line = lines.of(&format!("{key}:"));
                Var {
                    key,
                    value: scalar_text(v),
                    line,
                }
            })
            .collect()),
        _ => Err((0, "vars must be a mapping".into())),
    }
}

fn yaml_group(model: &mut Model, g: usize, body: &Value, lines: &Lines<'_>) -> Result<(), Fault> {
    let Value::Mapping(body) = body else {
        return match body {
            Value::Null => Ok(()),
            _ => Err((
                lines.of(&format!("{}:", model.groups[g].name)),
                format!("group {} must be a mapping", model.groups[g].name),
            )),
        };
    };
    for (k, v) in body {
        match k.as_str() {
            Some("vars") => {
                let vars = yaml_vars(v, lines)?;
                model.groups[g].vars.extend(vars);
            }
            Some("hosts") => match v {
                Value::Null => {}
                Value::Mapping(hosts) => {
                    for (pattern, vars) in hosts {
                        let pattern = key(pattern);
                        let line = lines.of(&format!("{pattern}:"));
                        let vars = yaml_vars(vars, lines)?;
                        model.host(g, &pattern, &vars, line)?;
                    }
                }
                _ => {
                    return Err((
                        lines.of("hosts:"),
                        "hosts must be a mapping of host names".into(),
                    ));
                }
            },
            Some("children") => match v {
                Value::Null => {}
                Value::Mapping(children) => {
                    for (name, body) in children {
                        let name = key(name);
                        model.child(g, &name);
                        let c = model.group(&name);
                        yaml_group(model, c, body, lines)?;
                    }
                }
                _ => {
                    return Err((
                        lines.of("children:"),
                        "children must be a mapping of groups".into(),
                    ));
                }
            },
            _ => {
                let name = key(k);
                return Err((
                    lines.of(&format!("{name}:")),
                    format!(
                        "unknown key {name:?} in group {} (expected hosts, children, vars)",
                        model.groups[g].name
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn invalid(origin: &str, line: usize, message: String) -> InventoryError {
    InventoryError::Invalid {
        origin: origin.to_owned(),
        line: (line > 0).then_some(line),
        column: None,
        message,
    }
}

fn finish(model: Model, origin: &str) -> Result<Inventory, InventoryError> {
    let mut notes = BTreeSet::new();
    let (hosts, groups) = model
        .resolve(&mut notes)
        .map_err(|(line, message)| invalid(origin, line, message))?;
    if hosts.is_empty() {
        return Err(invalid(origin, 0, "no hosts".into()));
    }
    let mut inventory = Inventory::new(hosts, groups);
    if !notes.is_empty() {
        let names: Vec<String> = notes.into_iter().collect();
        inventory.notes.push(format!(
            "{origin}: Ansible variables pushrun has no use for are ignored: {}",
            names.join(", ")
        ));
    }
    Ok(inventory)
}

#[cfg(test)]
mod tests {
    use crate::inventory::Inventory;

    fn load(text: &str) -> Inventory {
        Inventory::parse(text, "inv").unwrap_or_else(|e| panic!("{e}"))
    }

    fn error(text: &str) -> String {
        match Inventory::parse(text, "inv") {
            Ok(inventory) => panic!("parsed: {:?}", inventory.hosts()),
            Err(e) => e.to_string(),
        }
    }

    fn names(inventory: &Inventory) -> Vec<&str> {
        inventory.hosts().iter().map(|h| h.name.as_str()).collect()
    }

    #[test]
    fn ansible_ranges() {
        let inventory = load("[web]\nwww[01:03:2].example.com\ndb-[a:c]\nn[8:10]:2200\n");
        assert_eq!(
            names(&inventory),
            [
                "www01.example.com",
                "www03.example.com",
                "db-a",
                "db-b",
                "db-c",
                "n8",
                "n9",
                "n10"
            ]
        );
        assert_eq!(inventory.hosts()[7].settings.port, Some(2200));
        assert_eq!(
            error("[web]\nn[3:1]\n"),
            "inv:2: bad host range \"n[3:1]\": reversed range"
        );
    }

    #[test]
    fn variables_layer_as_in_ansible() {
        let inventory = load(
            "all:
  vars:
    ansible_user: base
    ROLE: any
  children:
    prod:
      vars:
        ROLE: prod
        ansible_port: 2200
      children:
        web:
          vars:
            ROLE: web
          hosts:
            w1:
              ansible_host: 10.0.0.1
              ansible_ssh_common_args: '-o ProxyJump=bastion -oCompression=yes'
              ansible_python_interpreter: /usr/bin/python3
            w2:
              ROLE: mine
              ansible_become: yes
              ansible_become_password: \"{{ lookup('env', 'W2_SUDO') }}\"
",
        );
        let [w1, w2] = inventory.hosts() else {
            panic!("{:?}", inventory.hosts())
        };
        assert_eq!(w1.address(), "10.0.0.1");
        assert_eq!(w1.settings.user.as_deref(), Some("base"));
        assert_eq!(w1.settings.port, Some(2200));
        assert_eq!(w1.settings.vars["ROLE"], "web");
        assert_eq!(
            w1.settings.ssh_options,
            ["ProxyJump=bastion", "Compression=yes"]
        );
        assert_eq!(w1.groups, ["prod", "web"]);
        assert_eq!(w2.settings.vars["ROLE"], "mine");
        assert_eq!(w2.settings.become_, Some(true));
        assert_eq!(w2.settings.become_password_env.as_deref(), Some("W2_SUDO"));
        assert_eq!(
            inventory.notes(),
            [
                "inv: Ansible variables pushrun has no use for are ignored: ansible_python_interpreter"
            ]
        );
        let prod = inventory.select(&["@prod".to_owned()]).unwrap();
        assert_eq!(prod.len(), 2);
    }

    #[test]
    fn inline_secrets_and_bad_values_are_refused_at_their_line() {
        let refused = error("[web]\nw1\nw2 ansible_password=hunter2\n");
        assert!(
            refused.starts_with("inv:3: ansible_password: inline passwords are refused"),
            "{refused}"
        );
        assert_eq!(
            error("[web]\nw1 ansible_port=http\n"),
            "inv:2: ansible_port: \"http\" is not a port"
        );
        assert_eq!(
            error("[web]\nw1 ansible_ssh_extra_args='-A'\n"),
            "inv:2: ansible_ssh_extra_args: \"-A\": only -o options are taken (pushrun owns ssh's other flags)"
        );
        assert_eq!(
            error("[web]\nw1 port\n"),
            "inv:2: \"port\": expected key=value after the host"
        );
        assert_eq!(
            error("web:\n  hosts:\n    a;b:\n"),
            "inv:3: bad host name \"a;b\""
        );
        assert_eq!(
            error("db:\n  hosts:\n    d:\nweb:\n  host:\n    a:\n"),
            "inv:5: unknown key \"host\" in group web (expected hosts, children, vars)"
        );
    }
}
