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

use crate::events::{Event, HostId, HostOutcome, StageStats, Status, Stream, Timings};
use crate::inventory::Host;
use crate::payload::Payload;
use crate::remote;
use crate::session::{
    ControlDir, NO_PTY_EXIT, Session, SshOptions, exit_code, read_lines, write_ssh_config,
};

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
                let outcome =
                    HostOutcome::without_exit(Status::Unreachable, why.clone(), Timings::default());
                let _ = events.send(Event::Finished(id, outcome)).await;
            }
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(spec.forks.max(1)));
    let mut tasks = JoinSet::new();
    for id in 0..hosts.len() {
        let (hosts, spec, dir, events, mut cancel, slots, config) = (
            hosts.clone(),
            spec.clone(),
            dir.clone(),
            events.clone(),
            cancel.clone(),
            slots.clone(),
            config.clone(),
        );
        tasks.spawn(async move {
            let permit = tokio::select! {
                p = slots.acquire_owned() => p.ok(),
                _ = cancelled(&mut cancel) => None,
            };
            let outcome = match permit {
                Some(_permit) => {
                    run_host(id, &hosts[id], &spec, &dir, &config, &events, cancel).await
                }
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

/// Resolves once the run is cancelled (never, if the sender is gone without cancelling).
pub(crate) async fn cancelled(cancel: &mut watch::Receiver<bool>) {
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
    let timings = Timings {
        connect: started.elapsed(),
        ..Timings::default()
    };
    let session = match connected {
        Ok(s) => s,
        Err(e) => return HostOutcome::without_exit(Status::Unreachable, e.message, timings),
    };
    let _ = events.send(Event::Connected(id)).await;
    let mut task = HostTask {
        id,
        host,
        session: &session,
        events,
        cancel,
    };
    let outcome = match &spec.job {
        Job::Command(command) => task.run_command(command, spec, timings).await,
        Job::Payload(job) => task.run_payload(job, spec, timings).await,
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
    cancel: watch::Receiver<bool>,
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

    async fn run_command(
        &mut self,
        command: &str,
        spec: &RunSpec,
        mut timings: Timings,
    ) -> HostOutcome {
        let vars = self.vars();
        let run_started = Instant::now();
        let mut notes = Vec::new();
        let script = |c| (remote::EXEC, "pushrun-exec", vec![c]);
        let mut result = match spec.pty {
            PtyMode::No => {
                self.run_streamed(script(command.to_string()), false, spec.timeout, &vars)
                    .await
            }
            PtyMode::Yes | PtyMode::Auto => self.run_pty(command, spec, &vars).await,
        };
        if matches!(result, CommandEnd::NoPty) && spec.pty == PtyMode::Auto {
            notes.push("the server refused a PTY: ran without one".to_string());
            result = self
                .run_streamed(script(command.to_string()), false, spec.timeout, &vars)
                .await;
        }
        timings.run = run_started.elapsed();
        let mut outcome = result.into_outcome(spec.timeout, timings);
        outcome.notes.extend(notes);
        outcome
    }

    /// Stage, run, collect, clean: a payload on one host.
    async fn run_payload(
        &mut self,
        job: &Arc<PayloadJob>,
        spec: &RunSpec,
        mut timings: Timings,
    ) -> HostOutcome {
        let (id, host, session, events) = (self.id, self.host, self.session, self.events);
        let mut vars = self.vars();
        let started = Instant::now();
        let mut stats = StageStats::default();
        let staged = tokio::select! {
            r = stage(session, host, job, &mut stats) => r,
            _ = cancelled(&mut self.cancel) => Err(StageError::Cancelled),
        };
        timings.stage = started.elapsed();
        let fail = |status, reason: String, timings, stats| HostOutcome {
            status,
            exit_code: None,
            reason: Some(reason),
            notes: Vec::new(),
            timings,
            stage: Some(stats),
        };
        let (base, payload_dir) = match staged {
            Ok(s) => s,
            Err(StageError::Cancelled) => {
                return fail(
                    Status::Cancelled,
                    "interrupted while staging".into(),
                    timings,
                    stats,
                );
            }
            Err(StageError::Failed { reason, base }) => {
                if let Some(base) = base {
                    clean_run_dir(session, &base, &job.run_id).await;
                }
                return fail(Status::Failed, format!("stage: {reason}"), timings, stats);
            }
            Err(StageError::Lost(why)) => {
                return fail(
                    Status::Unreachable,
                    format!("connection lost: {why}"),
                    timings,
                    stats,
                );
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
        let end = self
            .run_streamed((remote::RUN, "pushrun-run", args), true, timeout, &env)
            .await;
        timings.run = run_started.elapsed();

        // After a cancel or a lost connection the run dir is gone already
        // (run.sh removes it when its stdin closes); otherwise, timeouts
        // included, bring back $PUSHRUN_OUT, which also removes it.
        let mut outcome = match end {
            CommandEnd::Exited(_) | CommandEnd::Signalled | CommandEnd::TimedOut => {
                let collect_started = Instant::now();
                match collect(session, &base, &job.run_id).await {
                    Ok((archive, streamed)) => {
                        timings.collect = streamed;
                        timings.clean = collect_started.elapsed().saturating_sub(streamed);
                        stats.bytes_received += archive.len() as u64;
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
        outcome
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

    /// Runs a remote script with its output streamed as events, stopping it
    /// on timeout or cancellation by closing its stdin.
    async fn run_streamed(
        &mut self,
        (script, name, args): (&str, &str, Vec<String>),
        keep_on_timeout: bool,
        timeout: Option<Duration>,
        vars: &[(String, String)],
    ) -> CommandEnd {
        let (id, session, events) = (self.id, self.session, self.events);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = match session.spawn_script(script, name, &args, vars).await {
            Ok(c) => c,
            Err(e) => return CommandEnd::Lost(error_chain(&e)),
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
            match exit_code(child.wait().await) {
                Ok(Some(c)) => CommandEnd::Exited(c),
                Ok(None) => CommandEnd::Signalled,
                Err(e) => CommandEnd::Lost(error_chain(&e)),
            }
        };
        let stop = move |why: &CommandEnd| {
            let keep = keep_on_timeout && matches!(why, CommandEnd::TimedOut);
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
        supervise(work, stop, timeout, &mut self.cancel).await
    }

    async fn run_pty(
        &mut self,
        command: &str,
        spec: &RunSpec,
        vars: &[(String, String)],
    ) -> CommandEnd {
        let (id, session, events) = (self.id, self.session, self.events);
        let mut child = match session.spawn_pty(command, vars) {
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
                    Some(NO_PTY_EXIT)
                        if String::from_utf8_lossy(&err_text).contains("no pseudo terminal") =>
                    {
                        CommandEnd::NoPty
                    }
                    Some(255) => {
                        CommandEnd::Lost(String::from_utf8_lossy(&err_text).trim().to_string())
                    }
                    Some(c) => CommandEnd::Exited(c),
                    None => CommandEnd::Signalled,
                },
                Err(e) => CommandEnd::Lost(e.to_string()),
            }
        };
        let stop = |_: &CommandEnd| {
            if let Some(pid) = pid {
                // SAFETY: kill(2) on our own ssh child; the master then closes the
                // channel and sshd hangs up the remote terminal.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
            std::future::ready(())
        };
        supervise(work, stop, spec.timeout, &mut self.cancel).await
    }
}

pub(crate) enum StageError {
    Cancelled,
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

/// Waits for `work`, or stops it early on timeout or cancellation.
///
/// `stop` is called once, with why, to make the remote command end (it
/// writes "stop" or closes stdin, or kills the local ssh); then `work` gets
/// [`STOP_GRACE`] to finish.
async fn supervise<W, S, F>(
    work: W,
    stop: S,
    timeout: Option<Duration>,
    cancel: &mut watch::Receiver<bool>,
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
        _ = cancelled(cancel) => CommandEnd::Cancelled,
    };
    stop(&early).await;
    let _ = tokio::time::timeout(STOP_GRACE, &mut work).await;
    early
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
