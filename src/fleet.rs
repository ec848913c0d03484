//! The per-host state machine (connect → run → close), run for every
//! selected host with at most `--forks` hosts in flight.
//!
//! Each host is one task. It owns its connection, sends [`Event`]s and
//! never prints. Every wait it does has an end: the connect deadline, the
//! command timeout, or the run's cancellation (Ctrl-C), which all end the
//! remote command by closing its stdin (see `remote/exec.sh`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::auth::{
    Access, Become, SUDO_PROMPT, Secret, SudoCheck, SudoVia, parse_sudo_check, sudo_line,
};
use crate::events::{Event, HostId, HostOutcome, StageStats, Status, Stream, Timings};
use crate::inventory::Host;
use crate::payload::Payload;
use crate::remote;
use sha2::{Digest, Sha256};

use crate::session::{
    ConnectFailure, ControlDir, LineSplitter, NO_PTY_EXIT, Session, SshOptions, exit_code,
    read_lines, remote_line, write_ssh_config,
};

/// Whether commands get a pseudo terminal.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PtyMode {
    /// No PTY (the default): separate stdout and stderr, no terminal.
    No,
    /// Always a PTY; a host whose server refuses one fails.
    Yes,
    /// A PTY where the server allows one, none elsewhere (noted in the summary).
    Auto,
}

/// What runs on every host.
#[derive(Debug)]
pub enum Job {
    /// A shell command, run by the login shell.
    Command(String),
    /// A payload, staged into the host's cache and run from there.
    Payload(Arc<PayloadJob>),
    /// Remove pushrun's directory from the host (`pushrun clean`).
    Clean,
}

/// A payload run.
#[derive(Debug)]
pub struct PayloadJob {
    /// The payload, its manifest built once for the whole run.
    pub payload: Payload,
    /// Arguments for the entry point.
    pub args: Vec<String>,
    /// Keep the payload in the host's cache (else it lives in the run dir).
    pub cache: bool,
    /// This run's id (names the run dir on hosts and the results dir).
    pub run_id: String,
    /// The whole payload as one archive, built once, for every cold host.
    full_archive: tokio::sync::OnceCell<Arc<Vec<u8>>>,
}

impl PayloadJob {
    /// A payload run.
    pub fn new(payload: Payload, args: Vec<String>, cache: bool, run_id: String) -> PayloadJob {
        PayloadJob {
            payload,
            args,
            cache,
            run_id,
            full_archive: tokio::sync::OnceCell::new(),
        }
    }

    /// The archive of `paths`; the whole payload's is built once and shared.
    async fn archive(self: &Arc<Self>, paths: &[String]) -> Result<Arc<Vec<u8>>, String> {
        if paths.len() == self.payload.entries().len() {
            let job = self.clone();
            let built = self
                .full_archive
                .get_or_try_init(|| async move {
                    tokio::task::spawn_blocking(move || {
                        job.payload
                            .tar_gz_all()
                            .map(Arc::new)
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .map_err(|e| e.to_string())?
                })
                .await?;
            return Ok(built.clone());
        }
        let job = self.clone();
        let paths = paths.to_vec();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
            job.payload
                .tar_gz(&refs)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// Everything a host task needs to know about the run.
#[derive(Debug)]
pub struct RunSpec {
    /// What to run.
    pub job: Job,
    /// Kill the command after this long.
    pub timeout: Option<Duration>,
    /// PTY policy.
    pub pty: PtyMode,
    /// ssh settings common to all hosts.
    pub ssh: SshOptions,
    /// How many hosts at once.
    pub forks: usize,
    /// Passwords and sudo, host by host (indexed like the hosts; missing
    /// entries mean nothing special).
    pub access: Vec<Access>,
    /// Unattended: end the run once no host has been active for this long
    /// (`--converged-timeout`); unreachable hosts are retried until then.
    pub converge: Option<Duration>,
    /// Run the payload again this long after each run ends (`--repeat`).
    pub repeat: Option<Duration>,
    /// Watch this payload dir and re-run on every host when it changes (`--watch`).
    pub watch: Option<PathBuf>,
}

impl RunSpec {
    /// Host `id`'s passwords and sudo.
    pub(crate) fn access(&self, id: HostId) -> Access {
        self.access.get(id).cloned().unwrap_or_default()
    }
}

/// The longest wait between two tries of an unreachable host (--converged-timeout).
pub(crate) const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Whether a host that could not be connected may answer a later try:
/// wrong credentials and host keys will not change by themselves.
pub(crate) fn worth_retrying(e: &crate::session::ConnectError) -> bool {
    !matches!(
        e.kind,
        ConnectFailure::Authentication | ConnectFailure::HostKey | ConnectFailure::HostKeyChanged
    )
}

/// The reason of a run stopped because its payload changed (--watch).
const RESTARTED: &str = "restarted: the payload changed";

/// How long a command gets to end after its stdin was closed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs `spec` on every host, sending events on `events`; returns when every host is done.
///
/// `converged` is raised when the whole run has converged (see
/// [`converge`]): what still runs is stopped and collected.
pub async fn run(
    hosts: Arc<Vec<Host>>,
    spec: Arc<RunSpec>,
    dir: Arc<ControlDir>,
    events: mpsc::Sender<Event>,
    cancel: watch::Receiver<bool>,
    converged: watch::Receiver<bool>,
) {
    let config = match write_ssh_config(&dir, &spec.ssh) {
        Ok(path) => Arc::new(path),
        Err(e) => {
            let why = format!("cannot write the run's ssh config: {e}");
            for id in 0..hosts.len() {
                let outcome =
                    HostOutcome::without_exit(Status::Unreachable, why.clone(), Timings::default());
                let _ = events.send(Event::Finished(id, outcome)).await;
            }
            return;
        }
    };
    let jobs = match (&spec.job, &spec.watch) {
        (Job::Payload(job), Some(dir)) => {
            let (tx, rx) = watch::channel(job.clone());
            tokio::spawn(watch_payload(dir.clone(), job.clone(), tx));
            Some(rx)
        }
        _ => None,
    };
    let slots = Arc::new(Semaphore::new(spec.forks.max(1)));
    let mut tasks = JoinSet::new();
    for id in 0..hosts.len() {
        let (hosts, spec, dir, events, slots, config) = (
            hosts.clone(),
            spec.clone(),
            dir.clone(),
            events.clone(),
            slots.clone(),
            config.clone(),
        );
        let mut triggers = Triggers {
            cancel: cancel.clone(),
            converged: converged.clone(),
            reload: jobs.clone(),
        };
        tasks.spawn(async move {
            let permit = tokio::select! {
                p = slots.acquire_owned() => p.ok(),
                _ = raised(&mut triggers.cancel) => None,
                _ = raised(&mut triggers.converged) => None,
            };
            let outcome = match permit {
                Some(_permit) => {
                    run_host(id, &hosts[id], &spec, &dir, &config, &events, triggers).await
                }
                None if *triggers.converged.borrow() => HostOutcome::without_exit(
                    Status::Unreachable,
                    "not started before the run converged",
                    Timings::default(),
                ),
                None => HostOutcome::without_exit(
                    Status::Cancelled,
                    "interrupted before it started",
                    Timings::default(),
                ),
            };
            let _ = events.send(Event::Finished(id, outcome)).await;
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Passes every event from `from` on to `to`, and raises `converged` once
/// no host has been active for `quiet` (`--converged-timeout`). Runs until
/// `from` ends. It sits where the events of the whole run meet, relays'
/// subtrees included, so convergence is the whole tree's.
pub async fn converge(
    mut from: mpsc::Receiver<Event>,
    to: mpsc::Sender<Event>,
    quiet: Duration,
    repeating: bool,
    converged: watch::Sender<bool>,
) {
    let mut last_activity = tokio::time::Instant::now();
    let mut done = false;
    loop {
        tokio::select! {
            ev = from.recv() => {
                let Some(ev) = ev else { break };
                if is_activity(&ev, repeating) {
                    last_activity = tokio::time::Instant::now();
                }
                let _ = to.send(ev).await;
            }
            _ = tokio::time::sleep_until(last_activity + quiet), if !done => {
                done = true;
                let _ = converged.send(true);
            }
        }
    }
}

/// Runs `work`, saying every second that host `id` is [`Event::Busy`].
pub(crate) async fn busy<F: Future>(
    work: F,
    id: HostId,
    events: &mpsc::Sender<Event>,
) -> F::Output {
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                let _ = events.send(Event::Busy(id)).await;
            }
        }
    }
}

/// Whether an event shows a host active, for --converged-timeout: its state
/// changed, it wrote output or a record, or (repeating) a run's results
/// differed from the previous run's — a repeated run's output alone is not.
fn is_activity(event: &Event, repeating: bool) -> bool {
    match event {
        Event::Output { .. } => !repeating,
        Event::Repeated { changed, .. } => *changed,
        Event::Collected(..) => false,
        Event::Connecting(_)
        | Event::Busy(_)
        | Event::Connected(_)
        | Event::Finished(..)
        | Event::Record(..)
        | Event::Retrying { .. } => true,
    }
}

/// Watches a payload dir; publishes the payload again whenever its digest changes.
async fn watch_payload(dir: PathBuf, first: Arc<PayloadJob>, jobs: watch::Sender<Arc<PayloadJob>>) {
    use notify::Watcher;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        let _ = tx.send(e.is_ok());
    });
    let Ok(mut watcher) = watcher else { return };
    if watcher
        .watch(&dir, notify::RecursiveMode::Recursive)
        .is_err()
    {
        return;
    }
    let mut digest = first.payload.digest().to_string();
    while rx.recv().await.is_some() {
        // let a burst of writes (an editor saving) settle
        loop {
            tokio::select! {
                more = rx.recv() => if more.is_none() { return },
                _ = tokio::time::sleep(Duration::from_millis(200)) => break,
            }
        }
        if jobs.is_closed() {
            return;
        }
        let load = dir.clone();
        let Ok(Ok(payload)) = tokio::task::spawn_blocking(move || Payload::load(&load)).await
        else {
            continue; // half-written, or broken for now: the next change will tell
        };
        if payload.digest() == digest {
            continue;
        }
        digest = payload.digest().to_string();
        let job = PayloadJob::new(
            payload,
            first.args.clone(),
            first.cache,
            first.run_id.clone(),
        );
        if jobs.send(Arc::new(job)).is_err() {
            return;
        }
    }
}

/// What can end a host's command early, besides its timeout.
struct Triggers {
    /// Ctrl-C.
    cancel: watch::Receiver<bool>,
    /// The run converged (--converged-timeout).
    converged: watch::Receiver<bool>,
    /// A new version of the payload (--watch).
    reload: Option<watch::Receiver<Arc<PayloadJob>>>,
}

/// Resolves once the payload changes (never without --watch).
async fn reloaded(reload: &mut Option<watch::Receiver<Arc<PayloadJob>>>) {
    match reload {
        Some(r) => {
            if r.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Resolves once the flag is raised (never, if the sender is gone without raising it).
pub(crate) async fn raised(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|c| *c).await.is_err() {
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
    mut triggers: Triggers,
) -> HostOutcome {
    let _ = events.send(Event::Connecting(id)).await;
    let started = Instant::now();
    let access = spec.access(id);
    let mut delay = Duration::from_secs(1);
    let mut tries = 0;
    let session = loop {
        tries += 1;
        let connected = tokio::select! {
            r = busy(Session::connect(dir, config, id, host, &spec.ssh, access.password.as_deref()), id, events) => r,
            _ = raised(&mut triggers.cancel) => {
                return HostOutcome::without_exit(Status::Cancelled, "interrupted while connecting", Timings::default());
            }
            _ = raised(&mut triggers.converged) => {
                return HostOutcome::without_exit(Status::Unreachable, "never reached: the run converged while connecting", Timings::default());
            }
        };
        let timings = Timings {
            connect: started.elapsed(),
            ..Timings::default()
        };
        let e = match connected {
            Ok(s) => break s,
            Err(e) => e,
        };
        // Unattended runs try again, later and later, until they converge.
        let retry = spec.converge.is_some() && worth_retrying(&e);
        if !retry {
            return HostOutcome::without_exit(Status::Unreachable, e.message, timings);
        }
        let _ = events
            .send(Event::Retrying {
                host: id,
                reason: e.message.clone(),
                delay,
            })
            .await;
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = raised(&mut triggers.cancel) => {
                return HostOutcome::without_exit(Status::Cancelled, "interrupted while retrying", timings);
            }
            _ = raised(&mut triggers.converged) => {
                let why = format!("never reached ({tries} tries): {}", e.message);
                return HostOutcome::without_exit(Status::Unreachable, why, timings);
            }
        }
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    };
    let timings = Timings {
        connect: started.elapsed(),
        ..Timings::default()
    };
    let _ = events.send(Event::Connected(id)).await;
    let sudo = match (&access.become_, &spec.job) {
        (Some(become_), Job::Command(_) | Job::Payload(_)) => {
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
    let outcome = match &spec.job {
        Job::Command(command) => task.run_command(command, spec, timings).await,
        Job::Payload(job) => task.run_payloads(job, spec, timings).await,
        Job::Clean => task.clean(timings).await,
    };
    session.close().await;
    outcome
}

/// One connected host's part of the run.
struct HostTask<'a> {
    id: HostId,
    host: &'a Host,
    session: &'a Session,
    events: &'a mpsc::Sender<Event>,
    triggers: Triggers,
    /// Whom to become and how sudo takes it, when the job goes through sudo.
    sudo: Option<(Become, SudoCheck)>,
    /// A PTY may be used where sudo insists on one.
    pty_auto: bool,
}

/// Asks the host how sudo lets the login user become `become_.user`.
async fn check_sudo(session: &Session, host: &Host, become_: &Become) -> Result<SudoCheck, String> {
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
struct Launch {
    /// The remote command line.
    line: String,
    /// Written to its stdin first (sudo's password for `sudo -S`).
    stdin_first: Option<Vec<u8>>,
    /// Through a PTY (sudo's requiretty).
    pty: bool,
    /// Answer sudo's prompt on the PTY with this.
    answer: Option<Arc<Secret>>,
    /// Hash its stdout here (payload runs under --repeat and --watch).
    hash: Option<Arc<std::sync::Mutex<Sha256>>>,
}

impl HostTask<'_> {
    /// The inventory's `vars` for this host.
    fn vars(&self) -> Vec<(String, String)> {
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
    fn launch(
        &self,
        (script, name, args): (&str, &str, &[String]),
        vars: &[(String, String)],
        pty: bool,
        pty_ok: bool,
    ) -> Result<Launch, String> {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let inner = remote_line(script, name, &refs, vars);
        let Some((become_, how)) = &self.sudo else {
            return Ok(Launch {
                line: inner,
                stdin_first: None,
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
        // A payload's run under a PTY: the terminal must not echo the "stop" line.
        let inner = if pty && script == remote::RUN {
            format!("stty -echo 2>/dev/null; {inner}")
        } else {
            inner
        };
        Ok(Launch {
            line: sudo_line(&inner, &become_.user, via),
            stdin_first: match (via, &password) {
                (SudoVia::Stdin, Some(p)) => Some(format!("{}\n", p.expose()).into_bytes()),
                _ => None,
            },
            pty,
            answer: if via == SudoVia::Prompt {
                password
            } else {
                None
            },
            hash: None,
        })
    }

    async fn run_command(
        &mut self,
        command: &str,
        spec: &RunSpec,
        mut timings: Timings,
    ) -> HostOutcome {
        let vars = self.vars();
        let run_started = Instant::now();
        let mut notes = Vec::new();
        let args = [command.to_string()];
        let wants_pty = spec.pty != PtyMode::No;
        let pty_ok = wants_pty || self.pty_auto;
        let script = if wants_pty || matches!(self.sudo, Some((_, SudoCheck::NeedsTty))) {
            (remote::PTY, "pushrun-pty", &args[..])
        } else {
            (remote::EXEC, "pushrun-exec", &args[..])
        };
        let mut result = match self.launch(script, &vars, wants_pty, pty_ok) {
            Ok(launch) => self.run_launch(launch, false, spec.timeout).await,
            Err(why) => CommandEnd::Refused(why),
        };
        if matches!(result, CommandEnd::NoPty) && spec.pty == PtyMode::Auto {
            notes.push("the server refused a PTY: ran without one".to_string());
            let script = (remote::EXEC, "pushrun-exec", &args[..]);
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

    async fn run_launch(
        &mut self,
        launch: Launch,
        keep_on_timeout: bool,
        timeout: Option<Duration>,
    ) -> CommandEnd {
        if launch.pty {
            self.run_pty(launch, keep_on_timeout, timeout).await
        } else {
            self.run_streamed(launch, keep_on_timeout, timeout).await
        }
    }

    /// A payload on one host: once, or again and again with --repeat and
    /// --watch until the run converges or is interrupted.
    async fn run_payloads(
        &mut self,
        first: &Arc<PayloadJob>,
        spec: &RunSpec,
        timings: Timings,
    ) -> HostOutcome {
        let looping = spec.repeat.is_some() || self.triggers.reload.is_some();
        if !looping {
            return self.run_payload(first, spec, timings).await.outcome;
        }
        let mut job = first.clone();
        let mut previous: Option<[u8; 32]> = None;
        let mut run = 0u32;
        // A run under way when the whole run converges gets the quiet time
        // again to end by itself (repeating, its output was not activity),
        // so runs do not see convergence themselves; this loop does.
        let (_, never) = watch::channel(false);
        let mut converged = std::mem::replace(&mut self.triggers.converged, never);
        let grace = spec.converge.unwrap_or_default();
        loop {
            run += 1;
            let ran = {
                let this_run = self.run_payload(&job, spec, timings);
                let late = async {
                    raised(&mut converged).await;
                    tokio::time::sleep(grace).await;
                };
                tokio::select! {
                    r = this_run => Some(r),
                    _ = late => None,
                }
            };
            let PayloadRun {
                mut outcome,
                digest,
                restarted,
            } = match ran {
                Some(r) => r,
                None => {
                    let why = format!(
                        "run {run} was still under way {}s after the run converged: stopped",
                        grace.as_secs_f64()
                    );
                    let mut o = HostOutcome::without_exit(Status::Stopped, why, timings);
                    o.notes.push(format!("{run} runs"));
                    return o;
                }
            };
            if restarted {
                job = self.next_job(&job);
                continue;
            }
            let changed = digest.is_none() || digest != previous;
            previous = digest;
            let _ = self
                .events
                .send(Event::Repeated {
                    host: self.id,
                    run,
                    changed,
                    status: outcome.status,
                })
                .await;
            if matches!(
                outcome.status,
                Status::Stopped | Status::Cancelled | Status::Unreachable
            ) {
                outcome.notes.push(format!("{run} runs"));
                return outcome;
            }
            let t = &mut self.triggers;
            let again = async {
                match spec.repeat {
                    Some(every) => tokio::time::sleep(every).await,
                    None => std::future::pending().await,
                }
            };
            let go_on = tokio::select! {
                _ = again => true,
                _ = reloaded(&mut t.reload) => true,
                _ = raised(&mut converged) => false,
                _ = raised(&mut t.cancel) => false,
            };
            if !go_on {
                outcome.notes.push(format!("{run} runs"));
                return outcome;
            }
            job = self.next_job(&job);
        }
    }

    /// The payload to run next: the newest one (--watch), else the same.
    fn next_job(&mut self, current: &Arc<PayloadJob>) -> Arc<PayloadJob> {
        match &mut self.triggers.reload {
            Some(r) => r.borrow_and_update().clone(),
            None => current.clone(),
        }
    }

    /// Stage, run, collect, clean: a payload on one host. Also returns a
    /// digest of the run's stdout and `$PUSHRUN_OUT` when looping.
    async fn run_payload(
        &mut self,
        job: &Arc<PayloadJob>,
        spec: &RunSpec,
        mut timings: Timings,
    ) -> PayloadRun {
        let (id, host, session, events) = (self.id, self.host, self.session, self.events);
        let looping = spec.repeat.is_some() || self.triggers.reload.is_some();
        let mut vars = self.vars();
        let started = Instant::now();
        let mut stats = StageStats::default();
        let t = &mut self.triggers;
        let staged = tokio::select! {
            r = busy(stage(session, host, job, &mut stats), id, events) => r,
            _ = raised(&mut t.cancel) => Err(StageError::Cancelled),
            _ = raised(&mut t.converged) => Err(StageError::Converged),
        };
        timings.stage = started.elapsed();
        let (base, payload_dir) = match staged {
            Ok(s) => s,
            Err(e) => {
                let (status, reason) = match e {
                    StageError::Cancelled => {
                        (Status::Cancelled, "interrupted while staging".into())
                    }
                    StageError::Converged => {
                        (Status::Stopped, "the run converged while staging".into())
                    }
                    StageError::Failed { reason, base } => {
                        if let Some(base) = base {
                            clean_run_dir(session, &base, &job.run_id).await;
                        }
                        (Status::Failed, format!("stage: {reason}"))
                    }
                    StageError::Lost(why) => {
                        (Status::Unreachable, format!("connection lost: {why}"))
                    }
                };
                let mut outcome = HostOutcome::without_exit(status, reason, timings);
                outcome.stage = Some(stats);
                return PayloadRun {
                    outcome,
                    digest: None,
                    restarted: false,
                };
            }
        };

        // The payload's own env first; the inventory's vars are more specific and win.
        let mut env: Vec<(String, String)> = job
            .payload
            .env()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.retain(|(k, _)| !vars.iter().any(|(v, _)| v == k));
        env.append(&mut vars);
        let mut notes = Vec::new();
        let remote_socket = format!("{base}/runs/{}/tunnel.sock", job.run_id);
        let tunnel = match session.open_tunnel(&remote_socket).await {
            Ok(tunnel) => {
                env.push(("PUSHRUN_TUNNEL".into(), remote_socket));
                Some(tunnel.serve(id, events.clone()))
            }
            Err(why) => {
                notes.push(format!("no tunnel: {why}"));
                None
            }
        };
        let mut args = vec![
            base.clone(),
            payload_dir,
            job.run_id.clone(),
            host.name.clone(),
            job.payload.entry().to_string(),
        ];
        args.extend(job.args.iter().cloned());
        let timeout = spec.timeout.or(job.payload.timeout());
        let run_started = Instant::now();
        let hash = looping.then(|| Arc::new(std::sync::Mutex::new(Sha256::new())));
        let end = match self.launch(
            (remote::RUN, "pushrun-run", &args),
            &env,
            false,
            self.pty_auto,
        ) {
            Ok(launch) => {
                let launch = Launch {
                    hash: hash.clone(),
                    ..launch
                };
                self.run_launch(launch, true, timeout).await
            }
            Err(why) => {
                clean_run_dir(session, &base, &job.run_id).await;
                CommandEnd::Refused(why)
            }
        };
        timings.run = run_started.elapsed();
        // every record written before the payload ended arrives before its end
        if let Some(tunnel) = tunnel {
            tunnel.finish(session).await;
        }

        // After a cancel or a lost connection the run dir is gone already
        // (run.sh removes it when its stdin closes); otherwise, timeouts and
        // convergence included, bring back $PUSHRUN_OUT, which also removes it.
        let mut digest = None;
        let restarted = matches!(end, CommandEnd::Reloaded);
        let mut outcome = match end {
            CommandEnd::Exited(_)
            | CommandEnd::Signalled
            | CommandEnd::TimedOut
            | CommandEnd::Converged => {
                let collect_started = Instant::now();
                match collect(session, &base, &job.run_id).await {
                    Ok((archive, streamed)) => {
                        timings.collect = streamed;
                        timings.clean = collect_started.elapsed().saturating_sub(streamed);
                        stats.bytes_received += archive.len() as u64;
                        if let Some(hash) = &hash {
                            let mut h = hash.lock().map(|h| h.clone()).unwrap_or_default();
                            h.update(results_digest(&archive));
                            digest = Some(h.finalize().into());
                        }
                        let _ = events.send(Event::Collected(id, archive)).await;
                        end.into_outcome(timeout, timings)
                    }
                    Err(why) => {
                        timings.collect = collect_started.elapsed();
                        let mut o = end.into_outcome(timeout, timings);
                        o.status = Status::Failed;
                        o.reason = Some(format!("collect: {why}"));
                        o
                    }
                }
            }
            other => other.into_outcome(timeout, timings),
        };
        outcome.stage = Some(stats);
        outcome.notes.extend(notes);
        PayloadRun {
            outcome,
            digest,
            restarted,
        }
    }

    /// `pushrun clean` on one host: its answer becomes the host's output line.
    async fn clean(&self, mut timings: Timings) -> HostOutcome {
        let (id, host, session, events) = (self.id, self.host, self.session, self.events);
        let started = Instant::now();
        let remote_tmp = host.settings.remote_tmp.as_deref().unwrap_or("/tmp");
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
            Some(0) => HostOutcome {
                status: Status::Ok,
                exit_code: Some(0),
                reason: None,
                notes: Vec::new(),
                timings,
                stage: None,
            },
            _ => HostOutcome::without_exit(
                Status::Failed,
                script_failure("clean failed".into(), &out),
                timings,
            ),
        }
    }

    /// Runs a remote command line with its output streamed as events,
    /// stopping it on timeout or cancellation by closing its stdin.
    async fn run_streamed(
        &mut self,
        launch: Launch,
        keep_on_timeout: bool,
        timeout: Option<Duration>,
    ) -> CommandEnd {
        let (id, session, events) = (self.id, self.session, self.events);
        let mut child = match session.spawn_line(launch.line).await {
            Ok(c) => c,
            Err(e) => return CommandEnd::Lost(error_chain(&e)),
        };
        let mut stdin = child.stdin().take();
        if let (Some(first), Some(w)) = (&launch.stdin_first, stdin.as_mut()) {
            use tokio::io::AsyncWriteExt;
            let _ = w.write_all(first).await;
            let _ = w.flush().await;
        }
        let stdout = child.stdout().take();
        let stderr = child.stderr().take();
        let hash = launch.hash;
        let work = async move {
            let out = async {
                if let Some(r) = stdout {
                    let r = HashingReader { inner: r, hash };
                    let _ = read_lines(r, false, id, Stream::Stdout, events).await;
                }
            };
            let err = async {
                if let Some(r) = stderr {
                    let _ = read_lines(r, false, id, Stream::Stderr, events).await;
                }
            };
            tokio::join!(out, err);
            match exit_code(child.wait().await) {
                Ok(Some(c)) => CommandEnd::Exited(c),
                Ok(None) => CommandEnd::Signalled,
                Err(e) => CommandEnd::Lost(error_chain(&e)),
            }
        };
        let stop = move |why: &CommandEnd| {
            let keep =
                keep_on_timeout && matches!(why, CommandEnd::TimedOut | CommandEnd::Converged);
            async move {
                // "stop": run.sh ends the run and keeps its dir for collect.sh
                // (the end of stdin that follows comes after the line, so it is
                // not taken for a lost initiator). Otherwise the end of stdin
                // alone: the wrapper ends the whole process group.
                if let (true, Some(mut w)) = (keep, stdin) {
                    use tokio::io::AsyncWriteExt;
                    let _ = w.write_all(b"stop\n").await;
                    let _ = w.flush().await;
                }
            }
        };
        supervise(work, stop, timeout, &mut self.triggers).await
    }

    /// Runs a remote command line on a PTY (`ssh -tt` through the master):
    /// stdout and stderr arrive merged. Answers sudo's prompt when asked to.
    async fn run_pty(
        &mut self,
        launch: Launch,
        keep_on_timeout: bool,
        timeout: Option<Duration>,
    ) -> CommandEnd {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (id, session, events) = (self.id, self.session, self.events);
        let mut child = match session.spawn_pty_line(launch.line) {
            Ok(c) => c,
            Err(e) => return CommandEnd::Lost(format!("cannot start ssh: {e}")),
        };
        let stdin = Arc::new(tokio::sync::Mutex::new(child.stdin.take()));
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let pid = child.id();
        let answer = launch.answer;
        let input = stdin.clone();
        let work = async move {
            // The terminal's output, with sudo's prompt answered and taken out.
            let out = async {
                let mut r = stdout?;
                let mut lines = LineSplitter::new(id, Stream::Stdout, true, events);
                let mut prompt = PromptScan::new(answer.is_some());
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    let n = match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let (pass, action) = prompt.feed(&buf[..n]);
                    match action {
                        PromptAction::Answer => {
                            if let (Some(secret), Some(w)) = (&answer, input.lock().await.as_mut())
                            {
                                let _ = w
                                    .write_all(format!("{}\n", secret.expose()).as_bytes())
                                    .await;
                                let _ = w.flush().await;
                            }
                        }
                        PromptAction::Refused(why) => {
                            if let Some(pid) = pid {
                                // SAFETY: kill(2) on our own ssh child.
                                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                            }
                            return Some(why);
                        }
                        PromptAction::None => {}
                    }
                    lines.push(&pass).await;
                }
                lines.finish().await;
                None
            };
            // Only our wrapper, sudo without a terminal and ssh itself write
            // here: the remote command's stderr goes to the terminal.
            let err = async {
                let mut text = Vec::new();
                if let Some(mut r) = stderr {
                    let _ = r.read_to_end(&mut text).await;
                }
                text
            };
            let (refused, err_text) = tokio::join!(out, err);
            let err_text = String::from_utf8_lossy(&err_text).trim().to_string();
            let status = child.wait().await;
            if let Some(why) = refused {
                return CommandEnd::Refused(why);
            }
            match status {
                Ok(status) => match status.code() {
                    Some(NO_PTY_EXIT) if err_text.contains("no pseudo terminal") => {
                        CommandEnd::NoPty
                    }
                    Some(_) if err_text.contains("must have a tty") => CommandEnd::Refused(
                        "sudo requires a terminal on this host (requiretty), and the server \
                         refuses one (PermitTTY no)"
                            .into(),
                    ),
                    Some(255) => CommandEnd::Lost(err_text),
                    Some(c) => CommandEnd::Exited(c),
                    None => CommandEnd::Signalled,
                },
                Err(e) => CommandEnd::Lost(e.to_string()),
            }
        };
        let stop = move |why: &CommandEnd| {
            let keep =
                keep_on_timeout && matches!(why, CommandEnd::TimedOut | CommandEnd::Converged);
            async move {
                if keep {
                    // run.sh reads "stop" from the terminal: end the run, keep its dir
                    if let Some(w) = stdin.lock().await.as_mut() {
                        let _ = w.write_all(b"stop\n").await;
                        let _ = w.flush().await;
                    }
                    return;
                }
                if let Some(pid) = pid {
                    // SAFETY: kill(2) on our own ssh child; the master then closes the
                    // channel and sshd hangs up the remote terminal.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                }
            }
        };
        supervise(work, stop, timeout, &mut self.triggers).await
    }
}

/// Passes bytes through, hashing them on the way when asked to.
struct HashingReader<R> {
    inner: R,
    hash: Option<Arc<std::sync::Mutex<Sha256>>>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for HashingReader<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let (std::task::Poll::Ready(Ok(())), Some(hash)) = (&polled, &self.hash)
            && let Ok(mut h) = hash.lock()
        {
            h.update(&buf.filled()[before..]);
        }
        polled
    }
}

/// What to do about sudo's prompt on a terminal.
enum PromptAction {
    None,
    Answer,
    Refused(String),
}

/// Watches a terminal's output for [`SUDO_PROMPT`]: sudo prints it first,
/// before anything of the command; it is answered once and taken out (with
/// the newline sudo sends after the password). A second prompt means the
/// password was wrong; a prompt with nothing to answer, that one is needed.
struct PromptScan {
    state: ScanState,
    head: Vec<u8>,
}

#[derive(PartialEq)]
enum ScanState {
    /// Still reading what may be the prompt.
    Start { have_answer: bool },
    /// Answered: drop the newline that follows.
    Answered,
    /// Then sudo's verdict on the password, or the command's first output.
    Verdict,
    /// Everything passes.
    Pass,
}

impl PromptScan {
    fn new(have_answer: bool) -> PromptScan {
        PromptScan {
            state: ScanState::Start { have_answer },
            head: Vec::new(),
        }
    }

    /// Takes output bytes; returns those to show, and what to do.
    fn feed(&mut self, bytes: &[u8]) -> (Vec<u8>, PromptAction) {
        let prompt = SUDO_PROMPT.as_bytes();
        match self.state {
            ScanState::Pass => (bytes.to_vec(), PromptAction::None),
            ScanState::Start { have_answer } => {
                self.head.extend_from_slice(bytes);
                let n = self.head.len().min(prompt.len());
                if self.head[..n] != prompt[..n] {
                    self.state = ScanState::Pass;
                    return (std::mem::take(&mut self.head), PromptAction::None);
                }
                if self.head.len() < prompt.len() {
                    return (Vec::new(), PromptAction::None);
                }
                if !have_answer {
                    self.state = ScanState::Pass;
                    return (
                        Vec::new(),
                        PromptAction::Refused(
                            "sudo: a password is required (give become_password_env in the \
                             inventory, or --ask-become-pass)"
                                .into(),
                        ),
                    );
                }
                self.state = ScanState::Answered;
                let rest = self.head.split_off(prompt.len());
                self.head.clear();
                let (pass, _) = self.feed(&rest);
                (pass, PromptAction::Answer)
            }
            ScanState::Answered => {
                self.head.extend_from_slice(bytes);
                // sudo's newline after the password (the terminal makes it \r\n)
                for nl in [&b"\r\n"[..], b"\n"] {
                    if self.head.starts_with(nl) {
                        self.state = ScanState::Verdict;
                        let rest = self.head.split_off(nl.len());
                        self.head.clear();
                        return self.feed(&rest);
                    }
                }
                if self.head.len() < 2 && self.head.first().is_none_or(|&b| b == b'\r') {
                    return (Vec::new(), PromptAction::None);
                }
                self.state = ScanState::Verdict;
                let rest = std::mem::take(&mut self.head);
                self.feed(&rest)
            }
            ScanState::Verdict => {
                // "Sorry, try again." (and the prompt again) or the command's output
                const SORRY: &[u8] = b"Sorry, try again.";
                self.head.extend_from_slice(bytes);
                let n = self.head.len().min(SORRY.len());
                if self.head[..n] != SORRY[..n] {
                    self.state = ScanState::Pass;
                    return (std::mem::take(&mut self.head), PromptAction::None);
                }
                if self.head.len() < SORRY.len() {
                    return (Vec::new(), PromptAction::None);
                }
                self.state = ScanState::Pass;
                self.head.clear();
                (
                    Vec::new(),
                    PromptAction::Refused("sudo: incorrect sudo password".into()),
                )
            }
        }
    }
}

/// One payload run on a host, as the loop of --repeat and --watch sees it.
struct PayloadRun {
    outcome: HostOutcome,
    /// Its stdout and results, digested (when looping and collected).
    digest: Option<[u8; 32]>,
    /// Stopped to run a new version of the payload (--watch).
    restarted: bool,
}

pub(crate) enum StageError {
    Cancelled,
    Converged,
    Lost(String),
    Failed {
        reason: String,
        base: Option<String>,
    },
}

/// Checks the host's copy of the payload and sends what is missing or wrong.
/// Returns the host's pushrun dir and the payload's dir there.
pub(crate) async fn stage(
    session: &Session,
    host: &Host,
    job: &Arc<PayloadJob>,
    stats: &mut StageStats,
) -> Result<(String, String), StageError> {
    let remote_tmp = host.settings.remote_tmp.as_deref().unwrap_or("/tmp");
    let digest = job.payload.digest();
    let mode = if job.cache { "cache" } else { "nocache" };
    let manifest = job.payload.manifest();
    let lost = |e: openssh::Error| StageError::Lost(error_chain(&e));
    let out = session
        .run_script(
            remote::CHECK,
            "pushrun-check",
            &[remote_tmp, digest, &job.run_id, mode],
            manifest.as_bytes(),
        )
        .await
        .map_err(lost)?;
    stats.bytes_sent += manifest.len() as u64;
    stats.bytes_received += out.stdout.len() as u64;
    let report = remote::parse_check(&out.stdout).map_err(|reason| StageError::Failed {
        reason: script_failure(reason, &out),
        base: None,
    })?;
    let base = report.base;
    if !report.needed.is_empty() {
        let archive = job
            .archive(&report.needed)
            .await
            .map_err(|reason| StageError::Failed {
                reason,
                base: Some(base.clone()),
            })?;
        let out = session
            .run_script(
                remote::RECEIVE,
                "pushrun-receive",
                &[&base, digest, &job.run_id, mode],
                &archive,
            )
            .await
            .map_err(lost)?;
        stats.bytes_sent += archive.len() as u64;
        stats.bytes_received += out.stdout.len() as u64;
        stats.files_sent = report.needed.len();
        if let Some(reason) = remote::error_line(&out.stdout) {
            return Err(StageError::Failed {
                reason,
                base: Some(base),
            });
        }
        if out.code != Some(0) {
            let reason = script_failure("receive failed".into(), &out);
            return Err(StageError::Failed {
                reason,
                base: Some(base),
            });
        }
    } else {
        stats.cache_hit = job.cache;
    }
    let payload_dir = if job.cache {
        format!("{base}/cache/{digest}")
    } else {
        format!("{base}/runs/{}/payload", job.run_id)
    };
    Ok((base, payload_dir))
}

/// A script's failure in one line: its own `error` line, else `reason`
/// with the last thing it said on stderr.
fn script_failure(reason: String, out: &crate::session::ScriptOutput) -> String {
    if remote::error_line(&out.stdout).is_some() {
        return reason;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    match stderr.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(last) => format!("{reason}: {}", last.trim()),
        None => reason,
    }
}

/// Brings `$PUSHRUN_OUT` back as a tar.gz; the script removes the run dir
/// after ending the stream. Returns the archive and how long it took to arrive.
async fn collect(
    session: &Session,
    base: &str,
    run_id: &str,
) -> Result<(Vec<u8>, Duration), String> {
    let out = session
        .run_script(remote::COLLECT, "pushrun-collect", &[base, run_id], b"")
        .await
        .map_err(|e| error_chain(&e))?;
    if out.code != Some(0) {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok((out.stdout, out.stdout_done))
}

/// Removes a run dir whose run never started (best effort).
async fn clean_run_dir(session: &Session, base: &str, run_id: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(10), collect(session, base, run_id)).await;
}

/// How a command ended, before it becomes a [`HostOutcome`].
enum CommandEnd {
    Exited(i32),
    Signalled,
    TimedOut,
    Cancelled,
    NoPty,
    /// Still running when the run converged: stopped.
    Converged,
    /// Stopped to run a new version of the payload (--watch).
    Reloaded,
    /// The command could not run as asked (sudo's refusals); why.
    Refused(String),
    Lost(String),
}

impl CommandEnd {
    fn into_outcome(self, timeout: Option<Duration>, timings: Timings) -> HostOutcome {
        let (status, exit_code, reason) = match self {
            CommandEnd::Exited(0) => (Status::Ok, Some(0), None),
            CommandEnd::Exited(c) => (Status::Failed, Some(c), Some(format!("exit {c}"))),
            CommandEnd::Signalled => (Status::Failed, None, Some("killed by a signal".to_string())),
            CommandEnd::TimedOut => {
                let secs = timeout.map(|t| t.as_secs_f64()).unwrap_or_default();
                (Status::TimedOut, None, Some(format!("killed after the {secs}s timeout")))
            }
            CommandEnd::Cancelled => (Status::Cancelled, None, Some("interrupted: command killed".to_string())),
            CommandEnd::NoPty => (
                Status::Failed,
                None,
                Some("the server refused a PTY (PermitTTY no?): run without --pty, or with --pty auto".to_string()),
            ),
            CommandEnd::Refused(why) => (Status::Failed, None, Some(why)),
            CommandEnd::Converged => (
                Status::Stopped,
                None,
                Some("still running when the run converged: stopped".to_string()),
            ),
            CommandEnd::Reloaded => (Status::Cancelled, None, Some(RESTARTED.to_string())),
            CommandEnd::Lost(why) => (Status::Unreachable, None, Some(format!("connection lost: {why}"))),
        };
        HostOutcome {
            status,
            exit_code,
            reason,
            notes: Vec::new(),
            timings,
            stage: None,
        }
    }
}

/// Waits for `work`, or stops it early on timeout, cancellation,
/// convergence or a new payload.
///
/// `stop` is called once, with why, to make the remote command end (it
/// writes "stop" or closes stdin, or kills the local ssh); then `work` gets
/// [`STOP_GRACE`] to finish.
async fn supervise<W, S, F>(
    work: W,
    stop: S,
    timeout: Option<Duration>,
    triggers: &mut Triggers,
) -> CommandEnd
where
    W: Future<Output = CommandEnd>,
    S: FnOnce(&CommandEnd) -> F,
    F: Future<Output = ()>,
{
    tokio::pin!(work);
    let limit = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let early = tokio::select! {
        end = &mut work => return end,
        _ = limit => CommandEnd::TimedOut,
        _ = raised(&mut triggers.cancel) => CommandEnd::Cancelled,
        _ = raised(&mut triggers.converged) => CommandEnd::Converged,
        _ = reloaded(&mut triggers.reload) => CommandEnd::Reloaded,
    };

    stop(&early).await;
    let _ = tokio::time::timeout(STOP_GRACE, &mut work).await;
    early
}

/// A digest of a results archive's content (paths, modes, bytes), not of
/// its bytes: a payload that writes the same files again at other times
/// has the same results.
fn results_digest(archive: &[u8]) -> [u8; 32] {
    let mut entries: Vec<(Vec<u8>, u32, [u8; 32])> = Vec::new();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    if let Ok(iter) = tar.entries() {
        for entry in iter.flatten() {
            let mut entry = entry;
            let path = entry.path_bytes().into_owned();
            let mode = entry.header().mode().unwrap_or(0);
            let mut h = Sha256::new();
            let mut buf = [0u8; 8192];
            loop {
                match std::io::Read::read(&mut entry, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => h.update(&buf[..n]),
                }
            }
            entries.push((path, mode, h.finalize().into()));
        }
    }
    entries.sort();
    let mut h = Sha256::new();
    for (path, mode, content) in entries {
        h.update(&path);
        h.update([0]);
        h.update(mode.to_le_bytes());
        h.update(content);
    }
    h.finalize().into()
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
