//! The per-host state machine (connect → run → close), run for every
//! selected host with at most `--forks` hosts in flight.
//!
//! Each host is one task. It owns its connection, sends [`Event`]s and
//! never prints. Every wait it does has an end: the connect deadline, the
//! command timeout, or the run's cancellation (Ctrl-C), which all end the
//! remote command by closing its stdin (see `remote/exec.sh`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::events::{Event, HostId, HostOutcome, Status, Stream, Timings};
use crate::inventory::Host;
use crate::session::{ControlDir, NO_PTY_EXIT, Session, SshOptions, read_lines, write_ssh_config};

/// Whether commands get a pseudo terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PtyMode {
    /// No PTY (the default): separate stdout and stderr, no terminal.
    No,
    /// Always a PTY; a host whose server refuses one fails.
    Yes,
    /// A PTY where the server allows one, none elsewhere (noted in the summary).
    Auto,
}

/// Everything a host task needs to know about the run.
#[derive(Debug)]
pub struct RunSpec {
    /// The shell command to run on every host.
    pub command: String,
    /// Kill the command after this long.
    pub timeout: Option<Duration>,
    /// PTY policy.
    pub pty: PtyMode,
    /// ssh settings common to all hosts.
    pub ssh: SshOptions,
    /// How many hosts at once.
    pub forks: usize,
}

/// How long a command gets to end after its stdin was closed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs `spec` on every host, sending events on `events`; returns when every host is done.
pub async fn run(
    hosts: Arc<Vec<Host>>,
    spec: Arc<RunSpec>,
    dir: Arc<ControlDir>,
    events: mpsc::Sender<Event>,
    cancel: watch::Receiver<bool>,
) {
    let config = match write_ssh_config(&dir, &spec.ssh) {
        Ok(path) => Arc::new(path),
        Err(e) => {
            let why = format!("cannot write the run's ssh config: {e}");
            for id in 0..hosts.len() {
                let outcome = HostOutcome::without_exit(Status::Unreachable, why.clone(), Timings::default());
                let _ = events.send(Event::Finished(id, outcome)).await;
            }
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(spec.forks.max(1)));
    let mut tasks = JoinSet::new();
    for id in 0..hosts.len() {
        let (hosts, spec, dir, events, mut cancel, slots, config) =
            (hosts.clone(), spec.clone(), dir.clone(), events.clone(), cancel.clone(), slots.clone(), config.clone());
        tasks.spawn(async move {
            let permit = tokio::select! {
                p = slots.acquire_owned() => p.ok(),
                _ = cancelled(&mut cancel) => None,
            };
            let outcome = match permit {
                Some(_permit) => run_host(id, &hosts[id], &spec, &dir, &config, &events, cancel).await,
                None => HostOutcome::without_exit(Status::Cancelled, "interrupted before it started", Timings::default()),
            };
            let _ = events.send(Event::Finished(id, outcome)).await;
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Resolves once the run is cancelled (never, if the sender is gone without cancelling).
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn run_host(
    id: HostId,
    host: &Host,
    spec: &RunSpec,
    dir: &ControlDir,
    config: &Path,
    events: &mpsc::Sender<Event>,
    mut cancel: watch::Receiver<bool>,
) -> HostOutcome {
    let _ = events.send(Event::Connecting(id)).await;
    let started = Instant::now();
    let connected = tokio::select! {
        r = Session::connect(dir, config, id, host, &spec.ssh) => r,
        _ = cancelled(&mut cancel) => {
            return HostOutcome::without_exit(Status::Cancelled, "interrupted while connecting", Timings::default());
        }
    };
    let mut timings = Timings { connect: started.elapsed(), ..Timings::default() };
    let session = match connected {
        Ok(s) => s,
        Err(e) => return HostOutcome::without_exit(Status::Unreachable, e.message, timings),
    };
    let _ = events.send(Event::Connected(id)).await;
    let vars: Vec<(String, String)> =
        host.settings.vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let run_started = Instant::now();
    let mut notes = Vec::new();
    let mut result = match spec.pty {
        PtyMode::No => run_plain(id, &session, spec, &vars, events, &mut cancel).await,
        PtyMode::Yes | PtyMode::Auto => run_pty(id, &session, spec, &vars, events, &mut cancel).await,
    };
    if matches!(result, CommandEnd::NoPty) && spec.pty == PtyMode::Auto {
        notes.push("the server refused a PTY: ran without one".to_string());
        result = run_plain(id, &session, spec, &vars, events, &mut cancel).await;
    }
    timings.run = run_started.elapsed();
    session.close().await;
    let mut outcome = result.into_outcome(spec, timings);
    outcome.notes.extend(notes);
    outcome
}

/// How a command ended, before it becomes a [`HostOutcome`].
enum CommandEnd {
    Exited(i32),
    Signalled,
    TimedOut,
    Cancelled,
    NoPty,
    Lost(String),
}

impl CommandEnd {
    fn into_outcome(self, spec: &RunSpec, timings: Timings) -> HostOutcome {
        let (status, exit_code, reason) = match self {
            CommandEnd::Exited(0) => (Status::Ok, Some(0), None),
            CommandEnd::Exited(c) => (Status::Failed, Some(c), Some(format!("exit {c}"))),
            CommandEnd::Signalled => (Status::Failed, None, Some("killed by a signal".to_string())),
            CommandEnd::TimedOut => {
                let secs = spec.timeout.map(|t| t.as_secs_f64()).unwrap_or_default();
                (Status::TimedOut, None, Some(format!("killed after the {secs}s timeout")))
            }
            CommandEnd::Cancelled => (Status::Cancelled, None, Some("interrupted: command killed".to_string())),
            CommandEnd::NoPty => (
                Status::Failed,
                None,
                Some("the server refused a PTY (PermitTTY no?): run without --pty, or with --pty auto".to_string()),
            ),
            CommandEnd::Lost(why) => (Status::Unreachable, None, Some(format!("connection lost: {why}"))),
        };
        HostOutcome { status, exit_code, reason, notes: Vec::new(), timings }
    }
}

/// Waits for `work`, or stops it early on timeout or cancellation.
///
/// `stop` is called once to make the remote command end (it closes stdin or
/// kills the local ssh); then `work` gets [`STOP_GRACE`] to finish.
async fn supervise<W, S>(
    work: W,
    stop: S,
    timeout: Option<Duration>,
    cancel: &mut watch::Receiver<bool>,
) -> Result<CommandEnd, CommandEnd>
where
    W: Future<Output = CommandEnd>,
    S: FnOnce(),
{
    tokio::pin!(work);
    let limit = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let early = tokio::select! {
        end = &mut work => return Ok(end),
        _ = limit => CommandEnd::TimedOut,
        _ = cancelled(cancel) => CommandEnd::Cancelled,
    };
    stop();
    let _ = tokio::time::timeout(STOP_GRACE, &mut work).await;
    Err(early)
}

async fn run_plain(
    id: HostId,
    session: &Session,
    spec: &RunSpec,
    vars: &[(String, String)],
    events: &mpsc::Sender<Event>,
    cancel: &mut watch::Receiver<bool>,
) -> CommandEnd {
    let mut child = match session.spawn(&spec.command, vars).await {
        Ok(c) => c,
        Err(e) => return CommandEnd::Lost(e.to_string()),
    };
    let stdin = child.stdin().take();
    let stdout = child.stdout().take();
    let stderr = child.stderr().take();
    let work = async move {
        let out = async {
            if let Some(r) = stdout {
                let _ = read_lines(r, false, id, Stream::Stdout, events).await;
            }
        };
        let err = async {
            if let Some(r) = stderr {
                let _ = read_lines(r, false, id, Stream::Stderr, events).await;
            }
        };
        tokio::join!(out, err);
        match child.wait().await {
            Ok(status) => match status.code() {
                Some(c) => CommandEnd::Exited(c),
                None => CommandEnd::Signalled,
            },
            Err(openssh::Error::Remote(e)) if e.kind() == std::io::ErrorKind::NotFound => CommandEnd::Exited(127),
            Err(openssh::Error::RemoteProcessTerminated) => CommandEnd::Signalled,
            Err(e) => CommandEnd::Lost(error_chain(&e)),
        }
    };
    match supervise(work, move || drop(stdin), spec.timeout, cancel).await {
        Ok(end) | Err(end) => end,
    }
}

async fn run_pty(
    id: HostId,
    session: &Session,
    spec: &RunSpec,
    vars: &[(String, String)],
    events: &mpsc::Sender<Event>,
    cancel: &mut watch::Receiver<bool>,
) -> CommandEnd {
    let mut child = match session.spawn_pty(&spec.command, vars) {
        Ok(c) => c,
        Err(e) => return CommandEnd::Lost(format!("cannot start ssh: {e}")),
    };
    let _stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let pid = child.id();
    let work = async move {
        let out = async {
            if let Some(r) = stdout {
                let _ = read_lines(r, true, id, Stream::Stdout, events).await;
            }
        };
        // Only our wrapper and ssh itself write here: the remote command's
        // stderr goes to the terminal, which arrives on stdout.
        let err = async {
            let mut text = Vec::new();
            if let Some(mut r) = stderr {
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut r, &mut text).await;
            }
            text
        };
        let ((), err_text) = tokio::join!(out, err);
        match child.wait().await {
            Ok(status) => match status.code() {
                Some(NO_PTY_EXIT) if String::from_utf8_lossy(&err_text).contains("no pseudo terminal") => CommandEnd::NoPty,
                Some(255) => CommandEnd::Lost(String::from_utf8_lossy(&err_text).trim().to_string()),
                Some(c) => CommandEnd::Exited(c),
                None => CommandEnd::Signalled,
            },
            Err(e) => CommandEnd::Lost(e.to_string()),
        }
    };
    let stop = || {
        if let Some(pid) = pid {
            // SAFETY: kill(2) on our own ssh child; the master then closes the
            // channel and sshd hangs up the remote terminal.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    };
    match supervise(work, stop, spec.timeout, cancel).await {
        Ok(end) | Err(end) => end,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
