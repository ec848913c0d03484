//! Relays: hosts that run pushrun's pipeline for the hosts behind them.
//!
//! A host says `via: r1` in the inventory; r1 may itself say `via: r0`. The
//! initiator then opens one connection per top relay, not per host: it
//! stages its own pushrun binary and the payload there (the payload
//! machinery, cache and checks included), starts `pushrun relay` with the
//! subtree's plan on stdin (see [`wire`]), and turns the frames that come
//! back into the leaves' events, with the leaves' own host ids, so that the
//! reporter cannot tell them from direct hosts. A relay does the same for
//! its own relays: one code path, [`run`], at every level.
//!
//! A relay is a hop: it runs the job itself only if it is selected itself
//! (then over a connection of its own, like any direct host). If a relay
//! cannot be reached, or dies, every host behind it that has not finished
//! ends with that reason. Cancelling closes the relay's stdin; it then
//! stops its hosts' commands, cleans up and says so before it exits.
//!
//! `copy` and `fetch` go the same way: a copy's archive is staged on each
//! relay once, like a payload, and the relay copies it to its hosts; what
//! hosts send for a fetch comes back up unopened and lands on the
//! initiator (`landing`). A rolling run (`--batch`) with hosts behind relays
//! runs wave by wave at this level (`waves`).
//!
//! The initiator's side of one relay is in `upstream` (staging on it in
//! `upstream::staging`), the relay's own side in `serve`, the frames between
//! them in [`wire`]; `tree` says which hosts go through which relay.

mod known_hosts;
mod landing;
mod serve;
mod tree;
mod upstream;
mod waves;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::{OnceCell, mpsc, watch};
use tokio::task::JoinSet;

use crate::events::{Event, HostId, HostOutcome, Status, Timings};
use crate::fleet::{self, CopyJob, PayloadJob, RunSpec};
use crate::inventory::Host;
use crate::payload::{Payload, PayloadError};
use crate::session::{ControlDir, write_ssh_config};

pub use known_hosts::Source as KnownHostsSource;
pub use serve::serve;
pub use tree::{hops, paths, tree, tree_each};
pub use wire::RelayReport;

use tree::{Subtree, split};
use upstream::RelayTask;

/// The binary's name in its one-file payload.
const BINARY_NAME: &str = "pushrun";
/// Control sockets of relays are numbered from here (apart from direct hosts').
const RELAY_SLOTS: usize = 1_000_000;

/// What a run needs to know about relays, beside the job hosts.
#[derive(Debug)]
pub struct Relaying {
    /// Relays the job hosts are reached through that are not job hosts
    /// themselves (see [`hops`]).
    pub hops: Vec<Host>,
    /// The pushrun to stage on relays (`--relay-binary`); else this one.
    pub binary: Option<PathBuf>,
    /// The run's id (names the relays' staging dirs).
    pub run_id: String,
    /// Where the subtrees' known_hosts lines come from.
    pub known_hosts: KnownHostsSource,
    /// The binary as a one-file payload, built once for all relays.
    binary_job: OnceCell<Result<Arc<PayloadJob>, Arc<BinaryError>>>,
    /// The payload again, under a run id of its own on relays.
    payload_job: OnceCell<Arc<PayloadJob>>,
    /// A copy's archive as a one-file payload, hashed once for all relays.
    copy_job: OnceCell<Result<Arc<PayloadJob>, String>>,
}

impl Relaying {
    /// The relay settings of a run.
    pub fn new(
        hops: Vec<Host>,
        binary: Option<PathBuf>,
        run_id: String,
        known_hosts: KnownHostsSource,
    ) -> Relaying {
        Relaying {
            hops,
            binary,
            run_id,
            known_hosts,
            binary_job: OnceCell::new(),
            payload_job: OnceCell::new(),
            copy_job: OnceCell::new(),
        }
    }

    /// The pushrun binary to stage on relays, read and hashed once.
    async fn binary_job(&self, cache: bool) -> Result<Arc<PayloadJob>, Arc<BinaryError>> {
        let run_id = format!("{}.relay-bin", self.run_id);
        let path = self.binary.clone();
        self.binary_job
            .get_or_init(|| async move {
                let path = match path {
                    Some(p) => p,
                    None => std::env::current_exe().map_err(BinaryError::OwnExecutable)?,
                };
                let shown = path.clone();
                let payload =
                    tokio::task::spawn_blocking(move || Payload::single_file(&path, BINARY_NAME))
                        .await
                        .map_err(BinaryError::Task)?
                        .map_err(|source| BinaryError::Unreadable {
                            path: shown,
                            source,
                        })?;
                Ok(Arc::new(PayloadJob::new(
                    payload,
                    Vec::new(),
                    cache,
                    run_id,
                )))
            })
            .await
            .clone()
    }

    /// The run's payload, staged on relays under a run id of their own.
    async fn payload_job(&self, job: &PayloadJob) -> Arc<PayloadJob> {
        let run_id = format!("{}.relay-payload", self.run_id);
        self.payload_job
            .get_or_init(|| async {
                Arc::new(PayloadJob::new(
                    job.payload.clone(),
                    Vec::new(),
                    job.cache,
                    run_id,
                ))
            })
            .await
            .clone()
    }
}

impl Relaying {
    /// A copy's archive, staged on relays as a one-file payload (so that it
    /// crosses to each relay once, checked like any payload). It is kept in
    /// the relays' caches when `cache` (a rolling run reaches a relay once
    /// per wave), else in the run dir its relay removes at the end.
    async fn copy_job(&self, job: &CopyJob, cache: bool) -> Result<Arc<PayloadJob>, String> {
        let run_id = format!("{}.relay-copy", self.run_id);
        let path = job.archive_path();
        self.copy_job
            .get_or_init(|| async move {
                let payload = tokio::task::spawn_blocking(move || {
                    Payload::single_file(&path, wire::COPY_ARCHIVE)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| fleet::error_chain(&e))?;
                Ok(Arc::new(PayloadJob::new(
                    payload,
                    Vec::new(),
                    cache,
                    run_id,
                )))
            })
            .await
            .clone()
    }
}

/// Why the pushrun binary for relays cannot be had.
#[derive(Debug, Error)]
pub(crate) enum BinaryError {
    /// `--relay-binary` was not given, and this pushrun's path is unknown.
    #[error("cannot find pushrun's own executable")]
    OwnExecutable(#[source] std::io::Error),
    /// The binary could not be read.
    #[error("relay binary {}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: PayloadError,
    },
    /// Reading it was cut short.
    #[error(transparent)]
    Task(tokio::task::JoinError),
}

/// Runs `spec` on every host: direct hosts through [`fleet::run`], the others
/// through their relays. Events carry the ids of `hosts`. Returns what each
/// relay did (nested relays included), once every host is done. When
/// `converged` is raised, it is passed down to the relays too. A rolling
/// run (`--batch`) with hosts behind relays goes wave by wave here (see
/// `waves`); one of direct hosts only, in [`fleet::run`].
pub async fn run(
    hosts: Arc<Vec<Host>>,
    relaying: Arc<Relaying>,
    spec: Arc<RunSpec>,
    dir: Arc<ControlDir>,
    events: mpsc::Sender<Event>,
    cancel: watch::Receiver<bool>,
    converged: watch::Receiver<bool>,
) -> Vec<RelayReport> {
    let wiring = Wiring {
        relaying,
        spec,
        dir,
        cancel,
        converged,
    };
    let relayed = !split(&hosts, &wiring.relaying.hops).1.is_empty();
    match wiring.spec.waves {
        Some(w) if relayed => waves::in_waves(w, hosts, &wiring, events).await,
        _ => wiring.once(hosts, events).await,
    }
}

/// What every part of a run shares, whichever hosts it runs.
struct Wiring {
    relaying: Arc<Relaying>,
    spec: Arc<RunSpec>,
    dir: Arc<ControlDir>,
    cancel: watch::Receiver<bool>,
    converged: watch::Receiver<bool>,
}

impl Wiring {
    /// Runs the job on `hosts` at once (direct ones `--forks` at a time,
    /// the others through their relays); returns what the relays did.
    async fn once(&self, hosts: Arc<Vec<Host>>, events: mpsc::Sender<Event>) -> Vec<RelayReport> {
        let (relaying, spec, dir) = (&self.relaying, &self.spec, &self.dir);
        let (cancel, converged) = (&self.cancel, &self.converged);
        let (direct, subtrees) = split(&hosts, &relaying.hops);
        if subtrees.is_empty() {
            let (spec, dir) = (spec.clone(), dir.clone());
            fleet::run(hosts, spec, dir, events, cancel.clone(), converged.clone()).await;
            return Vec::new();
        }
        let fail_all = async |why: String, subtrees: Vec<Subtree>| {
            let behind = subtrees
                .into_iter()
                .flat_map(|s| s.hosts.into_iter().map(|(id, _)| id));
            for id in direct.iter().copied().chain(behind) {
                let o =
                    HostOutcome::without_exit(Status::Unreachable, why.clone(), Timings::default());
                let _ = events.send(Event::Finished(id, o)).await;
            }
        };
        // The relays' sockets and ssh config live apart from the direct hosts'.
        let relay_dir = match ControlDir::create() {
            Ok(d) => Arc::new(d),
            Err(e) => {
                fail_all(format!("cannot create a control directory: {e}"), subtrees).await;
                return Vec::new();
            }
        };
        let config = match write_ssh_config(&relay_dir, &spec.ssh) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                fail_all(format!("cannot write the run's ssh config: {e}"), subtrees).await;
                return Vec::new();
            }
        };

        let mut tasks = JoinSet::new();
        if !direct.is_empty() {
            let direct_hosts: Vec<Host> = direct.iter().map(|&i| hosts[i].clone()).collect();
            let (tx, mut rx) = mpsc::channel(1024);
            let (spec, dir, cancel, events, converged) = (
                spec.clone(),
                dir.clone(),
                cancel.clone(),
                events.clone(),
                converged.clone(),
            );
            tasks.spawn(async move {
                let forward = async {
                    while let Some(ev) = rx.recv().await {
                        let _ = events.send(renumber(ev, |i| direct[i])).await;
                    }
                };
                tokio::join!(
                    fleet::run(Arc::new(direct_hosts), spec, dir, tx, cancel, converged),
                    forward
                );
                Vec::new()
            });
        }
        for (slot, subtree) in subtrees.into_iter().enumerate() {
            let task = RelayTask {
                slot: RELAY_SLOTS + slot,
                subtree,
                relaying: relaying.clone(),
                spec: spec.clone(),
                dir: relay_dir.clone(),
                config: config.clone(),
                events: events.clone(),
                cancel: cancel.clone(),
                converged: converged.clone(),
            };
            tasks.spawn(task.run());
        }
        let mut reports = Vec::new();
        while let Some(done) = tasks.join_next().await {
            if let Ok(r) = done {
                reports.extend(r);
            }
        }
        reports.sort_by(|a, b| a.path.cmp(&b.path));
        reports
    }
}

/// The same event for host `map(id)`.
fn renumber(mut event: Event, map: impl Fn(HostId) -> HostId) -> Event {
    let host = event.host_mut();
    *host = map(*host);
    event
}
