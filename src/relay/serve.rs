//! `pushrun relay`: the relay's side. It reads one plan on stdin, runs it
//! with the same [`run`] as the initiator, and frames every event up on
//! stdout; the end of stdin (or a Cancel frame) cancels the run.
//!
//! Nothing but frames may go to stdout: the initiator reads it as the
//! protocol. What the relay has to say goes to stderr, whose last lines the
//! initiator keeps for the summary.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncWriteExt, BufWriter, Stdin, Stdout};
use tokio::sync::{mpsc, watch};

use super::wire::{self, Down, FrameError, Plan, PlannedJob, RelayReport, Up};
use super::{KnownHostsSource, Relaying, run};
use crate::events::{Event, HostOutcome, Status, Timings};
use crate::fleet::{CopyJob, FetchJob, Job, PayloadJob, RunSpec, error_chain};
use crate::inventory::Host;
use crate::payload::{Payload, PayloadError};
use crate::session::{ControlDir, HostKeyChecking};

/// How long the initiator has to send the plan.
const PLAN_WAIT: Duration = Duration::from_secs(60);

/// Why a relay cannot start its run at all (said on stderr, exit 2).
#[derive(Debug, Error)]
enum StartError {
    /// stdin ended, or said something else than a plan.
    #[error("no plan on stdin")]
    NoPlan,
    /// The plan's frame could not be read.
    #[error(transparent)]
    Frame(FrameError),
    /// The initiator said nothing in time.
    #[error("no plan within {}s", PLAN_WAIT.as_secs())]
    Timeout,
    /// The initiator speaks another version of the protocol.
    #[error("plan of protocol {0}, this relay speaks {v}", v = wire::VERSION)]
    Version(u32),
    /// No private directory for control sockets.
    #[error("cannot create a control directory")]
    ControlDir(#[source] std::io::Error),
}

/// Why a plan cannot be run here (every host of it fails with this).
#[derive(Debug, Error)]
enum PlanError {
    /// The plan's known_hosts lines cannot be written.
    #[error("cannot write {}", path.display())]
    KnownHosts {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The staged payload cannot be loaded.
    #[error("the staged payload")]
    Payload(#[source] PayloadError),
    /// The staged payload is not what the initiator sent.
    #[error(
        "the staged payload in {dir} is not the initiator's (digest {found} instead of {expected})"
    )]
    Digest {
        dir: String,
        found: String,
        expected: String,
    },
    /// The staged copy archive cannot be opened.
    #[error("the staged copy archive {}", path.display())]
    Archive {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Preparing was cut short.
    #[error(transparent)]
    Task(tokio::task::JoinError),
}

/// The job hosts, the relay settings and the run spec of a plan.
type Prepared = (Arc<Vec<Host>>, Arc<Relaying>, Arc<RunSpec>);

/// `pushrun relay`: reads a plan on stdin, runs it, writes framed events to
/// stdout. Returns the exit status.
pub fn serve() -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pushrun relay: cannot start: {e}");
            return 2;
        }
    };
    let code = runtime.block_on(serve_plan());
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// Says hello, takes the plan, runs it and frames its events up.
async fn serve_plan() -> u8 {
    let mut input = tokio::io::stdin();
    let mut output = BufWriter::with_capacity(256 * 1024, tokio::io::stdout());
    let hello = Up::Hello {
        version: wire::VERSION,
    };
    if wire::write_frame(&mut output, &hello).await.is_err() || output.flush().await.is_err() {
        return 2;
    }
    let (plan, dir) = match receive_plan(&mut input).await {
        Ok(got) => got,
        Err(e) => {
            eprintln!("pushrun relay: {}", error_chain(&e));
            return 2;
        }
    };
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let (converged_tx, converged_rx) = watch::channel(false);
    tokio::spawn(listen(input, cancel_tx, converged_tx));
    let (tx, rx) = mpsc::channel(1024);
    let runner = run_plan(plan, dir.clone(), tx, cancel_rx, converged_rx);
    let (reports, ok) = tokio::join!(runner, send_events(rx, &mut output));
    let end = async {
        wire::write_frame(&mut output, &Up::Relays { reports }).await?;
        wire::write_frame(&mut output, &Up::Done).await?;
        output.flush().await
    };
    let ok = ok && end.await.is_ok();
    dir.remove();
    if ok { 0 } else { 1 }
}

/// The plan from stdin, checked, and the run's control directory.
async fn receive_plan(input: &mut Stdin) -> Result<(Box<Plan>, Arc<ControlDir>), StartError> {
    let plan = match tokio::time::timeout(PLAN_WAIT, wire::read_frame::<_, Down>(input)).await {
        Ok(Ok(Some((Down::Plan(p), _)))) => p,
        Ok(Ok(_)) => return Err(StartError::NoPlan),
        Ok(Err(e)) => return Err(StartError::Frame(e)),
        Err(_) => return Err(StartError::Timeout),
    };
    if plan.version != wire::VERSION {
        return Err(StartError::Version(plan.version));
    }
    let dir = ControlDir::create().map_err(StartError::ControlDir)?;
    Ok((plan, Arc::new(dir)))
}

/// Cancels on a Cancel frame, or when stdin ends (the initiator went away);
/// converges when the initiator says the whole run has.
async fn listen(mut input: Stdin, cancel: watch::Sender<bool>, converged: watch::Sender<bool>) {
    loop {
        match wire::read_frame::<_, Down>(&mut input).await {
            Ok(Some((Down::Cancel, _))) | Ok(None) | Err(_) => break,
            Ok(Some((Down::Converge, _))) => {
                let _ = converged.send(true);
            }
            Ok(Some(_)) => continue,
        }
    }
    let _ = cancel.send(true);
}

/// Runs the plan's hosts, or fails them all when the plan cannot be run.
async fn run_plan(
    plan: Box<Plan>,
    dir: Arc<ControlDir>,
    events: mpsc::Sender<Event>,
    cancel: watch::Receiver<bool>,
    converged: watch::Receiver<bool>,
) -> Vec<RelayReport> {
    let path = plan.path.clone();
    let n = plan.hosts.len();
    // Hashing the staged payload again can take a while: off the event loop.
    let known = dir.path().join("known_hosts");
    let prepared = tokio::task::spawn_blocking(move || prepare(*plan, known))
        .await
        .unwrap_or_else(|e| Err(PlanError::Task(e)));
    match prepared {
        Ok((hosts, relaying, spec)) => {
            run(hosts, relaying, spec, dir, events, cancel, converged).await
        }
        Err(e) => {
            let why = error_chain(&e);
            eprintln!("pushrun relay {path}: {why}");
            for id in 0..n {
                let o = HostOutcome::without_exit(
                    Status::Failed,
                    format!("relay {path}: {why}"),
                    Timings::default(),
                );
                let _ = events.send(Event::Finished(id, o)).await;
            }
            Vec::new()
        }
    }
}

/// Frames events up as they come, and between them a sign of life (see
/// [`wire::ALIVE_EVERY`]). A write error means the initiator is gone: the
/// run goes on to its end (its hosts are stopped by then). Returns whether
/// every frame was written.
async fn send_events(mut events: mpsc::Receiver<Event>, output: &mut BufWriter<Stdout>) -> bool {
    let mut ok = true;
    let mut alive = tokio::time::interval(wire::ALIVE_EVERY);
    loop {
        let frame = tokio::select! {
            ev = events.recv() => match ev {
                Some(event) => Up::Event { event },
                None => break,
            },
            _ = alive.tick() => Up::Alive,
        };
        ok = ok && wire::write_frame(output, &frame).await.is_ok();
        if events.is_empty() {
            ok = ok && output.flush().await.is_ok();
        }
    }
    ok
}

/// The copy the initiator staged here, hashed again (it must be what the
/// initiator sent), its archive opened once for all hosts.
fn staged_copy(
    dir: &str,
    digest: &str,
    dest: String,
    names: Vec<String>,
) -> Result<CopyJob, PlanError> {
    let path = std::path::Path::new(dir).join(wire::COPY_ARCHIVE);
    let payload = Payload::single_file(&path, wire::COPY_ARCHIVE).map_err(PlanError::Payload)?;
    if payload.digest() != digest {
        return Err(PlanError::Digest {
            found: payload.digest().to_string(),
            dir: dir.to_string(),
            expected: digest.to_string(),
        });
    }
    let opened = std::fs::File::open(&path).and_then(|f| CopyJob::from_archive(f, dest, names));
    opened.map_err(|source| PlanError::Archive { path, source })
}

/// The plan's hosts, relay settings and run spec, as this relay uses them.
fn prepare(plan: Plan, known: PathBuf) -> Result<Prepared, PlanError> {
    std::fs::write(&known, &plan.known_hosts).map_err(|source| PlanError::KnownHosts {
        path: known.clone(),
        source,
    })?;
    let option = format!("UserKnownHostsFile={}", known.display());
    let fix = |mut h: Host| {
        std::sync::Arc::make_mut(&mut h.settings)
            .ssh_options
            .insert(0, option.clone());
        h
    };
    let hosts: Vec<Host> = plan.hosts.into_iter().map(fix).collect();
    let hops: Vec<Host> = plan.hops.into_iter().map(fix).collect();
    let job = match plan.job {
        PlannedJob::Command { command } => Job::Command(command),
        PlannedJob::Clean => Job::Clean,
        PlannedJob::Payload {
            dir,
            digest,
            args,
            cache,
        } => {
            // The staged copy, hashed again here: it must be what the
            // initiator sent.
            let payload = Payload::load(std::path::Path::new(&dir)).map_err(PlanError::Payload)?;
            if payload.digest() != digest {
                return Err(PlanError::Digest {
                    found: payload.digest().to_string(),
                    dir,
                    expected: digest,
                });
            }
            let job = PayloadJob::new(payload, args, cache, plan.run_id.clone());
            Job::Payload(Arc::new(job))
        }
        PlannedJob::Copy {
            dir,
            digest,
            dest,
            names,
        } => Job::Copy(Arc::new(staged_copy(&dir, &digest, dest, names)?)),
        PlannedJob::Fetch { paths, max_bytes } => Job::Fetch(Arc::new(FetchJob {
            paths,
            folders: HashMap::new(),
            max_bytes,
            forward: true,
        })),
    };
    let mut ssh = plan.ssh;
    // Strict: the lines that came with the plan are all there is to trust.
    ssh.host_key_checking.get_or_insert(HostKeyChecking::Strict);
    let spec = RunSpec {
        job,
        timeout: plan.timeout,
        pty: plan.pty,
        ssh,
        forks: plan.forks,
        access: plan.access,
        converge: plan.converge,
        repeat: plan.repeat,
        watch: None,
        waves: None,
        max_results: plan.max_results,
    };
    let relaying = Relaying::new(hops, None, plan.run_id, KnownHostsSource::File(known));
    Ok((Arc::new(hosts), Arc::new(relaying), Arc::new(spec)))
}
