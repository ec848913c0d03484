//! `pushrun exec`: a command, a payload or the built-in collector on every
//! selected host.
//!
//! Its flags are checked in full, passwords read and the payload's
//! manifest built before any host is contacted: a mistake costs nothing,
//! and an unattended run never stops to ask.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::access::{access_for, ask};
use super::rerun::{self, Rerun};
use super::waves::WaveArgs;
use super::{ConnectArgs, SelectArgs, onto, output_mode, parse_secs};
use crate::auth::Access;
use crate::error::{Error, Exit};
use crate::fleet::{Job, PayloadJob, PtyMode, RunSpec};
use crate::inventory::Host;
use crate::payload::Payload;
use crate::report::OutputMode;
use crate::run::{self, Plan};

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
    #[arg(long, value_name = "DIR", env = "PUSHRUN_RESULTS")]
    pub results: Option<PathBuf>,
    /// Run again on the hosts that ended so in the latest run in the
    /// results dir (`--results`, default ./pushrun-results), with the
    /// inventory and ssh config that run used.
    #[arg(long, value_name = "WHICH", conflicts_with_all = ["hosts", "wlist"])]
    pub rerun: Option<Rerun>,
    /// The most results a payload may bring back from one host, packed or
    /// unpacked (bytes, or with K, M, G, T: 1024 based); a host that sends
    /// more fails, the others go on.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = super::args::parse_size)]
    pub max_results: u64,
    /// Do not keep the payload cached on the hosts: it lives in the run dir and goes with it.
    #[arg(long)]
    pub no_cache: bool,
    /// Run with a pseudo terminal: `--pty` (fail where refused) or `--pty auto`
    /// (fall back). A PTY merges stdout and stderr. With --become, `auto` also
    /// lets sudo have the terminal it insists on (requiretty).
    #[arg(
        long,
        value_name = "MODE",
        num_args = 0..=1,
        default_missing_value = "yes",
        value_parser = onto::<PtyFlag, PtyMode>()
    )]
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
    /// Show each distinct output as a unified diff against the most common
    /// one, under the folded host lists (like clush --diff).
    #[arg(long, conflicts_with_all = ["json", "gather"])]
    pub diff: bool,
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
    /// Rolling run: waves of hosts.
    #[command(flatten)]
    pub waves: WaveArgs,
    /// The command: everything from the first word that is not an option
    /// (or after `--`); run by the login shell on each host. With
    /// --payload: the entry point's arguments.
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

/// `--pty`, as clap parses it; the variants' docs are its help.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum PtyFlag {
    /// No PTY (the default): separate stdout and stderr, no terminal.
    No,
    /// Always a PTY; a host whose server refuses one fails.
    Yes,
    /// A PTY where the server allows one, none elsewhere (noted in the summary).
    Auto,
}

impl From<PtyFlag> for PtyMode {
    fn from(flag: PtyFlag) -> PtyMode {
        match flag {
            PtyFlag::No => PtyMode::No,
            PtyFlag::Yes => PtyMode::Yes,
            PtyFlag::Auto => PtyMode::Auto,
        }
    }
}

/// Runs `pushrun exec`.
pub fn run(args: &ExecArgs) -> Result<Exit, Error> {
    run::run(args.plan()?)
}

impl ExecArgs {
    /// Checks everything and builds the plan.
    pub fn plan(&self) -> Result<Plan, Error> {
        let mut ssh = self.connect.check()?;
        let pty = self.pty_mode()?;
        let run_id = run::new_run_id();
        let (job, results) = self.job(&run_id)?;
        let (hosts, hops, selection) = match self.rerun {
            Some(which) => {
                let root = self.results.clone().unwrap_or_else(default_results);
                let again = rerun::again(which, &root)?;
                if ssh.config_file.is_none() {
                    ssh.config_file = again.ssh_config;
                }
                (again.hosts, again.hops, again.selection)
            }
            None => {
                let (hosts, hops, source) = self.select.selection()?;
                let config = self.connect.ssh_config.as_deref().map(std::path::absolute);
                let selection = serde_json::json!({
                    "source": source,
                    "ssh_config": config.and_then(Result::ok),
                });
                (hosts, hops, selection)
            }
        };
        let (hosts, hops) = (self.connect.apply(hosts), self.connect.apply(hops));
        self.check_hosts(&hosts, &job)?;
        let access = self.access(&hosts, &job)?;
        let waves = self.waves.waves(&hosts)?;
        let spec = RunSpec {
            job,
            timeout: self.timeout,
            pty,
            ssh,
            forks: self.connect.forks,
            access,
            converge: self.converged_timeout,
            repeat: self.repeat,
            max_results: self.max_results,
            watch: if self.watch {
                self.payload.clone()
            } else {
                None
            },
            waves,
        };
        Ok(Plan {
            hosts,
            spec,
            output: if self.diff {
                OutputMode::Diff
            } else {
                output_mode(self.gather, self.json)
            },
            results,
            run_id,
            hops,
            relay_binary: self.connect.relay_binary.clone(),
            selection,
        })
    }

    /// `--pty`, which goes with a command only.
    fn pty_mode(&self) -> Result<PtyMode, Error> {
        let pty = self.pty.unwrap_or(PtyMode::No);
        if pty != PtyMode::No && (self.payload.is_some() || self.command.is_empty()) {
            return Err(Error::Usage(
                "--pty goes with a command, not a payload (payloads never need a terminal)".into(),
            ));
        }
        Ok(pty)
    }

    /// What runs, and where its results go: a payload (`--payload`, or the
    /// built-in collector when there is no command either) or a command.
    fn job(&self, run_id: &str) -> Result<(Job, Option<PathBuf>), Error> {
        let payload = match (&self.payload, self.command.is_empty()) {
            (Some(dir), _) => Payload::load(dir)?,
            (None, true) => Payload::builtin(),
            (None, false) => return self.command_job(),
        };
        let job = PayloadJob::new(
            payload,
            self.command.clone(),
            !self.no_cache,
            run_id.to_string(),
        );
        if self.watch && self.payload.is_none() {
            return Err(Error::Usage(
                "--watch watches a payload dir: give --payload DIR".into(),
            ));
        }
        let results = self.results.clone().unwrap_or_else(default_results);
        Ok((Job::Payload(Arc::new(job)), Some(results)))
    }

    /// A command run, and where its results go, if anywhere.
    fn command_job(&self) -> Result<(Job, Option<PathBuf>), Error> {
        if self.no_cache {
            return Err(Error::Usage(
                "--no-cache goes with a payload, not a command".into(),
            ));
        }
        if self.repeat.is_some() || self.watch {
            return Err(Error::Usage(
                "--repeat and --watch go with a payload, not a command".into(),
            ));
        }
        // an unattended run keeps its log and results
        let results = match self.converged_timeout {
            Some(_) => Some(self.results.clone().unwrap_or_else(default_results)),
            None => self.results.clone(),
        };
        Ok((Job::Command(self.command.join(" ")), results))
    }

    /// What the flags ask of the selected hosts that they cannot do.
    fn check_hosts(&self, hosts: &[Host], job: &Job) -> Result<(), Error> {
        if self.watch && hosts.iter().any(|h| h.settings.via.is_some()) {
            return Err(Error::Usage(
                "--watch does not go through relays (via:): watch direct hosts, or run again"
                    .into(),
            ));
        }
        if let (Job::Payload(_), Some(Some(user))) = (job, &self.become_)
            && user != "root"
        {
            return Err(Error::Usage(format!(
                "--become {user} with a payload: payloads become root only (their files belong \
                 to the login user; collecting them needs root's rights); commands may become anyone"
            )));
        }
        if self.converged_timeout.is_some()
            && (self.connect.ask_pass || self.ask_become_pass)
            && std::io::IsTerminal::is_terminal(&std::io::stdin())
        {
            return Err(Error::Usage(
                "--converged-timeout runs unattended and never prompts: give passwords on \
                 stdin or through password_env / become_password_env"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Passwords (asked for now, if the flags say so) and sudo for each host.
    fn access(&self, hosts: &[Host], job: &Job) -> Result<Vec<Access>, Error> {
        let login = self.connect.login_password()?;
        let become_password = if self.ask_become_pass {
            Some(ask("sudo password: ", "--ask-become-pass")?)
        } else {
            None
        };
        let access = access_for(
            hosts,
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
            return Err(Error::Usage(format!(
                "host {}: become_user with a payload: payloads become root only (their files \
                 belong to the login user; collecting them needs root's rights)",
                h.name
            )));
        }
        Ok(access)
    }
}

/// Where results go when `--results` does not say.
fn default_results() -> PathBuf {
    "pushrun-results".into()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cmd::{Cli, Command};

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

    #[test]
    fn the_command_may_follow_without_dashes() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let Command::Exec(a) = cli.command else {
                panic!("not exec")
            };
            a
        };
        let a = parse(&[
            "pushrun",
            "exec",
            "-w",
            "web[1-3]",
            "-x",
            "web2",
            "-o",
            "Compression=yes",
            "uptime",
            "-x",
            "--all",
        ]);
        assert_eq!(a.command, ["uptime", "-x", "--all"]);
        assert_eq!(a.select.exclude, ["web2"]);
        assert_eq!(a.connect.ssh_option, ["Compression=yes"]);
        let a = parse(&["pushrun", "exec", "-w", "a", "--", "-weird", "arg"]);
        assert_eq!(a.command, ["-weird", "arg"]);
        let a = parse(&["pushrun", "exec", "--rerun", "not-ok", "--", "true"]);
        assert_eq!(a.rerun, Some(Rerun::NotOk));
        assert!(Cli::try_parse_from(["pushrun", "exec", "--rerun", "failed", "-w", "a"]).is_err());
    }
}
