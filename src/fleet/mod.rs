//! The per-host state machine (connect → run → close), run for every
//! selected host with at most `--forks` hosts in flight.
//!
//! Each host is one task. It owns its connection, sends [`Event`]s and
//! never prints. Every wait it does has an end: the connect deadline, the
//! command timeout, or the run's cancellation (Ctrl-C), which all end the
//! remote command by closing its stdin (see `remote/exec.sh`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

mod collect;
mod command;
mod connect;
mod converge;
mod ended;
mod host;
mod output;
mod payload;
mod plain;
mod plain_copy;
mod transfer;
mod waves;

pub(crate) use connect::{Dial, connect};
pub(crate) use converge::busy;
pub use converge::converge;
use converge::watch_payload;
use host::run_host;
pub(crate) use payload::{StageError, clean_run_dir, host_run_id, stage};
pub use transfer::{CopyJob, FetchJob};
pub(crate) use transfer::{fetched_outcome, too_big, unpack_untrusted};
pub use waves::Waves;

use crate::auth::Access;
use crate::events::{Event, HostId, HostOutcome, Status, Timings};
use crate::inventory::Host;
use crate::payload::Payload;

use crate::session::{ControlDir, SshOptions, write_ssh_config};

/// Whether commands get a pseudo terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// Put files and directories on the host (`pushrun copy`).
    Copy(Arc<CopyJob>),
    /// Bring files and directories back from the host (`pushrun fetch`).
    Fetch(Arc<FetchJob>),
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
    /// The whole payload as one archive, built once for every cold host.
    full_archive: tokio::sync::OnceCell<Arc<Spooled>>,
}

/// Archives up to this size are kept in memory once built (see [`Spooled`]).
const IN_MEMORY: u64 = 64 << 20;

/// A payload archive built for hosts (see [`Payload::spool_tar_gz`]): its
/// bytes where it is at most [`IN_MEMORY`], which every host is then sent
/// from (no read of the file, and no hop to a blocking thread, per 64 KiB
/// per host); else its file with no name, which each host reads from its
/// start through an opening of its own.
#[derive(Debug)]
pub(crate) struct Spooled {
    pub(crate) body: SpooledBody,
    /// Its size in bytes.
    pub(crate) size: u64,
    /// Whether it is a tar.gz (else a plain tar: the files do not compress).
    pub(crate) gzip: bool,
}

/// Where a [`Spooled`] archive is kept.
#[derive(Debug)]
pub(crate) enum SpooledBody {
    Memory(Vec<u8>),
    File(std::fs::File),
}

impl Spooled {
    fn spool(payload: &Payload, paths: &[&str]) -> Result<Spooled, String> {
        use std::os::unix::fs::FileExt;
        let file = payload.spool_tar_gz(paths).map_err(|e| e.to_string())?;
        let failed = |e: std::io::Error| format!("cannot read the payload archive: {e}");
        let size = file.metadata().map_err(failed)?.len();
        let mut magic = [0u8; 2];
        let body = if size <= IN_MEMORY {
            let mut bytes = vec![0; size as usize];
            file.read_exact_at(&mut bytes, 0).map_err(failed)?;
            SpooledBody::Memory(bytes)
        } else {
            file.read_exact_at(&mut magic, 0).map_err(failed)?;
            SpooledBody::File(file)
        };
        let gzip = crate::payload::is_gzip(match &body {
            SpooledBody::Memory(bytes) => bytes,
            SpooledBody::File(_) => &magic,
        });
        Ok(Spooled { body, size, gzip })
    }
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

    /// The archive of `paths`, in a file with no name (see
    /// [`Payload::spool_tar_gz`]); the whole payload's is built once and
    /// shared, each host reading it through its own opening.
    async fn archive(self: &Arc<Self>, paths: &[String]) -> Result<Arc<Spooled>, String> {
        if paths.len() == self.payload.entries().len() {
            let job = self.clone();
            let built = self
                .full_archive
                .get_or_try_init(|| async move {
                    tokio::task::spawn_blocking(move || {
                        let all: Vec<&str> = job
                            .payload
                            .entries()
                            .iter()
                            .map(|e| e.path.as_str())
                            .collect();
                        Spooled::spool(&job.payload, &all).map(Arc::new)
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
            Spooled::spool(&job.payload, &refs).map(Arc::new)
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
    /// Run the hosts in waves, stopping when too many fail (`--batch`, `--max-fail`).
    pub waves: Option<Waves>,
    /// The most results bytes kept from one host, packed or unpacked
    /// (`--max-results`); a host that sends more fails.
    pub max_results: u64,
}

/// `--max-results` unless given: 1 GiB.
pub const MAX_RESULTS: u64 = 1 << 30;

impl RunSpec {
    /// Host `id`'s passwords and sudo.
    pub(crate) fn access(&self, id: HostId) -> Access {
        self.access.get(id).cloned().unwrap_or_default()
    }
}

/// The reason of a run stopped because its payload changed (--watch).
pub(super) const RESTARTED: &str = "restarted: the payload changed";

/// How long a command gets to end after its stdin was closed.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(5);

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
    let waves = match &spec.waves {
        Some(w) => w.cut(hosts.len()),
        None => vec![(0..hosts.len()).collect()],
    };
    let mut failed = 0;
    for (n, wave) in waves.iter().enumerate() {
        if let Some(why) = spec.waves.as_ref().and_then(|w| w.stop(failed)) {
            for &id in waves[n..].iter().flatten() {
                let o = HostOutcome::without_exit(Status::Skipped, why.clone(), Timings::default());
                let _ = events.send(Event::Finished(id, o)).await;
            }
            break;
        }
        let mut tasks = JoinSet::new();
        for &id in wave {
            let host = HostRun {
                hosts: hosts.clone(),
                spec: spec.clone(),
                dir: dir.clone(),
                config: config.clone(),
                events: events.clone(),
                slots: slots.clone(),
            };
            let triggers = Triggers {
                cancel: cancel.clone(),
                converged: converged.clone(),
                reload: jobs.clone(),
            };
            tasks.spawn(host.run(id, triggers));
        }
        while let Some(status) = tasks.join_next().await {
            if status.is_ok_and(|s| s != Status::Ok) {
                failed += 1;
            }
        }
    }
}

/// What one host's task takes along.
struct HostRun {
    hosts: Arc<Vec<Host>>,
    spec: Arc<RunSpec>,
    dir: Arc<ControlDir>,
    config: Arc<PathBuf>,
    events: mpsc::Sender<Event>,
    slots: Arc<Semaphore>,
}

impl HostRun {
    /// Host `id`'s part of the run, once it has a `--forks` slot; sends
    /// its end and returns how it ended.
    async fn run(self, id: HostId, mut triggers: Triggers) -> Status {
        let permit = tokio::select! {
            p = self.slots.clone().acquire_owned() => p.ok(),
            _ = raised(&mut triggers.cancel) => None,
            _ = raised(&mut triggers.converged) => None,
        };
        let (spec, events) = (&self.spec, &self.events);
        let outcome = match permit {
            Some(_permit) => {
                let host = &self.hosts[id];
                run_host(id, host, spec, &self.dir, &self.config, events, triggers).await
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
        let status = outcome.status;
        let _ = events.send(Event::Finished(id, outcome)).await;
        status
    }
}

/// What can end a host's command early, besides its timeout.
pub(super) struct Triggers {
    /// Ctrl-C.
    pub(super) cancel: watch::Receiver<bool>,
    /// The run converged (--converged-timeout).
    pub(super) converged: watch::Receiver<bool>,
    /// A new version of the payload (--watch).
    pub(super) reload: Option<watch::Receiver<Arc<PayloadJob>>>,
}

/// Resolves once the payload changes (never without --watch).
pub(super) async fn reloaded(reload: &mut Option<watch::Receiver<Arc<PayloadJob>>>) {
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

/// A script's failure in one line: its own `error` line, else `reason`
/// with the last thing it said on stderr.
pub(super) fn script_failure(reason: String, out: &crate::session::ScriptOutput) -> String {
    if crate::remote::error_line(&out.stdout).is_some() {
        return reason;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    match stderr.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(last) => format!("{reason}: {}", last.trim()),
        None => reason,
    }
}
