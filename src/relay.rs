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

mod known_hosts;
mod serve;
mod tree;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{OnceCell, mpsc, watch};
use tokio::task::JoinSet;

use crate::events::{Event, HostId, HostOutcome, StageStats, Status, Timings};
use crate::fleet::{self, Job, PayloadJob, RunSpec, StageError, error_chain, raised as cancelled};
use crate::inventory::Host;
use crate::payload::Payload;
use crate::session::{ControlDir, Session, write_ssh_config};

pub use known_hosts::Source as KnownHostsSource;
pub use serve::serve;
pub use tree::{hops, paths, tree};
pub use wire::RelayReport;

use tree::{Subtree, split};

/// Starts `pushrun relay` on a relay and removes its run dirs after.
const START: &str = concat!(
    include_str!("remote/lib.sh"),
    include_str!("relay/start.sh")
);
/// Says the relay's OS and machine.
const PROBE: &str = include_str!("relay/probe.sh");
/// The binary's name in its one-file payload.
const BINARY_NAME: &str = "pushrun";
/// Control sockets of relays are numbered from here (apart from direct hosts').
const RELAY_SLOTS: usize = 1_000_000;
/// How long a cancelled relay gets to stop its hosts and say so.
const RELAY_STOP_GRACE: Duration = Duration::from_secs(20);
/// Lines of a relay's stderr kept for the summary.
const LOG_LINES: usize = 20;

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
    binary_job: OnceCell<Result<Arc<PayloadJob>, String>>,
    /// The payload again, under a run id of its own on relays.
    payload_job: OnceCell<Arc<PayloadJob>>,
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
        }
    }

    async fn binary_job(&self, cache: bool) -> Result<Arc<PayloadJob>, String> {
        let run_id = format!("{}.relay-bin", self.run_id);
        let path = self.binary.clone();
        self.binary_job
            .get_or_init(|| async move {
                let path = match path {
                    Some(p) => p,
                    None => std::env::current_exe()
                        .map_err(|e| format!("cannot find pushrun's own executable: {e}"))?,
                };
                let shown = path.display().to_string();
                let payload =
                    tokio::task::spawn_blocking(move || Payload::single_file(&path, BINARY_NAME))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| format!("relay binary {shown}: {e}"))?;
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

/// Runs `spec` on every host: direct hosts through [`fleet::run`], the others
/// through their relays. Events carry the ids of `hosts`. Returns what each
/// relay did (nested relays included), once every host is done. When
/// `converged` is raised, it is passed down to the relays too.
pub async fn run(
    hosts: Arc<Vec<Host>>,
    relaying: Arc<Relaying>,
    spec: Arc<RunSpec>,
    dir: Arc<ControlDir>,
    events: mpsc::Sender<Event>,
    cancel: watch::Receiver<bool>,
    converged: watch::Receiver<bool>,
) -> Vec<RelayReport> {
    let (direct, subtrees) = split(&hosts, &relaying.hops);
    if subtrees.is_empty() {
        fleet::run(hosts, spec, dir, events, cancel, converged).await;
        return Vec::new();
    }
    let fail_all = async |why: String, subtrees: Vec<Subtree>| {
        let behind = subtrees
            .into_iter()
            .flat_map(|s| s.hosts.into_iter().map(|(id, _)| id));
        for id in direct.iter().copied().chain(behind) {
            let o = HostOutcome::without_exit(Status::Unreachable, why.clone(), Timings::default());
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

/// The same event for host `map(id)`.
fn renumber(mut event: Event, map: impl Fn(HostId) -> HostId) -> Event {
    let host = event.host_mut();
    *host = map(*host);
    event
}

/// One top relay's part of the run, seen from the level above it.
struct RelayTask {
    slot: usize,
    subtree: Subtree,
    relaying: Arc<Relaying>,
    spec: Arc<RunSpec>,
    dir: Arc<ControlDir>,
    config: Arc<PathBuf>,
    events: mpsc::Sender<Event>,
    cancel: watch::Receiver<bool>,
    converged: watch::Receiver<bool>,
}

/// What staging left on a relay.
struct Staged {
    /// The relay's pushrun dir (BASE).
    base: String,
    /// The staged pushrun there.
    binary: String,
    /// The staged payload's dir there (payload runs).
    payload_dir: Option<String>,
    /// Run dirs staging made, for the start script to remove.
    run_dirs: Vec<String>,
}

/// Why a relay could not serve (the rest of) its subtree.
struct Failure {
    status: Status,
    reason: String,
}

impl Failure {
    fn unreachable(reason: String) -> Failure {
        Failure {
            status: Status::Unreachable,
            reason,
        }
    }
}

impl RelayTask {
    async fn run(mut self) -> Vec<RelayReport> {
        let name = self.subtree.relay.name.clone();
        let mut report = RelayReport {
            path: name.clone(),
            status: "ok".into(),
            hosts: self.subtree.hosts.len(),
            ..RelayReport::default()
        };
        let mut finished = vec![false; self.subtree.hosts.len()];
        let mut nested = Vec::new();
        let result = self.serve(&mut report, &mut finished, &mut nested).await;
        if let Err(f) = result {
            let status_word = serde_json::to_value(f.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            report.status = status_word;
            report.reason = Some(f.reason.clone());
            for (i, (id, _)) in self.subtree.hosts.iter().enumerate() {
                if !finished[i] {
                    let o =
                        HostOutcome::without_exit(f.status, f.reason.clone(), Timings::default());
                    let _ = self.events.send(Event::Finished(*id, o)).await;
                }
            }
        }
        for n in &mut nested {
            n.path = format!("{name}/{}", n.path);
        }
        let mut all = vec![report];
        all.extend(nested);
        all
    }

    /// Connects, stages, starts the relay and relays its frames.
    async fn serve(
        &mut self,
        report: &mut RelayReport,
        finished: &mut [bool],
        nested: &mut Vec<RelayReport>,
    ) -> Result<(), Failure> {
        let name = self.subtree.relay.name.clone();
        let mut relay = self.subtree.relay.clone();
        let agent = relay.settings.forward_agent == Some(true);
        if agent {
            relay
                .settings
                .ssh_options
                .insert(0, "ForwardAgent=yes".into());
        }
        let everyone: Vec<&Host> = self
            .subtree
            .hosts
            .iter()
            .map(|(_, h)| h)
            .chain(&self.subtree.hops)
            .collect();
        let started = Instant::now();
        let (first, events) = self.busy_as();
        let lines = known_hosts::lines_for(&self.relaying.known_hosts, &self.config, &everyone);
        let interrupted = || Failure {
            status: Status::Cancelled,
            reason: format!("interrupted while connecting to relay {name}"),
        };
        let known = tokio::select! {
            k = lines => k,
            _ = cancelled(&mut self.cancel) => return Err(interrupted()),
        };
        // Relays log in with keys (or the agent): passwords are for job hosts.
        let relay_name = format!("relay {name}");
        let dial = fleet::Dial {
            dir: &self.dir,
            slot: self.slot,
            config: &self.config,
            host: &relay,
            ssh: &self.spec.ssh,
            password: None,
            retry: self.spec.converge.is_some(),
            shown_as: first,
            relay: Some(&relay_name),
        };
        let (cancel, converged) = (&mut self.cancel, &mut self.converged);
        let session = fleet::connect(dial, &events, cancel, converged)
            .await
            .map_err(|(status, reason)| Failure { status, reason })?;
        report.connect_ms = started.elapsed().as_millis() as u64;
        let result = self
            .on_session(&session, agent, known, report, finished, nested)
            .await;
        session.close().await;
        result
    }

    /// Whom a relay's own work is shown as ([`Event::Busy`]: its first
    /// host), and the channel to say it on.
    fn busy_as(&self) -> (HostId, mpsc::Sender<Event>) {
        let first = self.subtree.hosts.first().map(|(id, _)| *id);
        (first.unwrap_or_default(), self.events.clone())
    }

    async fn on_session(
        &mut self,
        session: &Session,
        agent: bool,
        known_hosts: String,
        report: &mut RelayReport,
        finished: &mut [bool],
        nested: &mut Vec<RelayReport>,
    ) -> Result<(), Failure> {
        let name = self.subtree.relay.name.clone();
        let started = Instant::now();
        let mut cancel = self.cancel.clone();
        let (first, events) = self.busy_as();
        let staged = tokio::select! {
            r = fleet::busy(self.stage(session, report), first, &events) => r,
            _ = cancelled(&mut cancel) => Err(Failure {
                status: Status::Cancelled,
                reason: format!("interrupted while staging on relay {name}"),
            }),
        };
        report.stage_ms = started.elapsed().as_millis() as u64;
        let Staged {
            base,
            binary,
            payload_dir,
            run_dirs,
        } = staged?;

        let plan = self.plan(payload_dir, known_hosts);
        let opts: &[&str] = if agent {
            &["-o", "ForwardAgent=yes"]
        } else {
            &[]
        };
        let mut args = vec![base.as_str(), binary.as_str()];
        args.extend(run_dirs.iter().map(String::as_str));
        let started = Instant::now();
        let mut child = session
            .spawn_client(opts, START, "pushrun-relay", &args)
            .map_err(|e| Failure::unreachable(format!("relay {name}: cannot start ssh: {e}")))?;
        let mut stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let log = tokio::spawn(async move {
            let mut tail: Vec<String> = Vec::new();
            if let Some(err) = stderr {
                let mut lines = tokio::io::BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if tail.len() == LOG_LINES {
                        tail.remove(0);
                    }
                    tail.push(line);
                }
            }
            tail
        });
        if let Some(w) = stdin.as_mut() {
            let down = wire::Down::Plan(Box::new(plan));
            let sent = wire::write_frame(w, &down).await;
            report.bytes_sent += sent.as_ref().copied().unwrap_or(0);
            if sent.is_err() || w.flush().await.is_err() {
                stdin = None;
            }
        }
        let Some(stdout) = stdout else {
            return Err(Failure::unreachable(format!(
                "relay {name}: no output stream"
            )));
        };
        // Frames are read by a task of their own: reading one is not
        // cancel-safe, and the loop below also waits for cancellation.
        let (frames_tx, mut frames) = mpsc::channel(256);
        let reader = tokio::spawn(async move {
            let mut input = tokio::io::BufReader::with_capacity(256 * 1024, stdout);
            loop {
                let frame = wire::read_frame::<_, wire::Up>(&mut input).await;
                let end = !matches!(frame, Ok(Some(_)));
                if frames_tx.send(frame).await.is_err() || end {
                    break;
                }
            }
        });
        let ids: Vec<HostId> = self.subtree.hosts.iter().map(|(id, _)| *id).collect();
        let mut hello = false;
        let mut done = false;
        let mut problem: Option<String> = None;
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut heard = tokio::time::Instant::now();
        let mut cancel = self.cancel.clone();
        let mut converged = self.converged.clone();
        let mut told_converged = false;
        loop {
            let limit = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                frame = frames.recv() => {
                    let (frame, size) = match frame {
                        Some(Ok(Some(f))) => f,
                        None | Some(Ok(None)) => break,
                        Some(Err(e)) => { problem = Some(e); break; }
                    };
                    heard = tokio::time::Instant::now();
                    report.bytes_received += size;
                    match frame {
                        wire::Up::Hello { version } if version == wire::VERSION => hello = true,
                        wire::Up::Hello { version } => {
                            problem = Some(format!(
                                "speaks relay protocol {version}, not {} (stage the same pushrun with --relay-binary)",
                                wire::VERSION
                            ));
                            break;
                        }
                        _ if !hello => {
                            problem = Some("sent a frame before its hello".into());
                            break;
                        }
                        wire::Up::Relays { reports } => nested.extend(reports),
                        wire::Up::Done => { done = true; break; }
                        frame => match frame.into_event(|i| ids.get(i).copied()) {
                            Ok(Some(ev)) => {
                                if let Event::Finished(id, _) = &ev
                                    && let Some(i) = ids.iter().position(|x| x == id)
                                {
                                    finished[i] = true;
                                }
                                let _ = self.events.send(ev).await;
                            }
                            Ok(None) => {}
                            Err(e) => { problem = Some(e); break; }
                        },
                    }
                }
                _ = cancelled(&mut cancel), if deadline.is_none() => {
                    // The end of its stdin cancels the relay's run; it still
                    // reports how its hosts ended, then Done.
                    if let Some(mut w) = stdin.take() {
                        if let Ok(n) = wire::write_frame(&mut w, &wire::Down::Cancel).await {
                            report.bytes_sent += n;
                        }
                        let _ = w.shutdown().await;
                    }
                    deadline = Some(tokio::time::Instant::now() + RELAY_STOP_GRACE);
                }
                _ = cancelled(&mut converged), if !told_converged => {
                    // The whole run converged: the relay stops what still
                    // runs behind it, collects, and reports as usual.
                    told_converged = true;
                    if let Some(w) = stdin.as_mut()
                        && let Ok(n) = wire::write_frame(w, &wire::Down::Converge).await
                    {
                        report.bytes_sent += n;
                        let _ = w.flush().await;
                    }
                }
                _ = limit => {
                    problem = Some(format!("did not stop within {}s of being cancelled", RELAY_STOP_GRACE.as_secs()));
                    break;
                }
                _ = tokio::time::sleep_until(heard + wire::SILENCE) => {
                    problem = Some(format!("no word from it for {}s: hung?", wire::SILENCE.as_secs()));
                    break;
                }
            }
        }
        reader.abort();
        drop(stdin);
        report.run_ms = started.elapsed().as_millis() as u64;
        // The relay exits after Done; its start script then removes its run
        // dirs. One that broke the protocol or went quiet is not waited for.
        let wait = if problem.is_some() { 0 } else { 10 };
        let exit = tokio::time::timeout(Duration::from_secs(wait), child.wait()).await;
        let code = match exit {
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = child.kill().await;
                None
            }
        };
        report.log = match tokio::time::timeout(Duration::from_secs(2), log).await {
            Ok(Ok(tail)) => tail,
            _ => Vec::new(),
        };
        if done && problem.is_none() {
            return Ok(());
        }
        let last = report
            .log
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| format!(": {}", l.trim()))
            .unwrap_or_default();
        let how = match (problem, code) {
            (Some(p), _) => p,
            (None, Some(255)) => "connection lost".to_string(),
            (None, Some(c)) => format!("ended without finishing (exit {c})"),
            (None, None) => "ended without finishing (killed)".to_string(),
        };
        let status = if *self.cancel.borrow() {
            Status::Cancelled
        } else {
            Status::Unreachable
        };
        Err(Failure {
            status,
            reason: format!("relay {name}: {how}{last}"),
        })
    }

    /// Checks that the relay can run the binary, then stages it and the
    /// payload.
    async fn stage(&self, session: &Session, report: &mut RelayReport) -> Result<Staged, Failure> {
        let name = &self.subtree.relay.name;
        let fail = |reason: String| Failure {
            status: Status::Failed,
            reason: format!("relay {name}: {reason}"),
        };
        let lost = |e: &dyn std::error::Error| {
            Failure::unreachable(format!("relay {name}: connection lost: {}", error_chain(e)))
        };
        let probe = session
            .run_script(PROBE, "pushrun-probe", &[], b"")
            .await
            .map_err(|e| lost(&e))?;
        report.bytes_received += probe.stdout.len() as u64;
        let answer = String::from_utf8_lossy(&probe.stdout);
        let mut words = answer.lines();
        let (os, machine) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let (want_os, want_arch, what) = match &self.relaying.binary {
            None => (
                std::env::consts::OS,
                std::env::consts::ARCH,
                "this pushrun".to_string(),
            ),
            Some(p) => {
                let arch = elf_arch(p).unwrap_or("unknown");
                ("linux", arch, p.display().to_string())
            }
        };
        if !os.eq_ignore_ascii_case(want_os) || normal_arch(machine) != want_arch {
            return Err(fail(format!(
                "it runs {os} {machine}, {what} is built for {want_os} {want_arch}: give a pushrun built for it with --relay-binary PATH"
            )));
        }
        let cache = match &self.spec.job {
            Job::Payload(j) => j.cache,
            _ => true,
        };
        let binary = self.relaying.binary_job(cache).await.map_err(fail)?;
        let host = &self.subtree.relay;
        let mut stats = StageStats::default();
        let staged = fleet::stage(session, host, &binary, &mut stats).await;
        report.binary = stats.into();
        report.bytes_sent += stats.bytes_sent;
        report.bytes_received += stats.bytes_received;
        let (base, bin_dir) = staged.map_err(|e| stage_failure(e, name, "pushrun binary"))?;
        let mut run_dirs = vec![binary.run_id.clone()];
        let mut payload_dir = None;
        if let Job::Payload(job) = &self.spec.job {
            let job = self.relaying.payload_job(job).await;
            let mut stats = StageStats::default();
            let staged = fleet::stage(session, host, &job, &mut stats).await;
            report.payload = Some(stats.into());
            report.bytes_sent += stats.bytes_sent;
            report.bytes_received += stats.bytes_received;
            run_dirs.push(job.run_id.clone());
            match staged {
                Ok((_, dir)) => payload_dir = Some(dir),
                Err(e) => {
                    // Drop the run dirs staging made.
                    for run_id in &run_dirs {
                        fleet::clean_run_dir(session, &base, run_id).await;
                    }
                    return Err(stage_failure(e, name, "payload"));
                }
            }
        }
        Ok(Staged {
            binary: format!("{bin_dir}/{BINARY_NAME}"),
            base,
            payload_dir,
            run_dirs,
        })
    }

    /// The relay's plan.
    fn plan(&self, payload_dir: Option<String>, known_hosts: String) -> wire::Plan {
        let spec = &self.spec;
        let job = match (&spec.job, payload_dir) {
            (Job::Payload(j), Some(dir)) => wire::Job::Payload {
                dir,
                digest: j.payload.digest().to_string(),
                args: j.args.clone(),
                cache: j.cache,
            },
            (Job::Command(c), _) => wire::Job::Command { command: c.clone() },
            _ => wire::Job::Clean,
        };
        let word = |v: Option<clap::builder::PossibleValue>| {
            v.map(|v| v.get_name().to_string()).unwrap_or_default()
        };
        wire::Plan {
            version: wire::VERSION,
            run_id: self.relaying.run_id.clone(),
            path: self.subtree.relay.name.clone(),
            hosts: self.subtree.hosts.iter().map(|(_, h)| h.clone()).collect(),
            hops: self.subtree.hops.clone(),
            job,
            timeout_ms: spec.timeout.map(|t| t.as_millis() as u64),
            forks: spec.forks,
            pty: word(spec.pty.to_possible_value()),
            kex: word(spec.ssh.kex.to_possible_value()),
            host_key_checking: spec
                .ssh
                .host_key_checking
                .map(|h| word(h.to_possible_value())),
            connect_timeout_ms: spec.ssh.connect_timeout.as_millis() as u64,
            known_hosts,
            access: self
                .subtree
                .hosts
                .iter()
                .map(|(id, _)| wire::Access::from(&spec.access(*id)))
                .collect(),
            converge_ms: spec.converge.map(|t| t.as_millis() as u64),
            repeat_ms: spec.repeat.map(|t| t.as_millis() as u64),
        }
    }
}

fn stage_failure(e: StageError, relay: &str, what: &str) -> Failure {
    let (status, reason) = e.status_reason(Some(relay), what);
    Failure { status, reason }
}

/// `uname -m` in Rust's words (`std::env::consts::ARCH`).
fn normal_arch(machine: &str) -> &str {
    match machine {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "i386" | "i486" | "i586" | "i686" => "x86",
        m if m.starts_with("armv") => "arm",
        m => m,
    }
}

/// The machine an ELF executable is built for, in Rust's words.
fn elf_arch(path: &std::path::Path) -> Option<&'static str> {
    use std::io::Read;
    let mut head = [0u8; 20];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    if &head[..4] != b"\x7fELF" {
        return None;
    }
    let machine = match head[5] {
        1 => u16::from_le_bytes([head[18], head[19]]),
        _ => u16::from_be_bytes([head[18], head[19]]),
    };
    Some(match machine {
        3 => "x86",
        40 => "arm",
        62 => "x86_64",
        183 => "aarch64",
        243 => "riscv64",
        _ => return None,
    })
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_are_named_as_rust_names_them() {
        assert_eq!(normal_arch("x86_64"), "x86_64");
        assert_eq!(normal_arch("arm64"), "aarch64");
        assert_eq!(normal_arch("armv7l"), "arm");
        let me = std::env::current_exe().unwrap();
        assert_eq!(elf_arch(&me), Some(std::env::consts::ARCH));
    }
}
