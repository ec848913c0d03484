//! Command-line flags, and their checked form.
//!
//! Parsing happens in two steps, as in ripgrep: clap fills [`Cli`], then
//! [`ExecArgs::plan`] loads and checks the inventory and builds the
//! [`Plan`] before any host is contacted. Every error up to there is a
//! usage error (exit status 2) and nothing has touched the network.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use thiserror::Error;

use std::sync::Arc;

use crate::auth::{self, Access, Become, Secret};
use crate::fleet::{Job, PayloadJob, PtyMode, RunSpec};
use crate::inventory::{Host, Inventory, InventoryError, PtySetting};
use crate::payload::Payload;
use crate::report::OutputMode;
use crate::session::{HostKeyChecking, Kex, SshOptions};

const EXIT_CODES: &str = "\
Exit status:
  0    every host ran the command and it exited 0
  1    the command exited non-zero (or was killed) on some host
  2    usage or inventory error; no host was contacted
  3    some host was unreachable, refused authentication or timed out
  4    --converged-timeout: the run converged while some payload still ran (stopped)
  130  interrupted (Ctrl-C)";

/// Runs commands on many hosts over SSH, with nothing to install on them.
#[derive(Debug, Parser)]
#[command(name = "pushrun", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// pushrun's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command, or push and run a payload, on every selected host.
    #[command(after_help = EXIT_CODES)]
    Exec(ExecArgs),
    /// List the selected hosts and their settings, contacting none.
    Hosts(SelectArgs),
    /// Remove pushrun's directory (payload cache, leftover runs) from the selected hosts.
    #[command(after_help = EXIT_CODES)]
    Clean(CleanArgs),
    /// Serve a subtree for an initiator: a framed plan on stdin, framed events on stdout.
    #[command(hide = true)]
    Relay,
}

/// Flags of `pushrun clean`.
#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Which hosts.
    #[command(flatten)]
    pub select: SelectArgs,
    /// How to reach them.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// One JSON object per event on stdout, and a final summary object.
    #[arg(long)]
    pub json: bool,
}

/// Which hosts.
#[derive(Debug, Args)]
pub struct SelectArgs {
    /// Inventory file (hosts.yaml).
    #[arg(long, value_name = "FILE")]
    pub hosts: Option<PathBuf>,
    /// Hosts to use, as a comma list with ranges (`node[01-10],db1`), like pdsh/clush -w.
    /// With --hosts, selects these hosts from the inventory.
    #[arg(short = 'w', value_name = "LIST")]
    pub wlist: Vec<String>,
    /// Select hosts: names, ranges, globs, @group, !exclusion, comma lists.
    #[arg(long, value_name = "PATTERN")]
    pub limit: Vec<String>,
}

/// How hosts are reached.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Log in as USER on hosts whose inventory entry names no user (like ssh/pdsh/clush -l).
    #[arg(long = "user", short = 'l', value_name = "USER")]
    pub user: Option<String>,
    /// How many hosts at once.
    #[arg(long, short = 'f', default_value_t = 64, value_name = "N")]
    pub forks: usize,
    /// ssh configuration file (ssh -F).
    #[arg(long, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
    /// Seconds to wait for a host to answer.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_secs)]
    pub connect_timeout: Duration,
    /// Key exchange: `fast` prefers curve25519-sha256 (a tenth of the CPU per
    /// host of OpenSSH 9's post-quantum default); `default` keeps ssh's order.
    #[arg(long, value_enum, default_value = "fast", value_name = "KEX")]
    pub kex: Kex,
    /// Host key policy. Default: what ssh_config says (never a prompt).
    #[arg(long, value_enum, value_name = "MODE")]
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
}

/// Flags of `pushrun exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Which hosts.
    #[command(flatten)]
    pub select: SelectArgs,
    /// How to reach them.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Seconds a command may run; then it is killed on the host. Default: no
    /// limit (for a payload: its pushrun.yaml `timeout`).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub timeout: Option<Duration>,
    /// Run this payload directory's entry point (`run`, or `entry:` in its
    /// pushrun.yaml); arguments after `--` go to it. With no payload and no
    /// command, the built-in collector runs.
    #[arg(long, value_name = "DIR")]
    pub payload: Option<PathBuf>,
    /// Where results go: `DIR/<run-id>/<host>/{stdout,stderr,exit_status,out/}` and
    /// `DIR/<run-id>/summary.json`. Default for payload runs: ./pushrun-results.
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,
    /// Do not keep the payload cached on the hosts: it lives in the run dir and goes with it.
    #[arg(long)]
    pub no_cache: bool,
    /// Run with a pseudo terminal: `--pty` (fail where refused) or `--pty auto`
    /// (fall back). A PTY merges stdout and stderr. With --become, `auto` also
    /// lets sudo have the terminal it insists on (requiretty).
    #[arg(long, value_enum, value_name = "MODE", num_args = 0..=1, default_missing_value = "yes")]
    pub pty: Option<PtyMode>,
    /// Run the command or payload through sudo, as USER (default: the
    /// inventory's `become_user`, else root). Per host: `become: true`.
    #[arg(long = "become", value_name = "USER", num_args = 0..=1)]
    pub become_: Option<Option<String>>,
    /// Ask for sudo's password once (after --ask-pass's, if both); used
    /// where sudo wants one. Per host: `become_password_env: VAR`.
    #[arg(long, short = 'K')]
    pub ask_become_pass: bool,
    /// Gather identical outputs under one folded host list (like clush -b / dshbak -c).
    #[arg(long, short = 'b', conflicts_with = "json")]
    pub gather: bool,
    /// One JSON object per event on stdout, and a final summary object.
    #[arg(long)]
    pub json: bool,
    /// Unattended: go on until no host has been active (output, tunnel
    /// records, connecting, starting, ending) for SECS seconds; then stop
    /// what still runs, collect, clean and report. Nothing prompts,
    /// unreachable hosts are tried again, the log goes to the results dir.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub converged_timeout: Option<Duration>,
    /// Run the payload again SECS seconds after each of its runs ends; a run
    /// whose stdout and results equal the previous run's is no activity.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub repeat: Option<Duration>,
    /// Watch the payload dir: on every change send what changed and run it
    /// again on every host (until Ctrl-C, or convergence).
    #[arg(long)]
    pub watch: bool,
    /// The command, after `--`; run by the login shell on each host. With
    /// --payload: the entry point's arguments.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// A run, checked and ready.
#[derive(Debug)]
pub struct Plan {
    /// The selected hosts, in inventory order.
    pub hosts: Vec<Host>,
    /// What to do on each.
    pub spec: RunSpec,
    /// How to show it.
    pub output: OutputMode,
    /// Where results go (`DIR/<run-id>`), if anywhere.
    pub results: Option<PathBuf>,
    /// The run's id.
    pub run_id: String,
    /// Relays the hosts are reached through that are not selected themselves.
    pub hops: Vec<Host>,
    /// `--relay-binary`.
    pub relay_binary: Option<PathBuf>,
}

/// A mistake in the flags or the inventory: exit status 2.
#[derive(Debug, Error)]
pub enum UsageError {
    /// The inventory is broken.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// The flags are.
    #[error("{0}")]
    Flags(String),
}

impl SelectArgs {
    /// Loads the inventory and applies the selection.
    pub fn select(&self) -> Result<Vec<Host>, UsageError> {
        Ok(self.select_with_hops()?.0)
    }

    /// The selection, and the relays it is reached through that are not
    /// selected themselves (see `relay::hops`).
    pub fn select_with_hops(&self) -> Result<(Vec<Host>, Vec<Host>), UsageError> {
        let default = PathBuf::from("hosts.yaml");
        let (inventory, mut patterns) = match (&self.hosts, self.wlist.is_empty()) {
            (Some(path), _) => (Inventory::load(path)?, self.wlist.clone()),
            (None, false) => (Inventory::ad_hoc(&self.wlist.join(","))?, Vec::new()),
            (None, true) if default.exists() => (Inventory::load(&default)?, Vec::new()),
            (None, true) => {
                return Err(UsageError::Flags(
                    "no hosts: give --hosts FILE or -w LIST (no hosts.yaml in this directory)"
                        .into(),
                ));
            }
        };
        patterns.extend(self.limit.iter().cloned());
        let hosts = inventory.select(&patterns)?;
        let hops = crate::relay::hops(inventory.hosts(), &hosts).map_err(UsageError::Flags)?;
        Ok((hosts, hops))
    }
}

impl ConnectArgs {
    /// Fills in what the flags say for hosts whose inventory leaves it open.
    fn apply(&self, mut hosts: Vec<Host>) -> Vec<Host> {
        if let Some(user) = &self.user {
            for h in hosts.iter_mut().filter(|h| h.settings.user.is_none()) {
                h.settings.user = Some(user.clone());
            }
        }
        hosts
    }

    /// Asks for the login password when told to.
    fn login_password(&self) -> Result<Option<Arc<Secret>>, UsageError> {
        if !self.ask_pass {
            return Ok(None);
        }
        ask("SSH password: ", "--ask-pass").map(Some)
    }

    fn check(&self) -> Result<SshOptions, UsageError> {
        if self.forks == 0 {
            return Err(UsageError::Flags("--forks must be at least 1".into()));
        }
        if let Some(bin) = &self.relay_binary
            && !bin.is_file()
        {
            return Err(UsageError::Flags(format!(
                "{}: relay binary not found",
                bin.display()
            )));
        }
        if let Some(cfg) = &self.ssh_config
            && !cfg.is_file()
        {
            return Err(UsageError::Flags(format!(
                "{}: ssh config file not found",
                cfg.display()
            )));
        }
        Ok(SshOptions {
            config_file: self.ssh_config.clone(),
            kex: self.kex,
            connect_timeout: self.connect_timeout,
            host_key_checking: self.host_key_checking,
        })
    }
}

fn output_mode(gather: bool, json: bool) -> OutputMode {
    match (gather, json) {
        (_, true) => OutputMode::Json,
        (true, false) => OutputMode::Gather,
        _ => OutputMode::Lines,
    }
}

/// Reads a password for `flag`.
fn ask(prompt: &str, flag: &str) -> Result<Arc<Secret>, UsageError> {
    auth::read_secret(prompt)
        .map(Arc::new)
        .map_err(|e| UsageError::Flags(format!("{flag}: cannot read the password: {e}")))
}

/// A password from the initiator's environment, named by the inventory.
fn password_from_env(
    host: &Host,
    key: &str,
    var: &str,
    seen: &mut std::collections::HashMap<String, Arc<Secret>>,
) -> Result<Arc<Secret>, UsageError> {
    if let Some(secret) = seen.get(var) {
        return Ok(secret.clone());
    }
    match std::env::var(var) {
        Ok(value) => {
            // Not passed on to ssh or anything else pushrun starts.
            // SAFETY: plans are made before any other thread is started.
            unsafe { std::env::remove_var(var) };
            let secret = Arc::new(Secret::new(value));
            seen.insert(var.to_string(), secret.clone());
            Ok(secret)
        }
        Err(_) => Err(UsageError::Flags(format!(
            "host {}: {key} names {var}, which is not set in the environment",
            host.name
        ))),
    }
}

/// Passwords and sudo for each host, from the inventory and the flags.
fn access_for(
    hosts: &[Host],
    login: Option<Arc<Secret>>,
    become_flag: Option<&Option<String>>,
    become_password: Option<Arc<Secret>>,
    pty_flag: Option<PtyMode>,
) -> Result<Vec<Access>, UsageError> {
    let mut access = Vec::with_capacity(hosts.len());
    let mut seen = std::collections::HashMap::new();
    for host in hosts {
        let s = &host.settings;
        let password = match &s.password_env {
            Some(var) => Some(password_from_env(host, "password_env", var, &mut seen)?),
            None => login.clone(),
        };
        let user = match become_flag {
            Some(Some(user)) => Some(user.clone()),
            Some(None) => Some(s.become_user.clone().unwrap_or_else(|| "root".into())),
            None if s.become_ == Some(true) => {
                Some(s.become_user.clone().unwrap_or_else(|| "root".into()))
            }
            None => None,
        };
        let become_ = match user {
            Some(user) => Some(Become {
                user,
                password: match &s.become_password_env {
                    Some(var) => Some(password_from_env(
                        host,
                        "become_password_env",
                        var,
                        &mut seen,
                    )?),
                    None => become_password.clone(),
                },
            }),
            None => None,
        };
        let pty_auto = match pty_flag {
            Some(mode) => mode != PtyMode::No,
            None => matches!(s.pty, Some(PtySetting::Auto | PtySetting::Yes)),
        };
        access.push(Access {
            password,
            become_,
            pty_auto,
        });
    }
    Ok(access)
}

impl ExecArgs {
    /// Checks everything and builds the plan.
    pub fn plan(&self) -> Result<Plan, UsageError> {
        let ssh = self.connect.check()?;
        let pty = self.pty.unwrap_or(PtyMode::No);
        if pty != PtyMode::No && (self.payload.is_some() || self.command.is_empty()) {
            return Err(UsageError::Flags(
                "--pty goes with a command, not a payload (payloads never need a terminal)".into(),
            ));
        }
        let run_id = new_run_id();
        let payload = match (&self.payload, self.command.is_empty()) {
            (Some(dir), _) => {
                Some(Payload::load(dir).map_err(|e| UsageError::Flags(e.to_string()))?)
            }
            (None, true) => Some(Payload::builtin()),
            (None, false) => None,
        };
        let (job, results) = match payload {
            Some(payload) => {
                let job = PayloadJob::new(
                    payload,
                    self.command.clone(),
                    !self.no_cache,
                    run_id.clone(),
                );
                let results = self
                    .results
                    .clone()
                    .unwrap_or_else(|| "pushrun-results".into());
                if self.watch && self.payload.is_none() {
                    return Err(UsageError::Flags(
                        "--watch watches a payload dir: give --payload DIR".into(),
                    ));
                }
                (Job::Payload(Arc::new(job)), Some(results))
            }
            None => {
                if self.no_cache {
                    return Err(UsageError::Flags(
                        "--no-cache goes with a payload, not a command".into(),
                    ));
                }
                if self.repeat.is_some() || self.watch {
                    return Err(UsageError::Flags(
                        "--repeat and --watch go with a payload, not a command".into(),
                    ));
                }
                // an unattended run keeps its log and results
                let results = match self.converged_timeout {
                    Some(_) => Some(
                        self.results
                            .clone()
                            .unwrap_or_else(|| "pushrun-results".into()),
                    ),
                    None => self.results.clone(),
                };
                (Job::Command(self.command.join(" ")), results)
            }
        };
        let (hosts, hops) = self.select.select_with_hops()?;
        let (hosts, hops) = (self.connect.apply(hosts), self.connect.apply(hops));
        if self.watch && hosts.iter().any(|h| h.settings.via.is_some()) {
            return Err(UsageError::Flags(
                "--watch does not go through relays (via:): watch direct hosts, or run again"
                    .into(),
            ));
        }
        if let (Job::Payload(_), Some(Some(user))) = (&job, &self.become_)
            && user != "root"
        {
            return Err(UsageError::Flags(format!(
                "--become {user} with a payload: payloads become root only (their files belong \
                 to the login user; collecting them needs root's rights); commands may become anyone"
            )));
        }
        if self.converged_timeout.is_some()
            && (self.connect.ask_pass || self.ask_become_pass)
            && std::io::IsTerminal::is_terminal(&std::io::stdin())
        {
            return Err(UsageError::Flags(
                "--converged-timeout runs unattended and never prompts: give passwords on \
                 stdin or through password_env / become_password_env"
                    .into(),
            ));
        }
        let login = self.connect.login_password()?;
        let become_password = if self.ask_become_pass {
            Some(ask("sudo password: ", "--ask-become-pass")?)
        } else {
            None
        };
        let access = access_for(
            &hosts,
            login,
            self.become_.as_ref(),
            become_password,
            self.pty,
        )?;
        if matches!(job, Job::Payload(_))
            && let Some(h) = hosts
                .iter()
                .zip(&access)
                .find_map(|(h, a)| a.become_.as_ref().filter(|b| b.user != "root").map(|_| h))
        {
            return Err(UsageError::Flags(format!(
                "host {}: become_user with a payload: payloads become root only (their files \
                 belong to the login user; collecting them needs root's rights)",
                h.name
            )));
        }
        let spec = RunSpec {
            job,
            timeout: self.timeout,
            pty,
            ssh,
            forks: self.connect.forks,
            access,
            converge: self.converged_timeout,
            repeat: self.repeat,
            watch: if self.watch {
                self.payload.clone()
            } else {
                None
            },
        };
        Ok(Plan {
            hosts,
            spec,
            output: output_mode(self.gather, self.json),
            results,
            run_id,
            hops,
            relay_binary: self.connect.relay_binary.clone(),
        })
    }
}

impl CleanArgs {
    /// Checks everything and builds the plan.
    pub fn plan(&self) -> Result<Plan, UsageError> {
        let ssh = self.connect.check()?;
        let (hosts, hops) = self.select.select_with_hops()?;
        let (hosts, hops) = (self.connect.apply(hosts), self.connect.apply(hops));
        let login = self.connect.login_password()?;
        let access = access_for(&hosts, login, None, None, None)?;
        let spec = RunSpec {
            job: Job::Clean,
            timeout: None,
            pty: PtyMode::No,
            ssh,
            forks: self.connect.forks,
            access,
            converge: None,
            repeat: None,
            watch: None,
        };
        Ok(Plan {
            hosts,
            spec,
            output: output_mode(false, self.json),
            results: None,
            run_id: new_run_id(),
            hops,
            relay_binary: self.connect.relay_binary.clone(),
        })
    }
}

/// A run id: UTC time and a random suffix, e.g. `20261121-231455-3fa9`.
/// Sorts by time; safe in file names and on a shell command line.
pub fn new_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}-{:04x}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        h.finish() & 0xffff
    )
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err(format!("`{s}`: seconds must be more than 0"));
    }
    Ok(Duration::from_secs_f64(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_accept_fractions_and_refuse_nonsense() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("ten").is_err());
    }

    #[test]
    fn pty_flag_alone_means_yes() {
        let cli =
            Cli::try_parse_from(["pushrun", "exec", "-w", "a", "--pty", "--", "true"]).unwrap();
        let Command::Exec(a) = cli.command else {
            panic!("not exec")
        };
        assert_eq!(a.pty, Some(PtyMode::Yes));
        let cli =
            Cli::try_parse_from(["pushrun", "exec", "-w", "a", "--pty", "auto", "--", "true"])
                .unwrap();
        let Command::Exec(a) = cli.command else {
            panic!("not exec")
        };
        assert_eq!(a.pty, Some(PtyMode::Auto));
        assert_eq!(a.command, vec!["true".to_string()]);
    }
}
