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
pub mod wire;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{OnceCell, mpsc, watch};
use tokio::task::JoinSet;

use crate::events::{Event, HostId, HostOutcome, StageStats, Status, Timings};
use crate::fleet::{self, Job, PayloadJob, PtyMode, RunSpec, StageError, cancelled, error_chain};
use crate::inventory::Host;
use crate::payload::Payload;
use crate::session::{ControlDir, HostKeyChecking, Kex, Session, SshOptions, write_ssh_config};

pub use known_hosts::Source as KnownHostsSource;
pub use wire::RelayReport;

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

/// A host's `via`, unless it names the host itself (as a group or the
/// defaults may, for the relay too).
fn via(host: &Host) -> Option<&str> {
    host.settings.via.as_deref().filter(|v| *v != host.name)
}

/// The relays `selected` hosts are reached through that are not selected
/// themselves, in inventory order. Checks every `via` on the way: it must
/// name a host of the inventory, and lead to a host with none.
pub fn hops(all: &[Host], selected: &[Host]) -> Result<Vec<Host>, String> {
    let index: HashMap<&str, usize> = all
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.as_str(), i))
        .collect();
    let chosen: std::collections::HashSet<&str> =
        selected.iter().map(|h| h.name.as_str()).collect();
    let mut needed = std::collections::BTreeSet::new();
    for host in selected {
        let mut chain = vec![host.name.as_str()];
        let mut current = host;
        while let Some(relay) = via(current) {
            let Some(&i) = index.get(relay) else {
                return Err(format!(
                    "host {}: via {relay}: no such host in the inventory",
                    current.name
                ));
            };
            if chain.contains(&relay) {
                chain.push(relay);
                return Err(format!("via loop: {}", chain.join(" -> ")));
            }
            chain.push(relay);
            if !chosen.contains(relay) {
                needed.insert(i);
            }
            current = &all[i];
        }
    }
    Ok(needed.into_iter().map(|i| all[i].clone()).collect())
}

/// The relays from the top down that `host` is reached through.
fn route<'a>(known: &HashMap<&str, &'a Host>, host: &'a Host) -> Vec<&'a Host> {
    let mut chain = Vec::new();
    let mut current = host;
    while let Some(next) = via(current).and_then(|r| known.get(r)) {
        if chain.iter().any(|h: &&Host| h.name == next.name) || chain.len() > known.len() {
            break;
        }
        chain.push(*next);
        current = next;
    }
    chain.reverse();
    chain
}

fn by_name<'a>(hosts: &'a [Host], hops: &'a [Host]) -> HashMap<&'a str, &'a Host> {
    hosts
        .iter()
        .chain(hops)
        .map(|h| (h.name.as_str(), h))
        .collect()
}

/// Each host's place in the tree (`r1/r2/node042`), `None` for direct hosts.
pub fn paths(hosts: &[Host], hops: &[Host]) -> Vec<Option<String>> {
    let known = by_name(hosts, hops);
    hosts
        .iter()
        .map(|h| {
            let chain = route(&known, h);
            (!chain.is_empty()).then(|| {
                let mut names: Vec<&str> = chain.iter().map(|r| r.name.as_str()).collect();
                names.push(&h.name);
                names.join("/")
            })
        })
        .collect()
}

/// The selection as a tree, for `pushrun hosts`: each host's `line`,
/// indented under the relay it is reached through; relays that are only
/// hops are marked so.
pub fn tree(hosts: &[Host], hops: &[Host], line: impl Fn(&Host) -> String) -> Vec<String> {
    let known = by_name(hosts, hops);
    let all: Vec<&Host> = hosts.iter().chain(hops).collect();
    let mut out = Vec::new();
    fn walk(
        parent: Option<&str>,
        depth: usize,
        all: &[&Host],
        hop_names: &[&str],
        known: &HashMap<&str, &Host>,
        line: &dyn Fn(&Host) -> String,
        out: &mut Vec<String>,
    ) {
        for h in all {
            let up = via(h).filter(|r| known.contains_key(r));
            if up != parent {
                continue;
            }
            let mut text = format!("{}{}", "  ".repeat(depth), line(h));
            if hop_names.contains(&h.name.as_str()) {
                text.push_str("  (relay only)");
            }
            out.push(text);
            walk(Some(&h.name), depth + 1, all, hop_names, known, line, out);
        }
    }
    let hop_names: Vec<&str> = hops.iter().map(|h| h.name.as_str()).collect();
    walk(None, 0, &all, &hop_names, &known, &line, &mut out);
    out
}

/// One top relay at this level and what is behind it.
struct Subtree {
    relay: Host,
    /// Job hosts behind it, with their ids at this level.
    hosts: Vec<(HostId, Host)>,
    /// Hops behind it (not the relay itself).
    hops: Vec<Host>,
}

/// Splits the job hosts into direct ones and subtrees, one per top relay.
fn split(hosts: &[Host], hops: &[Host]) -> (Vec<HostId>, Vec<Subtree>) {
    let known = by_name(hosts, hops);
    let mut direct = Vec::new();
    let mut subtrees: Vec<Subtree> = Vec::new();
    fn place(subtrees: &mut Vec<Subtree>, top: &Host) -> usize {
        match subtrees.iter().position(|s| s.relay.name == top.name) {
            Some(i) => i,
            None => {
                subtrees.push(Subtree {
                    relay: top.clone(),
                    hosts: Vec::new(),
                    hops: Vec::new(),
                });
                subtrees.len() - 1
            }
        }
    }
    let below = |h: &Host, top: &Host| {
        let mut h = h.clone();
        if h.settings.via.as_deref() == Some(top.name.as_str()) {
            h.settings.via = None;
        }
        h
    };
    for (id, h) in hosts.iter().enumerate() {
        match route(&known, h).first() {
            None => direct.push(id),
            Some(top) => {
                let i = place(&mut subtrees, top);
                subtrees[i].hosts.push((id, below(h, top)));
            }
        }
    }
    for h in hops {
        if let Some(top) = route(&known, h).first() {
            let i = place(&mut subtrees, top);
            subtrees[i].hops.push(below(h, top));
        }
    }
    (direct, subtrees)
}

/// Runs `spec` on every host: direct hosts through [`fleet::run`], the others
/// through their relays. Events carry the ids of `hosts`. Returns what each
/// relay did (nested relays included), once every host is done.
pub async fn run(
    hosts: Arc<Vec<Host>>,
    relaying: Arc<Relaying>,
    spec: Arc<RunSpec>,
    dir: Arc<ControlDir>,
    events: mpsc::Sender<Event>,
    cancel: watch::Receiver<bool>,
) -> Vec<RelayReport> {
    let (direct, subtrees) = split(&hosts, &relaying.hops);
    if subtrees.is_empty() {
        fleet::run(hosts, spec, dir, events, cancel).await;
        return Vec::new();
    }
    let fail_all = async |why: String, subtrees: Vec<Subtree>| {
        for s in subtrees {
            for (id, _) in s.hosts {
                let o =
                    HostOutcome::without_exit(Status::Unreachable, why.clone(), Timings::default());
                let _ = events.send(Event::Finished(id, o)).await;
            }
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
        let (spec, dir, cancel, events) =
            (spec.clone(), dir.clone(), cancel.clone(), events.clone());
        tasks.spawn(async move {
            let forward = async {
                while let Some(ev) = rx.recv().await {
                    let _ = events.send(renumber(ev, |i| direct[i])).await;
                }
            };
            tokio::join!(
                fleet::run(Arc::new(direct_hosts), spec, dir, tx, cancel),
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
        };
        tasks.spawn(task.run());
    }
    let mut reports = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(r) = done {
            reports.extend(r);
        }
    }
    reports
}

/// The same event for host `map(id)`.
fn renumber(event: Event, map: impl Fn(HostId) -> HostId) -> Event {
    match event {
        Event::Connecting(id) => Event::Connecting(map(id)),
        Event::Connected(id) => Event::Connected(map(id)),
        Event::Output {
            host,
            stream,
            line,
            complete,
        } => Event::Output {
            host: map(host),
            stream,
            line,
            complete,
        },
        Event::Collected(id, archive) => Event::Collected(map(id), archive),
        Event::Finished(id, outcome) => Event::Finished(map(id), outcome),
    }
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
        let connect = Session::connect(&self.dir, &self.config, self.slot, &relay, &self.spec.ssh);
        let lines = known_hosts::lines_for(&self.relaying.known_hosts, &self.config, &everyone);
        let (connected, known) = tokio::select! {
            r = async { tokio::join!(connect, lines) } => r,
            _ = cancelled(&mut self.cancel) => return Err(Failure {
                status: Status::Cancelled,
                reason: format!("interrupted while connecting to relay {name}"),
            }),
        };
        report.connect_ms = started.elapsed().as_millis() as u64;
        let session =
            connected.map_err(|e| Failure::unreachable(format!("relay {name}: {}", e.message)))?;
        let result = self
            .on_session(&session, agent, known, report, finished, nested)
            .await;
        session.close().await;
        result
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
        let staged = tokio::select! {
            r = self.stage(session, report) => r,
            _ = cancelled(&mut cancel) => Err(Failure {
                status: Status::Cancelled,
                reason: format!("interrupted while staging on relay {name}"),
            }),
        };
        report.stage_ms = started.elapsed().as_millis() as u64;
        let (base, binary, payload_dir, run_dirs) = staged?;

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
        let mut cancel = self.cancel.clone();
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
                _ = limit => {
                    problem = Some(format!("did not stop within {}s of being cancelled", RELAY_STOP_GRACE.as_secs()));
                    break;
                }
            }
        }
        reader.abort();
        drop(stdin);
        report.run_ms = started.elapsed().as_millis() as u64;
        // The relay exits after Done; its start script then removes its run dirs.
        let exit = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
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
    /// payload. Returns BASE, the binary's path there, the payload's dir,
    /// and the run dirs staging made.
    async fn stage(
        &self,
        session: &Session,
        report: &mut RelayReport,
    ) -> Result<(String, String, Option<String>, Vec<String>), Failure> {
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
                    // Drop the run dirs staging made (collect.sh removes them).
                    for run_id in &run_dirs {
                        let args = [base.as_str(), run_id.as_str()];
                        let clean = session.run_script(
                            crate::remote::COLLECT,
                            "pushrun-collect",
                            &args,
                            b"",
                        );
                        let _ = tokio::time::timeout(Duration::from_secs(10), clean).await;
                    }
                    return Err(stage_failure(e, name, "payload"));
                }
            }
        }
        Ok((
            base,
            format!("{bin_dir}/{BINARY_NAME}"),
            payload_dir,
            run_dirs,
        ))
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
        }
    }
}

fn stage_failure(e: StageError, relay: &str, what: &str) -> Failure {
    match e {
        StageError::Cancelled => Failure {
            status: Status::Cancelled,
            reason: format!("interrupted while staging on relay {relay}"),
        },
        StageError::Lost(why) => {
            Failure::unreachable(format!("relay {relay}: connection lost: {why}"))
        }
        StageError::Failed { reason, .. } => Failure {
            status: Status::Failed,
            reason: format!("relay {relay}: staging the {what}: {reason}"),
        },
    }
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

async fn serve_plan() -> u8 {
    let mut input = tokio::io::stdin();
    let mut output = tokio::io::BufWriter::with_capacity(256 * 1024, tokio::io::stdout());
    if wire::write_frame(
        &mut output,
        &wire::Up::Hello {
            version: wire::VERSION,
        },
    )
    .await
    .is_err()
        || output.flush().await.is_err()
    {
        return 2;
    }
    let plan = match tokio::time::timeout(
        Duration::from_secs(60),
        wire::read_frame::<_, wire::Down>(&mut input),
    )
    .await
    {
        Ok(Ok(Some((wire::Down::Plan(p), _)))) => p,
        Ok(Ok(_)) => {
            eprintln!("pushrun relay: no plan on stdin");
            return 2;
        }
        Ok(Err(e)) => {
            eprintln!("pushrun relay: {e}");
            return 2;
        }
        Err(_) => {
            eprintln!("pushrun relay: no plan within 60s");
            return 2;
        }
    };
    if plan.version != wire::VERSION {
        eprintln!(
            "pushrun relay: plan of protocol {}, this relay speaks {}",
            plan.version,
            wire::VERSION
        );
        return 2;
    }
    let dir = match ControlDir::create() {
        Ok(d) => Arc::new(d),
        Err(e) => {
            eprintln!("pushrun relay: cannot create a control directory: {e}");
            return 2;
        }
    };
    let (cancel_tx, cancel_rx) = watch::channel(false);
    // Cancel on a Cancel frame, or when stdin ends (the initiator went away).
    tokio::spawn(async move {
        loop {
            match wire::read_frame::<_, wire::Down>(&mut input).await {
                Ok(Some((wire::Down::Cancel, _))) | Ok(None) | Err(_) => break,
                Ok(Some(_)) => continue,
            }
        }
        let _ = cancel_tx.send(true);
    });
    let (tx, mut rx) = mpsc::channel(1024);
    let path = plan.path.clone();
    let n = plan.hosts.len();
    let runner = async {
        match prepare(*plan, &dir) {
            Ok((hosts, relaying, spec)) => {
                run(hosts, relaying, spec, dir.clone(), tx, cancel_rx).await
            }
            Err(why) => {
                eprintln!("pushrun relay {path}: {why}");
                for id in 0..n {
                    let o = HostOutcome::without_exit(
                        Status::Failed,
                        format!("relay {path}: {why}"),
                        Timings::default(),
                    );
                    let _ = tx.send(Event::Finished(id, o)).await;
                }
                Vec::new()
            }
        }
    };
    // Frames go up as events come; a write error means the initiator is
    // gone: the run goes on to its end (its hosts are stopped by then).
    let writer = async {
        let mut ok = true;
        while let Some(ev) = rx.recv().await {
            ok = ok
                && wire::write_frame(&mut output, &wire::Up::from_event(ev))
                    .await
                    .is_ok();
            if rx.is_empty() {
                ok = ok && output.flush().await.is_ok();
            }
        }
        ok
    };
    let (reports, ok) = tokio::join!(runner, writer);
    let end = async {
        wire::write_frame(&mut output, &wire::Up::Relays { reports }).await?;
        wire::write_frame(&mut output, &wire::Up::Done).await?;
        output.flush().await
    };
    let ok = ok && end.await.is_ok();
    dir.remove();
    if ok { 0 } else { 1 }
}

/// The plan's hosts, relay settings and run spec, as this relay uses them.
fn prepare(
    plan: wire::Plan,
    dir: &ControlDir,
) -> Result<(Arc<Vec<Host>>, Arc<Relaying>, Arc<RunSpec>), String> {
    let parse = |what: &str, word: &str| format!("bad {what} {word:?} in the plan");
    let pty = PtyMode::from_str(&plan.pty, true).map_err(|_| parse("pty", &plan.pty))?;
    let kex = Kex::from_str(&plan.kex, true).map_err(|_| parse("kex", &plan.kex))?;
    let checking = match &plan.host_key_checking {
        Some(w) => HostKeyChecking::from_str(w, true).map_err(|_| parse("host key checking", w))?,
        // Strict: the lines that came with the plan are all there is to trust.
        None => HostKeyChecking::Strict,
    };
    let known = dir.path().join("known_hosts");
    std::fs::write(&known, &plan.known_hosts)
        .map_err(|e| format!("cannot write {}: {e}", known.display()))?;
    let option = format!("UserKnownHostsFile={}", known.display());
    let fix = |mut h: Host| {
        h.settings.ssh_options.insert(0, option.clone());
        h
    };
    let hosts: Vec<Host> = plan.hosts.into_iter().map(fix).collect();
    let hops: Vec<Host> = plan.hops.into_iter().map(fix).collect();
    let job = match plan.job {
        wire::Job::Command { command } => Job::Command(command),
        wire::Job::Clean => Job::Clean,
        wire::Job::Payload {
            dir: payload_dir,
            digest,
            args,
            cache,
        } => {
            // The staged copy, hashed again here: it must be what the
            // initiator sent.
            let payload = Payload::load(std::path::Path::new(&payload_dir))
                .map_err(|e| format!("the staged payload: {e}"))?;
            if payload.digest() != digest {
                return Err(format!(
                    "the staged payload in {payload_dir} is not the initiator's (digest {} instead of {digest})",
                    payload.digest()
                ));
            }
            Job::Payload(Arc::new(PayloadJob::new(
                payload,
                args,
                cache,
                plan.run_id.clone(),
            )))
        }
    };
    let spec = RunSpec {
        job,
        timeout: plan.timeout_ms.map(Duration::from_millis),
        pty,
        ssh: SshOptions {
            config_file: None,
            kex,
            connect_timeout: Duration::from_millis(plan.connect_timeout_ms),
            host_key_checking: Some(checking),
        },
        forks: plan.forks,
    };
    let relaying = Relaying::new(hops, None, plan.run_id, KnownHostsSource::File(known));
    Ok((Arc::new(hosts), Arc::new(relaying), Arc::new(spec)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Inventory;

    fn inventory(text: &str) -> Inventory {
        Inventory::parse(text, "hosts.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn names(hosts: &[Host]) -> Vec<&str> {
        hosts.iter().map(|h| h.name.as_str()).collect()
    }

    const TREE: &str = "
hosts:
  r0:
  r1: {via: r0}
  r2: {via: r0, forward_agent: true}
  a1: {via: r1}
  a2: {via: r1}
  b1: {via: r2}
  d1:
";

    #[test]
    fn selecting_leaves_pulls_in_their_relays() {
        let inv = inventory(TREE);
        let selected = inv.select(&["a1,b1,d1".to_string()]).unwrap();
        let hops = hops(inv.hosts(), &selected).unwrap();
        assert_eq!(names(&hops), ["r0", "r1", "r2"]);
        let selected = inv.select(&["r1,a2".to_string()]).unwrap();
        assert_eq!(names(&super::hops(inv.hosts(), &selected).unwrap()), ["r0"]);
        assert_eq!(
            paths(&selected, &super::hops(inv.hosts(), &selected).unwrap()),
            [Some("r0/r1".to_string()), Some("r0/r1/a2".to_string())]
        );
    }

    #[test]
    fn the_plan_splits_into_direct_hosts_and_one_subtree_per_top_relay() {
        let inv = inventory(TREE);
        let selected = inv.select(&["a1,a2,b1,d1".to_string()]).unwrap();
        let hops = hops(inv.hosts(), &selected).unwrap();
        let (direct, subtrees) = split(&selected, &hops);
        assert_eq!(direct, [3]);
        assert_eq!(subtrees.len(), 1);
        let s = &subtrees[0];
        assert_eq!(s.relay.name, "r0");
        assert_eq!(
            s.hosts.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(names(&s.hops), ["r1", "r2"]);
        // Below r0, r1 and r2 are direct; the leaves still go through them.
        assert_eq!(s.hops[0].settings.via, None);
        assert_eq!(s.hosts[0].1.settings.via.as_deref(), Some("r1"));
        let inner: Vec<Host> = s.hosts.iter().map(|(_, h)| h.clone()).collect();
        let (direct, subtrees) = split(&inner, &s.hops);
        assert!(direct.is_empty());
        assert_eq!(
            subtrees
                .iter()
                .map(|s| s.relay.name.as_str())
                .collect::<Vec<_>>(),
            ["r1", "r2"]
        );
        assert_eq!(subtrees[1].relay.settings.forward_agent, Some(true));
    }

    #[test]
    fn bad_vias_are_refused() {
        let inv = inventory("hosts:\n  a: {via: nowhere}\n");
        let all = inv.hosts();
        assert_eq!(
            hops(all, all).unwrap_err(),
            "host a: via nowhere: no such host in the inventory"
        );
        let inv = inventory("hosts:\n  a: {via: b}\n  b: {via: c}\n  c: {via: a}\n");
        let selected = inv.select(&["a".to_string()]).unwrap();
        assert_eq!(
            hops(inv.hosts(), &selected).unwrap_err(),
            "via loop: a -> b -> c -> a"
        );
        // via in the defaults: the relay itself is direct.
        let inv = inventory("defaults: {via: gw}\nhosts:\n  gw:\n  n1:\n");
        let selected = inv.select(&["n1".to_string()]).unwrap();
        assert_eq!(names(&hops(inv.hosts(), &selected).unwrap()), ["gw"]);
    }

    #[test]
    fn the_tree_shows_relays_above_their_hosts() {
        let inv = inventory(TREE);
        let selected = inv.select(&["a1,b1,d1".to_string()]).unwrap();
        let hops = hops(inv.hosts(), &selected).unwrap();
        let lines = tree(&selected, &hops, |h| h.name.clone());
        assert_eq!(
            lines,
            [
                "d1",
                "r0  (relay only)",
                "  r1  (relay only)",
                "    a1",
                "  r2  (relay only)",
                "    b1"
            ]
        );
    }

    #[test]
    fn machines_are_named_as_rust_names_them() {
        assert_eq!(normal_arch("x86_64"), "x86_64");
        assert_eq!(normal_arch("arm64"), "aarch64");
        assert_eq!(normal_arch("armv7l"), "arm");
        let me = std::env::current_exe().unwrap();
        assert_eq!(elf_arch(&me), Some(std::env::consts::ARCH));
    }
}
