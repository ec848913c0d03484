//! One host's part of the run: connect (and try again, for unattended
//! runs), check sudo, run the job, close.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::{Job, PtyMode, RunSpec, Triggers, error_chain};

use crate::auth::{Become, Secret};
use crate::events::{Event, HostId, HostOutcome, Status, Stream, Timings};
use crate::inventory::Host;
use crate::remote::{self, SudoCheck, SudoVia, parse_sudo_check, sudo_boot};
use sha2::Sha256;

use crate::session::{ControlDir, Fed, Session};

use super::command::CommandEnd;
use super::connect::{Dial, connect};
use super::script_failure;

pub(super) async fn run_host(
    id: HostId,
    host: &Host,
    spec: &RunSpec,
    dir: &ControlDir,
    config: &Path,
    events: &mpsc::Sender<Event>,
    mut triggers: Triggers,
) -> HostOutcome {
    let _ = events.send(Event::Connecting(id)).await;
    let started = Instant::now();
    let access = spec.access(id);
    let dial = Dial {
        dir,
        slot: id,
        config,
        host,
        ssh: &spec.ssh,
        password: access.password.as_deref(),
        retry: spec.converge.is_some(),
        shown_as: id,
        relay: None,
    };
    let (cancel, converged) = (&mut triggers.cancel, &mut triggers.converged);
    let connected = connect(dial, events, cancel, converged).await;
    let timings = Timings {
        connect: started.elapsed(),
        ..Timings::default()
    };
    let session = match connected {
        Ok(session) => session,
        Err((status, reason)) => return HostOutcome::without_exit(status, reason, timings),
    };
    let _ = events.send(Event::Connected(id)).await;
    let sudo = match (&access.become_, &spec.job) {
        (Some(become_), Job::Command(_) | Job::Payload(_) | Job::Copy(_) | Job::Fetch(_)) => {
            match check_sudo(&session, host, become_).await {
                Ok(how) => Some((become_.clone(), how)),
                Err(why) => {
                    session.close().await;
                    return HostOutcome::without_exit(Status::Failed, why, timings);
                }
            }
        }
        _ => None,
    };
    let mut task = HostTask {
        id,
        host,
        session: &session,
        events,
        triggers,
        sudo,
        pty_auto: access.pty_auto,
    };
    let mut outcome = match &spec.job {
        Job::Command(command) => task.run_command(command, spec, timings).await,
        Job::Payload(job) => task.run_payloads(job, spec, timings).await,
        Job::Clean => task.clean(timings).await,
        Job::Copy(job) => task.copy(job, spec.timeout, timings).await,
        Job::Fetch(job) => task.fetch(job, spec.timeout, timings).await,
    };
    // once per host and run, however many channels dropped it
    outcome.notes.extend(session.login_noise_note());
    session.close().await;
    outcome
}

/// One connected host's part of the run.
pub(super) struct HostTask<'a> {
    pub(super) id: HostId,
    pub(super) host: &'a Host,
    pub(super) session: &'a Session,
    pub(super) events: &'a mpsc::Sender<Event>,
    pub(super) triggers: Triggers,
    /// Whom to become and how sudo takes it, when the job goes through sudo.
    pub(super) sudo: Option<(Become, SudoCheck)>,
    /// A PTY may be used where sudo insists on one.
    pub(super) pty_auto: bool,
}

/// Asks the host how sudo lets the login user become `become_.user`.
pub(super) async fn check_sudo(
    session: &Session,
    host: &Host,
    become_: &Become,
) -> Result<SudoCheck, String> {
    let mode = if become_.password.is_some() {
        "password"
    } else {
        "none"
    };
    let input = match &become_.password {
        Some(p) => format!("{}\n", p.expose()).into_bytes(),
        None => Vec::new(),
    };
    let out = session
        .run_script(
            remote::BECOME,
            "pushrun-become",
            &[&become_.user, mode],
            &input,
        )
        .await
        .map_err(|e| format!("connection lost: {}", error_chain(&e)))?;
    let login = host.settings.user.as_deref().unwrap_or("");
    match parse_sudo_check(&out.stdout, &out.stderr, login) {
        SudoCheck::Refused(why) => Err(why),
        how => Ok(how),
    }
}

/// How a command line is to be started on a host.
pub(super) struct Launch {
    /// The remote command line.
    pub(super) line: String,
    /// Written to its stdin first: sudo's password for `sudo -S`, then the
    /// script (see `remote::start`); on a PTY, the script once the terminal
    /// has shown the frame marker (`remote::start_pty`).
    pub(super) stdin_first: Option<Vec<u8>>,
    /// Through a PTY (sudo's requiretty).
    pub(super) pty: bool,
    /// Answer sudo's prompt on the PTY with this.
    pub(super) answer: Option<Arc<Secret>>,
    /// Hash its stdout here (payload runs under --repeat and --watch).
    pub(super) hash: Option<Arc<std::sync::Mutex<Sha256>>>,
}

impl<'a> HostTask<'a> {
    /// Starts a gated launch (not a PTY): its streams after the frame
    /// marker, and the feeder of its stdin (see `Session::spawn_fed`).
    pub(super) async fn start_fed(&self, launch: Launch) -> Result<Fed<'a>, openssh::Error> {
        let first = launch.stdin_first.unwrap_or_default();
        let session: &'a Session = self.session;
        session.spawn_fed(launch.line, first).await
    }
}

impl HostTask<'_> {
    /// The inventory's `vars` for this host.
    pub(super) fn vars(&self) -> Vec<(String, String)> {
        self.host
            .settings
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// How to start `script` on this host: through sudo when the job
    /// becomes another user, through a PTY when asked (`pty`) or when sudo
    /// insists on one (and `pty_ok`).
    pub(super) fn launch(
        &self,
        (script, name, args): (&str, &str, &[String]),
        vars: &[(String, String)],
        pty: bool,
        pty_ok: bool,
    ) -> Result<Launch, String> {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        // The script travels on stdin behind a fixed line. Nothing is
        // written after it before its frame marker (run_streamed), so it is
        // read in one go. On a PTY (whose stdin is a terminal) it is written
        // once the line has made the terminal raw and said so with the
        // marker (run_pty), and a payload's run keeps the echo off: it must
        // not show the "stop" line pushrun may write.
        let pty_start = |pty: bool| {
            if pty {
                // (a command on a terminal is pty.sh's: run_command)
                remote::start_pty(script, name, &refs, vars, script == remote::RUN)
            } else if script == remote::EXEC {
                remote::start_exec(&refs, vars)
            } else {
                remote::start_gated(script, name, &refs, vars)
            }
        };
        let Some((become_, how)) = &self.sudo else {
            let start = pty_start(pty);
            return Ok(Launch {
                line: start.line(),
                stdin_first: Some(start.preamble),
                pty,
                answer: None,
                hash: None,
            });
        };
        let needs_tty = *how == SudoCheck::NeedsTty;
        if needs_tty && !pty_ok {
            return Err(
                "sudo requires a terminal on this host (Defaults requiretty): run with \
                        --pty auto, or set pty: auto for the host in the inventory"
                    .into(),
            );
        }
        let pty = pty || needs_tty;
        let password = become_.password.clone();
        let via = match (how, pty) {
            (SudoCheck::NoPassword, _) => SudoVia::Nothing,
            (_, true) => SudoVia::Prompt,
            (_, false) => SudoVia::Stdin,
        };
        let mut first = match (via, &password) {
            (SudoVia::Stdin, Some(p)) => format!("{}\n", p.expose()).into_bytes(),
            _ => Vec::new(),
        };
        let start = pty_start(pty);
        first.extend_from_slice(&start.preamble);
        let line = sudo_boot(&start.boot, &become_.user, via);
        Ok(Launch {
            line,
            stdin_first: (!first.is_empty()).then_some(first),
            pty,
            answer: if via == SudoVia::Prompt {
                password
            } else {
                None
            },
            hash: None,
        })
    }

    pub(super) async fn run_command(
        &mut self,
        command: &str,
        spec: &RunSpec,
        mut timings: Timings,
    ) -> HostOutcome {
        let vars = self.vars();
        let run_started = Instant::now();
        let mut notes = Vec::new();
        let args = [command.to_string()];
        // exec.sh may run a plain command's words without a second login shell
        let words: Vec<String> = std::iter::once(command)
            .chain(remote::plain_words(command).unwrap_or_default())
            .map(str::to_string)
            .collect();
        let wants_pty = spec.pty != PtyMode::No;
        let pty_ok = wants_pty || self.pty_auto;
        let script = if wants_pty || matches!(self.sudo, Some((_, SudoCheck::NeedsTty))) {
            (remote::PTY, "pushrun-pty", &args[..])
        } else {
            (remote::EXEC, "pushrun-exec", &words[..])
        };
        let mut result = match self.launch(script, &vars, wants_pty, pty_ok) {
            Ok(launch) => self.run_launch(launch, false, spec.timeout).await,
            Err(why) => CommandEnd::Refused(why),
        };
        if matches!(result, CommandEnd::NoPty) && spec.pty == PtyMode::Auto {
            notes.push("the server refused a PTY: ran without one".to_string());
            let script = (remote::EXEC, "pushrun-exec", &words[..]);
            result = match self.launch(script, &vars, false, false) {
                Ok(launch) => self.run_launch(launch, false, spec.timeout).await,
                Err(why) => CommandEnd::Refused(why),
            };
        }
        timings.run = run_started.elapsed();
        let mut outcome = result.into_outcome(spec.timeout, timings);
        outcome.notes.extend(notes);
        outcome
    }

    /// `pushrun clean` on one host: its answer becomes the host's output line.
    pub(super) async fn clean(&self, mut timings: Timings) -> HostOutcome {
        let (id, host, session, events) = (self.id, self.host, self.session, self.events);
        let started = Instant::now();
        // "auto": every temp dir that a check may have picked (see lib.sh)
        let remote_tmp = host.settings.remote_tmp.as_deref().unwrap_or("auto");
        let out = session
            .run_script(remote::CLEAN, "pushrun-clean", &[remote_tmp], b"")
            .await;
        timings.clean = started.elapsed();
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                return HostOutcome::without_exit(
                    Status::Unreachable,
                    format!("connection lost: {}", error_chain(&e)),
                    timings,
                );
            }
        };
        if let Some(reason) = remote::error_line(&out.stdout) {
            return HostOutcome::without_exit(Status::Failed, reason, timings);
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let line = line.as_bytes().to_vec();
            let _ = events
                .send(Event::Output {
                    host: id,
                    stream: Stream::Stdout,
                    line,
                    complete: true,
                })
                .await;
        }
        match out.code {
            Some(0) => HostOutcome::ok(timings),
            _ => HostOutcome::without_exit(
                Status::Failed,
                script_failure("clean failed".into(), &out),
                timings,
            ),
        }
    }
}
