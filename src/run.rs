//! A run, from a checked [`Plan`] to the exit status its summary means.
//!
//! Everything a run needs around [`relay::run`] lives here: the async
//! runtime, the private control dir (ssh sockets, password files), Ctrl-C,
//! SIGTERM and SIGHUP (the first cancels the run, the second quits),
//! convergence (`--converged-timeout`: [`fleet::converge`] sits between
//! the run and the reporter and sees every event), and the loop that hands
//! events to the [`Reporter`], the one writer of what the user sees.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Exit};
use crate::events::Event;
use crate::fleet::{self, Job, RunSpec};
use crate::inventory::Host;
use crate::relay::{self, KnownHostsSource, Relaying};
use crate::report::{OutputMode, Reporter, RunInfo};
use crate::session::{ControlDir, HostKeyChecking};

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
    /// Where the hosts came from, recorded in summary.json for `--rerun`.
    pub selection: serde_json::Value,
}

/// Runs the plan on its hosts and reports it; the exit status is the
/// summary's.
pub fn run(plan: Plan) -> Result<Exit, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let dir = Arc::new(ControlDir::create().map_err(Error::ControlDir)?);
    if plan.spec.ssh.host_key_checking == Some(HostKeyChecking::Off) {
        eprintln!(
            "pushrun: warning: host key checking is off: connections can be intercepted unnoticed"
        );
    }
    let names: Vec<String> = plan.hosts.iter().map(|h| h.name.clone()).collect();
    let info = RunInfo {
        run_id: plan.run_id.clone(),
        job: job_json(&plan.spec.job),
        results: plan.results.clone(),
        log: plan.spec.converge.is_some(),
        paths: relay::paths(&plan.hosts, &plan.hops),
        selection: plan.selection.clone(),
    };
    let reporter = Reporter::new(plan.output, names, info).map_err(|source| Error::ResultsDir {
        dir: plan
            .results
            .clone()
            .unwrap_or_else(|| Path::new(".").into()),
        source,
    })?;
    let relaying = Relaying::new(
        plan.hops,
        plan.relay_binary,
        plan.run_id,
        KnownHostsSource::Ssh,
    );
    let exit = runtime.block_on(drive(
        Arc::new(plan.hosts),
        Arc::new(relaying),
        Arc::new(plan.spec),
        dir,
        reporter,
    ));
    runtime.shutdown_timeout(Duration::from_secs(1));
    exit
}

/// What ran, as the summaries show it.
fn job_json(job: &Job) -> serde_json::Value {
    match job {
        Job::Command(c) => serde_json::json!({"command": c}),
        Job::Payload(p) => serde_json::json!({
            "payload": p.payload.name(),
            "digest": p.payload.digest(),
            "entry": p.payload.entry(),
            "args": p.args,
            "cache": p.cache,
        }),
        Job::Clean => serde_json::json!({"clean": true}),
        Job::Copy(c) => serde_json::json!({"copy": c.names, "dest": c.dest, "files": c.files}),
        Job::Fetch(f) => serde_json::json!({"fetch": f.paths}),
    }
}

/// The run and its report, side by side, until both are done.
async fn drive(
    hosts: Arc<Vec<Host>>,
    relaying: Arc<Relaying>,
    spec: Arc<RunSpec>,
    dir: Arc<ControlDir>,
    mut reporter: Reporter,
) -> Result<Exit, Error> {
    let (cancel_tx, cancel_rx) = watch::channel(false);
    cancel_on_signals(cancel_tx, dir.clone());
    let (tx, rx) = mpsc::channel(1024);
    let (tx, converged_rx) = converging(&spec, tx);
    let run = tokio::spawn(relay::run(
        hosts,
        relaying,
        spec,
        dir.clone(),
        tx,
        cancel_rx.clone(),
        converged_rx,
    ));
    let shown = report(&mut reporter, rx, cancel_rx).await;
    if let Ok(reports) = run.await {
        reporter.relays(&reports);
    }
    dir.remove();
    match shown.and_then(|()| reporter.finish()) {
        Ok(summary) => Ok(summary.exit_status),
        // stdout closed (e.g. `| head`): the run itself is done.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Exit::Failed),
        Err(e) => Err(Error::Output(e)),
    }
}

/// The first Ctrl-C, SIGTERM or SIGHUP cancels the run (hosts stop, the
/// summary is written, the control dir and its password files go); a
/// second one quits at once.
fn cancel_on_signals(cancel: watch::Sender<bool>, dir: Arc<ControlDir>) {
    // Registered now, before the run starts, so none is missed.
    let Ok(mut stops) = Stops::new() else {
        return;
    };
    tokio::spawn(async move {
        if stops.next().await.is_none() {
            return;
        }
        let _ = cancel.send(true);
        if stops.next().await.is_some() {
            // A second one: quit now. Masters of this run alone die with
            // us (PDEATHSIG); persisted ones end when idle, as they would.
            dir.remove();
            std::process::exit(Exit::Interrupted.code().into());
        }
        std::future::pending::<()>().await;
    });
}

/// The signals that stop a run: Ctrl-C, `kill`'s default, and the
/// terminal going away.
struct Stops {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Stops {
    fn new() -> io::Result<Stops> {
        Ok(Stops {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next of them to arrive.
    async fn next(&mut self) -> Option<()> {
        tokio::select! {
            got = self.interrupt.recv() => got,
            got = self.terminate.recv() => got,
            got = self.hangup.recv() => got,
        }
    }
}

/// With `--converged-timeout`, every event of the run, relays' included,
/// passes by the one place that decides when the run has converged: the
/// sender the run is to use, and the flag that says it has.
fn converging(
    spec: &RunSpec,
    to_reporter: mpsc::Sender<Event>,
) -> (mpsc::Sender<Event>, watch::Receiver<bool>) {
    let (converged_tx, converged_rx) = watch::channel(false);
    let Some(quiet) = spec.converge else {
        return (to_reporter, converged_rx);
    };
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(fleet::converge(
        rx,
        to_reporter,
        quiet,
        spec.repeat.is_some(),
        converged_tx,
    ));
    (tx, converged_rx)
}

/// Hands the run's events to the reporter until the run ends; shows what
/// is pending every 100ms, and the interruption when the run is cancelled.
async fn report(
    reporter: &mut Reporter,
    mut rx: mpsc::Receiver<Event>,
    mut cancel_rx: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut watching = true;
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                reporter.handle(ev)?;
                while let Ok(ev) = rx.try_recv() {
                    reporter.handle(ev)?;
                }
                reporter.flush()?;
            }
            _ = tick.tick() => reporter.flush()?,
            changed = cancel_rx.changed(), if watching => {
                watching = changed.is_ok();
                if *cancel_rx.borrow() {
                    reporter.interrupted()?;
                }
            }
        }
    }
    Ok(())
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
