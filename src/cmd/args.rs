//! The flag groups several subcommands share: which hosts, and how to reach
//! them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{onto, parse_secs};
use crate::auth::{Access, Secret};
use crate::error::Error;
use crate::fleet::{Job, PtyMode, RunSpec, Waves};
use crate::inventory::{Host, Inventory};
use crate::report::OutputMode;
use crate::run::{self, Plan};
use crate::session::{HostKeyChecking, Kex, SshOptions};

/// Which hosts.
#[derive(Debug, Args)]
pub struct SelectArgs {
    /// Inventory file: pushrun's hosts.yaml, an Ansible inventory (YAML or
    /// INI) or a plain list of hosts, told apart by content. Default:
    /// $PUSHRUN_HOSTS, else ./hosts.yaml.
    #[arg(long, value_name = "FILE")]
    pub hosts: Option<PathBuf>,
    /// Hosts to use, as a NodeSet expression of host strings
    /// (`ops@node[01-10]:2222,db1!db3`), like pdsh/clush -w; `^FILE` reads a
    /// plain list. With an inventory, selects these hosts from it.
    #[arg(short = 'w', value_name = "LIST")]
    pub wlist: Vec<String>,
    /// Exclude these hosts (a NodeSet expression, like pdsh/clush -x).
    #[arg(short = 'x', value_name = "LIST")]
    pub exclude: Vec<String>,
    /// Select hosts: names, ranges, globs, @group, !exclusion, comma lists.
    #[arg(long, value_name = "PATTERN")]
    pub limit: Vec<String>,
}

/// How hosts are reached.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Log in as USER on hosts whose inventory entry names no user (like ssh/pdsh/clush -l).
    #[arg(long = "user", short = 'l', value_name = "USER", value_parser = login_name)]
    pub user: Option<String>,
    /// How many hosts at once.
    #[arg(
        long,
        short = 'f',
        default_value_t = 64,
        value_name = "N",
        env = "PUSHRUN_FORKS"
    )]
    pub forks: usize,
    /// ssh configuration file (ssh -F).
    #[arg(long, value_name = "FILE", env = "PUSHRUN_SSH_CONFIG")]
    pub ssh_config: Option<PathBuf>,
    /// An ssh option for every host, `KEY=VALUE` (ssh -o); repeatable.
    /// The inventory's own `ssh_options` come first and win.
    #[arg(short = 'o', value_name = "KEY=VALUE")]
    pub ssh_option: Vec<String>,
    /// Seconds to wait for a host to answer.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_secs)]
    pub connect_timeout: Duration,
    /// Key exchange: `default` keeps ssh's own order (what `ssh` would pick);
    /// `fast` prefers mlkem768x25519-sha256 where ssh offers it, then
    /// curve25519-sha256 (a tenth of the CPU per host of OpenSSH 9's
    /// post-quantum default, but not post-quantum itself).
    #[arg(long, default_value = "default", value_name = "KEX", value_parser = onto::<KexFlag, Kex>())]
    pub kex: Kex,
    /// How long each host's connection stays up, idle, after the run, for
    /// the next run to use (`90s`, `2m`, `1h`; a bare number is seconds;
    /// `0` ends connections with the run). One ssh process per host waits.
    #[arg(long, env = "PUSHRUN_PERSIST", default_value = "2m", value_name = "DURATION", value_parser = parse_persist)]
    pub persist: Duration,
    /// Host key policy. Default: what ssh_config says (never a prompt).
    #[arg(long, value_name = "MODE", value_parser = onto::<HostKeyCheckingFlag, HostKeyChecking>())]
    pub host_key_checking: Option<HostKeyChecking>,
    /// Ask for the login password once (on the terminal; without one, the
    /// first line of stdin) and give it to every host that asks for one.
    /// Per host: `password_env: VAR` in the inventory.
    #[arg(long, short = 'k')]
    pub ask_pass: bool,
    /// The pushrun executable to stage on relays (`via:` hosts), when they
    /// need another build than this one (another OS or architecture).
    #[arg(long, value_name = "PATH")]
    pub relay_binary: Option<PathBuf>,
    /// The directory on hosts that holds pushrun's dir, for hosts whose
    /// inventory sets no `remote_tmp`. Default: the first of /tmp, /var/tmp,
    /// /dev/shm and ~/.cache where a file can be written and executed.
    #[arg(long, value_name = "PATH", value_parser = parse_remote_tmp)]
    pub remote_tmp: Option<String>,
}

/// `--remote-tmp`: an absolute path.
fn parse_remote_tmp(text: &str) -> Result<String, String> {
    if text.starts_with('/') {
        Ok(text.to_string())
    } else {
        Err("must be an absolute path".into())
    }
}

/// A `--persist` duration: `0`, seconds, or a number with `s`, `m` or `h`.
fn parse_persist(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        _ => (s, 1),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (like 0, 90s, 2m, 1h)"))?;
    n.checked_mul(unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// `--kex`, as clap parses it; the variants' docs are its help.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum KexFlag {
    /// Prefer mlkem768x25519-sha256 where ssh offers it (post-quantum and
    /// cheap), then curve25519-sha256 (cheap, not post-quantum). Ignored
    /// when ssh_config sets KexAlgorithms.
    Fast,
    /// ssh's own default order.
    Default,
}

impl From<KexFlag> for Kex {
    fn from(flag: KexFlag) -> Kex {
        match flag {
            KexFlag::Fast => Kex::Fast,
            KexFlag::Default => Kex::Default,
        }
    }
}

/// `--host-key-checking`, as clap parses it; the variants' docs are its help.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum HostKeyCheckingFlag {
    /// Only known keys are accepted (`StrictHostKeyChecking=yes`).
    Strict,
    /// Unknown keys are added to known_hosts, changed keys refused.
    AcceptNew,
    /// No checking at all (known_hosts is not read or written).
    Off,
}

impl From<HostKeyCheckingFlag> for HostKeyChecking {
    fn from(flag: HostKeyCheckingFlag) -> HostKeyChecking {
        match flag {
            HostKeyCheckingFlag::Strict => HostKeyChecking::Strict,
            HostKeyCheckingFlag::AcceptNew => HostKeyChecking::AcceptNew,
            HostKeyCheckingFlag::Off => HostKeyChecking::Off,
        }
    }
}

impl SelectArgs {
    /// Loads the inventory and applies the selection.
    pub fn select(&self) -> Result<Vec<Host>, Error> {
        Ok(self.select_with_hops()?.0)
    }

    /// The selection, and the relays it is reached through that are not
    /// selected themselves (see `relay::hops`).
    pub fn select_with_hops(&self) -> Result<(Vec<Host>, Vec<Host>), Error> {
        let (hosts, hops, _) = self.selection()?;
        Ok((hosts, hops))
    }

    /// The selection, its hops, and where its hosts came from (recorded in
    /// summary.json for `--rerun`).
    pub fn selection(&self) -> Result<(Vec<Host>, Vec<Host>, Source), Error> {
        let (source, mut patterns) = self.source()?;
        let inventory = source.load()?;
        patterns.extend(self.limit.iter().cloned());
        for exclude in &self.exclude {
            // Each item of -x is taken away on its own: `-x a,b` drops both.
            patterns.extend(
                crate::inventory::hostlist::split_list(exclude)
                    .into_iter()
                    .map(|item| format!("!{item}")),
            );
        }
        let (hosts, hops) = select_hosts(inventory, Pick::Patterns(&patterns))?;
        Ok((hosts, hops, source))
    }

    /// Where the hosts come from, and the `-w` patterns that select among
    /// them when they come from an inventory.
    fn source(&self) -> Result<(Source, Vec<String>), Error> {
        let env = std::env::var_os("PUSHRUN_HOSTS")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let default = PathBuf::from("hosts.yaml");
        let wlist = self.wlist.join(",");
        // `-w` names hosts of its own unless it selects groups of an
        // inventory (the environment's, or ./hosts.yaml).
        let groups = self
            .wlist
            .iter()
            .any(|w| crate::inventory::names_a_group(w));
        Ok(match (&self.hosts, env) {
            (Some(path), _) => (Source::File(absolute(path)), self.wlist.clone()),
            (None, Some(env)) if groups || self.wlist.is_empty() => {
                (Source::File(absolute(&env)), self.wlist.clone())
            }
            (None, None) if groups && default.exists() => {
                (Source::File(absolute(&default)), self.wlist.clone())
            }
            (None, _) if !self.wlist.is_empty() => match wlist.strip_prefix('^') {
                Some(file) => (Source::PlainList(absolute(Path::new(file))), Vec::new()),
                None => (Source::List(wlist), Vec::new()),
            },
            (None, _) if default.exists() => (Source::File(absolute(&default)), Vec::new()),
            (None, _) => {
                return Err(Error::Usage(
                    "no hosts: give --hosts FILE or -w LIST (no hosts.yaml in this directory)"
                        .into(),
                ));
            }
        })
    }
}

/// Where a run's hosts came from: what `--rerun` loads again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An inventory file (`--hosts`, `PUSHRUN_HOSTS`, ./hosts.yaml).
    File(PathBuf),
    /// A plain list file (`-w ^FILE`).
    PlainList(PathBuf),
    /// A `-w` expression.
    List(String),
}

impl Source {
    /// Reads the hosts again.
    pub fn load(&self) -> Result<Inventory, Error> {
        let inventory = match self {
            Source::File(path) => Inventory::load(path)?,
            Source::PlainList(path) => Inventory::load_plain(path)?,
            Source::List(list) => Inventory::ad_hoc(list)?,
        };
        for note in inventory.notes() {
            eprintln!("pushrun: note: {note}");
        }
        Ok(inventory)
    }
}

/// The path made absolute (as given if that fails), so that a rerun from
/// another directory finds the same file.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// Which hosts of an inventory.
pub(super) enum Pick<'a> {
    /// `--limit`/`-w`/`-x` patterns (all hosts when there are none).
    Patterns(&'a [String]),
    /// These names exactly (`--rerun`).
    Names(&'a [String]),
}

/// Picks hosts from the inventory, and finds the relays they need.
pub(super) fn select_hosts(
    inventory: Inventory,
    pick: Pick<'_>,
) -> Result<(Vec<Host>, Vec<Host>), Error> {
    let choose = |inventory: &Inventory| match pick {
        Pick::Patterns(patterns) => inventory.select(patterns),
        Pick::Names(names) => inventory.pick(names),
    };
    if inventory.hosts().iter().all(|h| h.settings.via.is_none()) {
        // No relays: no hops to find, and all hosts need no copy.
        let hosts = match pick {
            Pick::Patterns([]) => inventory.into_hosts(),
            _ => choose(&inventory)?,
        };
        return Ok((hosts, Vec::new()));
    }
    let hosts = choose(&inventory)?;
    let hops = crate::relay::hops(inventory.hosts(), &hosts).map_err(Error::Relays)?;
    Ok((hosts, hops))
}

/// What a one-shot job (clean, copy, fetch) adds to its plan; everything
/// else is as for any such job: no PTY, convergence, repeat or watch, the
/// default results limit, no results dir.
pub(super) struct OneShot {
    /// The job itself.
    pub job: Job,
    /// `--timeout`.
    pub timeout: Option<Duration>,
    /// `--batch` and `--max-fail`.
    pub waves: Option<Waves>,
    /// How the run is shown.
    pub output: OutputMode,
}

impl ConnectArgs {
    /// The plan of a one-shot job on `hosts` (with `hops`, the relays).
    pub(super) fn one_shot_plan(
        &self,
        ssh: SshOptions,
        (hosts, hops): (Vec<Host>, Vec<Host>),
        access: Vec<Access>,
        shot: OneShot,
    ) -> Plan {
        let spec = RunSpec {
            job: shot.job,
            timeout: shot.timeout,
            pty: PtyMode::No,
            ssh,
            forks: self.forks,
            access,
            converge: None,
            repeat: None,
            watch: None,
            waves: shot.waves,
            max_results: crate::fleet::MAX_RESULTS,
        };
        Plan {
            selection: serde_json::Value::Null,
            hosts,
            spec,
            output: shot.output,
            results: None,
            run_id: run::new_run_id(),
            hops,
            relay_binary: self.relay_binary.clone(),
        }
    }

    /// Fills in what the flags say for hosts whose inventory leaves it open.
    pub(super) fn apply(&self, mut hosts: Vec<Host>) -> Vec<Host> {
        if let Some(user) = &self.user {
            for h in hosts.iter_mut().filter(|h| h.settings.user.is_none()) {
                std::sync::Arc::make_mut(&mut h.settings).user = Some(user.clone());
            }
        }
        if !self.ssh_option.is_empty() {
            for h in &mut hosts {
                let options = &mut std::sync::Arc::make_mut(&mut h.settings).ssh_options;
                options.extend(self.ssh_option.iter().cloned());
            }
        }
        if let Some(tmp) = &self.remote_tmp {
            for h in hosts.iter_mut().filter(|h| h.settings.remote_tmp.is_none()) {
                std::sync::Arc::make_mut(&mut h.settings).remote_tmp = Some(tmp.clone());
            }
        }
        hosts
    }

    /// Asks for the login password when told to.
    pub(super) fn login_password(&self) -> Result<Option<Arc<Secret>>, Error> {
        if !self.ask_pass {
            return Ok(None);
        }
        super::access::ask("SSH password: ", "--ask-pass").map(Some)
    }

    /// Checks the flags, and the ssh settings they make.
    pub(super) fn check(&self) -> Result<SshOptions, Error> {
        if self.forks == 0 {
            return Err(Error::Usage("--forks must be at least 1".into()));
        }
        for option in &self.ssh_option {
            let (key, value) = option.split_once(['=', ' ']).unwrap_or((option, ""));
            let bad = |c: char| c.is_control() || c.is_whitespace();
            if key.is_empty()
                || value.is_empty()
                || key.contains(bad)
                || value.contains(char::is_control)
            {
                return Err(Error::Usage(format!(
                    "-o {option:?}: expected an ssh option as KEY=VALUE"
                )));
            }
        }
        if let Some(bin) = &self.relay_binary
            && !bin.is_file()
        {
            return Err(Error::Usage(format!(
                "{}: relay binary not found",
                bin.display()
            )));
        }
        if let Some(cfg) = &self.ssh_config
            && !cfg.is_file()
        {
            return Err(Error::Usage(format!(
                "{}: ssh config file not found",
                cfg.display()
            )));
        }
        Ok(SshOptions {
            config_file: self.ssh_config.clone(),
            kex: self.kex,
            connect_timeout: self.connect_timeout,
            host_key_checking: self.host_key_checking,
            persist: self.persist,
        })
    }
}

/// `--user`, checked as the inventory's `user` is.
fn login_name(user: &str) -> Result<String, String> {
    crate::inventory::check_user(user).map(|()| user.to_string())
}

/// A size: bytes, or a number with K, M, G or T (optionally KiB, MB, …),
/// each 1024 times the one before.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a size (like 500M or 2G)"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("`{s}`: unknown unit (K, M, G or T)")),
    };
    match number.checked_mul(1 << shift) {
        Some(0) | None => Err(format!(
            "`{s}`: a size must be more than 0 and less than 16 EiB"
        )),
        Some(n) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persist_takes_seconds_minutes_hours_and_zero() {
        assert_eq!(parse_persist("0"), Ok(Duration::ZERO));
        assert_eq!(parse_persist("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_persist("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_persist("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_persist("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_persist("2d").is_err());
        assert!(parse_persist("-1").is_err());
        assert!(parse_persist("").is_err());
    }
}
