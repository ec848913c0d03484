//! The initiator's side of one relay (seen from the level above it): connect
//! to it, check that it can run the pushrun binary, stage that and the
//! payload there, start `pushrun relay` with the subtree's plan, and turn
//! the frames it sends back into the leaves' events. Staging is in
//! `staging`.
//!
//! Whatever goes wrong on the way is one [`RelayError`]: its status and text
//! become the outcome of every host of the subtree that has not finished,
//! and the relay's entry in the summary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::landing::Landing;
use super::wire::{self, Down, FrameError, PlannedJob, RelayReport, Up};
use super::{BinaryError, Relaying, known_hosts, renumber, tree::Subtree};
use crate::events::{Event, HostId, HostOutcome, Status, Timings};
use crate::fleet::{self, Job, RunSpec, error_chain, raised as cancelled};
use crate::inventory::Host;
use crate::remote::AfterFrame;
use crate::session::{ControlDir, Session};

mod staging;

use crate::fleet::StageError;
use staging::{Staged, stage_failure};

/// Starts `pushrun relay` on a relay and removes its run dirs after.
const START: &str = concat!(
    include_str!(concat!(env!("OUT_DIR"), "/remote/lib.sh")),
    include_str!(concat!(env!("OUT_DIR"), "/relay/start.sh"))
);
/// How long a cancelled relay gets to stop its hosts and say so.
const RELAY_STOP_GRACE: Duration = Duration::from_secs(20);
/// Lines of a relay's stderr kept for the summary.
const LOG_LINES: usize = 20;

/// One top relay's part of the run, seen from the level above it.
pub(super) struct RelayTask {
    /// Its control socket's number.
    pub(super) slot: usize,
    /// The relay and the hosts behind it.
    pub(super) subtree: Subtree,
    /// The run's relay settings.
    pub(super) relaying: Arc<Relaying>,
    /// The run.
    pub(super) spec: Arc<RunSpec>,
    /// Where relays' control sockets live.
    pub(super) dir: Arc<ControlDir>,
    /// The ssh config relays are reached with.
    pub(super) config: Arc<PathBuf>,
    /// Where the leaves' events go, with this level's host ids.
    pub(super) events: mpsc::Sender<Event>,
    /// Raised when the run is interrupted.
    pub(super) cancel: watch::Receiver<bool>,
    /// Raised when the run converged (`--converged-timeout`).
    pub(super) converged: watch::Receiver<bool>,
}

/// What a relay's part of the run has come to so far.
struct Tally {
    /// The relay's summary entry.
    report: RelayReport,
    /// Which hosts of the subtree have finished (their outcome was sent).
    finished: Vec<bool>,
    /// The relays below it, as it reported them.
    nested: Vec<RelayReport>,
    /// Where a fetch's files from its hosts land.
    landing: Option<Landing>,
}

/// Why a relay could not serve (the rest of) its subtree.
#[derive(Debug, Error)]
enum RelayError {
    /// Cancelled before the relay's connection was up.
    #[error("interrupted while connecting to relay {relay}")]
    InterruptedConnecting { relay: String },
    /// Unreachable, or staging failed: the host's status and the reason
    /// shown, as fleet words them for any host.
    #[error("{reason}")]
    Shown { status: Status, reason: String },
    /// The connection broke while staging.
    #[error("relay {relay}: connection lost")]
    Lost {
        relay: String,
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The relay cannot run the pushrun binary there is.
    #[error(
        "relay {relay}: it runs {runs}, {binary} is built for {built_for}: give a pushrun built for it with --relay-binary PATH"
    )]
    WrongMachine {
        relay: String,
        /// The relay's OS and machine, as `uname` says them.
        runs: String,
        /// Which binary: "this pushrun" or its path.
        binary: String,
        /// The binary's OS and machine, in Rust's words.
        built_for: String,
    },
    /// A copy's archive cannot be read to stage it.
    #[error("relay {relay}: the copy's archive: {reason}")]
    Archive { relay: String, reason: String },
    /// The pushrun binary for relays cannot be had.
    #[error("relay {relay}")]
    Binary {
        relay: String,
        #[source]
        source: Arc<BinaryError>,
    },
    /// ssh could not be started for `pushrun relay`.
    #[error("relay {relay}: cannot start ssh")]
    Spawn {
        relay: String,
        #[source]
        source: std::io::Error,
    },
    /// `pushrun relay` gave no stdout to read frames from.
    #[error("relay {relay}: no output stream")]
    NoOutput { relay: String },
    /// `pushrun relay` ended, or was given up on, before its Done frame.
    /// The relay's last log line comes after the cause, so the cause is part
    /// of this message rather than a source.
    #[error("relay {relay}: {how}{}", after_colon(.last))]
    Ended {
        relay: String,
        how: Ending,
        last: Option<String>,
        cancelled: bool,
    },
}

impl RelayError {
    /// The status the relay's unfinished hosts end with.
    fn status(&self) -> Status {
        match self {
            RelayError::Shown { status, .. } => *status,
            RelayError::InterruptedConnecting { .. } => Status::Cancelled,
            RelayError::WrongMachine { .. }
            | RelayError::Binary { .. }
            | RelayError::Archive { .. } => Status::Failed,
            RelayError::Lost { .. } | RelayError::Spawn { .. } | RelayError::NoOutput { .. } => {
                Status::Unreachable
            }
            RelayError::Ended {
                cancelled: true, ..
            } => Status::Cancelled,
            RelayError::Ended { .. } => Status::Unreachable,
        }
    }
}

/// `: text`, or nothing.
fn after_colon(text: &Option<String>) -> String {
    text.as_ref().map(|t| format!(": {t}")).unwrap_or_default()
}

/// How the exchange with a running `pushrun relay` went wrong.
#[derive(Debug, Error)]
enum Ending {
    /// A frame could not be read.
    #[error("{}", error_chain(.0))]
    Frame(FrameError),
    /// It speaks another version of the protocol.
    #[error(
        "speaks relay protocol {0}, not {v} (stage the same pushrun with --relay-binary)",
        v = wire::VERSION
    )]
    Version(u32),
    /// Its first frame was not a hello.
    #[error("sent a frame before its hello")]
    NoHello,
    /// An event for a host the plan does not have.
    #[error("frame for unknown host {0}")]
    UnknownHost(HostId),
    /// Cancelled, it did not finish in time.
    #[error("did not stop within {}s of being cancelled", RELAY_STOP_GRACE.as_secs())]
    NoStop,
    /// It went quiet.
    #[error("no word from it for {}s: hung?", wire::SILENCE.as_secs())]
    Silent,
    /// Its output ended, and ssh said the connection was lost.
    #[error("connection lost")]
    ConnectionLost,
    /// Its output ended, and it exited.
    #[error("ended without finishing (exit {0})")]
    Exited(i32),
    /// Its output ended, and it was killed.
    #[error("ended without finishing (killed)")]
    Killed,
}

/// How the exchange of frames ended.
enum Close {
    /// The relay said Done: every host of the plan finished.
    Done,
    /// Its output ended without a Done.
    Ended,
    /// It broke the protocol or was given up on.
    Broken(Ending),
}

impl RelayTask {
    /// Serves the subtree through the relay; returns the relay's summary
    /// entry and those of the relays below it.
    pub(super) async fn run(mut self) -> Vec<RelayReport> {
        let name = self.subtree.relay.name.clone();
        let mut tally = Tally {
            report: RelayReport {
                path: name.clone(),
                status: "ok".into(),
                hosts: self.subtree.hosts.len(),
                ..RelayReport::default()
            },
            finished: vec![false; self.subtree.hosts.len()],
            nested: Vec::new(),
            landing: Landing::of(&self.spec),
        };
        if let Err(e) = self.serve(&mut tally).await {
            let (status, reason) = (e.status(), error_chain(&e));
            tally.report.status = status.as_str().to_string();
            tally.report.reason = Some(reason.clone());
            let unfinished = self
                .subtree
                .hosts
                .iter()
                .zip(&tally.finished)
                .filter(|(_, done)| !**done);
            for ((id, _), _) in unfinished {
                let o = HostOutcome::without_exit(status, reason.clone(), Timings::default());
                let _ = self.events.send(Event::Finished(*id, o)).await;
            }
        }
        let mut all = vec![tally.report];
        all.extend(tally.nested.into_iter().map(|mut n| {
            n.path = format!("{name}/{}", n.path);
            n
        }));
        all
    }

    /// Connects, stages, starts the relay and relays its frames.
    async fn serve(&mut self, tally: &mut Tally) -> Result<(), RelayError> {
        let mut relay = self.subtree.relay.clone();
        let agent = relay.settings.forward_agent == Some(true);
        if agent {
            std::sync::Arc::make_mut(&mut relay.settings)
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
        let lines = known_hosts::lines_for(&self.relaying.known_hosts, &self.config, &everyone);
        let known = tokio::select! {
            k = lines => k,
            _ = cancelled(&mut self.cancel) => return Err(RelayError::InterruptedConnecting {
                relay: relay.name.clone(),
            }),
        };
        let session = self.connect(&relay).await?;
        tally.report.connect_ms = started.elapsed().as_millis() as u64;
        let result = self.on_session(&session, agent, known, tally).await;
        session.close().await;
        result
    }

    /// Opens the connection to the relay, as to any host (retried in
    /// unattended runs). Relays log in with keys (or the agent): passwords
    /// are for job hosts.
    async fn connect(&self, relay: &Host) -> Result<Session, RelayError> {
        let (mut cancel, mut converged) = (self.cancel.clone(), self.converged.clone());
        let (first, events) = self.busy_as();
        let name = format!("relay {}", relay.name);
        let dial = fleet::Dial {
            dir: &self.dir,
            slot: self.slot,
            config: &self.config,
            host: relay,
            ssh: &self.spec.ssh,
            password: None,
            retry: self.spec.converge.is_some(),
            shown_as: first,
            relay: Some(&name),
        };
        fleet::connect(dial, &events, &mut cancel, &mut converged)
            .await
            .map_err(|(status, reason)| RelayError::Shown { status, reason })
    }

    /// Whom a relay's own work is shown as ([`Event::Busy`]: its first
    /// host), and the channel to say it on.
    fn busy_as(&self) -> (HostId, mpsc::Sender<Event>) {
        let first = self.subtree.hosts.first().map(|(id, _)| *id);
        (first.unwrap_or_default(), self.events.clone())
    }

    /// Stages, starts `pushrun relay` and relays its frames until it is done.
    async fn on_session(
        &self,
        session: &Session,
        agent: bool,
        known_hosts: String,
        tally: &mut Tally,
    ) -> Result<(), RelayError> {
        let relay = self.subtree.relay.name.clone();
        let started = Instant::now();
        let mut cancel = self.cancel.clone();
        let (first, events) = self.busy_as();
        let staged = tokio::select! {
            r = fleet::busy(self.stage(session, &mut tally.report), first, &events) => r,
            _ = cancelled(&mut cancel) => Err(stage_failure(StageError::Cancelled, &relay, "payload")),
        };
        tally.report.stage_ms = started.elapsed().as_millis() as u64;
        let staged = staged?;
        let Some(plan) = self.plan(staged.payload_dir.clone(), known_hosts) else {
            return Err(RelayError::Shown {
                status: Status::Failed,
                reason: format!("relay {relay}: nothing was staged for the job"),
            });
        };
        let started = Instant::now();
        let mut process = RelayProcess::start(session, agent, &staged, &relay).await?;
        process
            .send(&Down::Plan(Box::new(plan)), &mut tally.report)
            .await;
        let close = self.exchange(&mut process, tally).await;
        tally.report.run_ms = started.elapsed().as_millis() as u64;
        let broken = matches!(close, Close::Broken(_));
        let (code, log) = process.stop(broken).await;
        tally.report.log = log;
        let how = match (close, code) {
            (Close::Done, _) => return Ok(()),
            (Close::Broken(how), _) => how,
            (Close::Ended, Some(255)) => Ending::ConnectionLost,
            (Close::Ended, Some(c)) => Ending::Exited(c),
            (Close::Ended, None) => Ending::Killed,
        };
        let last = tally.report.log.iter().rev().map(|l| l.trim());
        Err(RelayError::Ended {
            relay,
            how,
            last: last.filter(|l| !l.is_empty()).map(str::to_string).next(),
            cancelled: *self.cancel.borrow(),
        })
    }

    /// Reads the relay's frames until it is done, breaks the protocol, goes
    /// quiet, or does not stop in time once cancelled.
    async fn exchange(&self, process: &mut RelayProcess, tally: &mut Tally) -> Close {
        let (mut cancel, mut converged) = (self.cancel.clone(), self.converged.clone());
        // Whether the relay said hello (in our protocol version).
        let mut hello = false;
        // When it last sent a frame: silence beyond wire::SILENCE is a hang.
        let mut heard = tokio::time::Instant::now();
        // Once cancelled: how long the relay has to stop its hosts.
        let mut deadline: Option<tokio::time::Instant> = None;
        // Whether it was told that the run converged (once is enough).
        let mut told_converged = false;
        loop {
            let limit = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                frame = process.frames.recv() => {
                    let (frame, size) = match frame {
                        Some(Ok(Some(f))) => f,
                        None | Some(Ok(None)) => return Close::Ended,
                        Some(Err(e)) => return Close::Broken(Ending::Frame(e)),
                    };
                    tally.report.bytes_received += size;
                    if let Some(close) = self.on_frame(frame, &mut hello, tally).await {
                        return close;
                    }
                    // after the frame: landing a fetch's files can take a while
                    heard = tokio::time::Instant::now();
                }
                _ = cancelled(&mut cancel), if deadline.is_none() => {
                    process.cancel(&mut tally.report).await;
                    deadline = Some(tokio::time::Instant::now() + RELAY_STOP_GRACE);
                }
                _ = cancelled(&mut converged), if !told_converged => {
                    // The whole run converged: the relay stops what still
                    // runs behind it, collects, and reports as usual.
                    told_converged = true;
                    process.send(&Down::Converge, &mut tally.report).await;
                }
                _ = limit => return Close::Broken(Ending::NoStop),
                _ = tokio::time::sleep_until(heard + wire::SILENCE) => {
                    return Close::Broken(Ending::Silent);
                }
            }
        }
    }

    /// Takes in one frame; `Some` when it ends the exchange.
    async fn on_frame(&self, frame: Up, hello: &mut bool, tally: &mut Tally) -> Option<Close> {
        match frame {
            Up::Hello { version } if version == wire::VERSION => *hello = true,
            Up::Hello { version } => return Some(Close::Broken(Ending::Version(version))),
            _ if !*hello => return Some(Close::Broken(Ending::NoHello)),
            Up::Relays { reports } => tally.nested.extend(reports),
            Up::Done => return Some(Close::Done),
            Up::Alive => {}
            Up::Event { mut event } => {
                // The relay numbers its hosts from 0; here they have ids of this level.
                let local = *event.host_mut();
                let Some((id, host)) = self.subtree.hosts.get(local) else {
                    return Some(Close::Broken(Ending::UnknownHost(local)));
                };
                if let Some(landing) = tally.landing.as_mut() {
                    // a fetch's files land here, not with the reporter
                    match event {
                        Event::ResultsPart(_, part) => {
                            landing.part(local, &part);
                            return None;
                        }
                        Event::Collected(_) => return None,
                        Event::Finished(_, outcome) => {
                            let outcome = landing.finish(local, host, outcome).await;
                            event = Event::Finished(local, outcome);
                        }
                        _ => {}
                    }
                }
                if let Event::Finished(..) = event {
                    tally.finished[local] = true;
                }
                let _ = self.events.send(renumber(event, |_| *id)).await;
            }
        }
        None
    }

    /// The relay's plan (none for a job whose files were not staged).
    fn plan(
        &self,
        payload_dir: Option<(String, String)>,
        known_hosts: String,
    ) -> Option<wire::Plan> {
        let spec = &self.spec;
        let job = match (&spec.job, payload_dir) {
            (Job::Payload(j), Some((dir, digest))) => PlannedJob::Payload {
                dir,
                digest,
                args: j.args.clone(),
                cache: j.cache,
            },
            (Job::Copy(c), Some((dir, digest))) => PlannedJob::Copy {
                dir,
                digest,
                dest: c.dest.clone(),
                names: c.names.clone(),
            },
            (Job::Fetch(f), _) => PlannedJob::Fetch {
                paths: f.paths.clone(),
                max_bytes: f.max_bytes,
            },
            (Job::Command(c), _) => PlannedJob::Command { command: c.clone() },
            (Job::Clean, _) => PlannedJob::Clean,
            // staging gives these a dir, always
            (Job::Payload(_) | Job::Copy(_), None) => return None,
        };
        Some(wire::Plan {
            version: wire::VERSION,
            run_id: self.relaying.run_id.clone(),
            path: self.subtree.relay.name.clone(),
            hosts: self.subtree.hosts.iter().map(|(_, h)| h.clone()).collect(),
            hops: self.subtree.hops.clone(),
            job,
            timeout: spec.timeout,
            forks: spec.forks,
            pty: spec.pty,
            ssh: spec.ssh.clone(),
            known_hosts,
            access: self
                .subtree
                .hosts
                .iter()
                .map(|(id, _)| spec.access(*id))
                .collect(),
            converge: spec.converge,
            repeat: spec.repeat,
            max_results: spec.max_results,
        })
    }
}

/// A started `pushrun relay`: its ssh client, the frames it sends up (read
/// by a task of their own: reading one is not cancel-safe, and the exchange
/// also waits for cancellation) and the tail of its log.
struct RelayProcess {
    /// The ssh client running the start script.
    child: Child,
    /// Its stdin, for plan, converge and cancel frames; `None` once closed.
    stdin: Option<ChildStdin>,
    /// The frames it sent, as read.
    frames: mpsc::Receiver<Result<Option<(Up, u64)>, FrameError>>,
    /// The task reading them.
    reader: JoinHandle<()>,
    /// The task keeping the last [`LOG_LINES`] of its stderr.
    log: JoinHandle<Vec<String>>,
}

impl RelayProcess {
    /// Starts the staged pushrun as a relay on `session`.
    async fn start(
        session: &Session,
        agent: bool,
        staged: &Staged,
        relay: &str,
    ) -> Result<RelayProcess, RelayError> {
        let opts: &[&str] = if agent {
            &["-o", "ForwardAgent=yes"]
        } else {
            &[]
        };
        let mut args = vec![staged.base.as_str(), staged.binary.as_str()];
        args.extend(staged.run_dirs.iter().map(String::as_str));
        let mut child = session
            .spawn_client(opts, START, "pushrun-relay", &args)
            .await
            .map_err(|source| RelayError::Spawn {
                relay: relay.to_string(),
                source,
            })?;
        let stdin = child.stdin.take();
        // the relay's frames and log start after the login's noise
        let log = tokio::spawn(log_tail(child.stderr.take().map(AfterFrame::new)));
        let Some(stdout) = child.stdout.take().map(AfterFrame::new) else {
            return Err(RelayError::NoOutput {
                relay: relay.to_string(),
            });
        };
        let (frames_tx, frames) = mpsc::channel(256);
        let reader = tokio::spawn(read_frames(stdout, frames_tx));
        Ok(RelayProcess {
            child,
            stdin,
            frames,
            reader,
            log,
        })
    }

    /// Sends a frame down; a relay that cannot be written to any more is
    /// not written to again.
    async fn send(&mut self, frame: &Down, report: &mut RelayReport) {
        let Some(w) = self.stdin.as_mut() else {
            return;
        };
        let sent = wire::write_frame(w, frame).await;
        report.bytes_sent += sent.as_ref().copied().unwrap_or(0);
        if sent.is_err() || w.flush().await.is_err() {
            self.stdin = None;
        }
    }

    /// Cancels the relay's run: a Cancel frame, then the end of its stdin.
    /// It still reports how its hosts ended, then Done.
    async fn cancel(&mut self, report: &mut RelayReport) {
        if let Some(mut w) = self.stdin.take() {
            if let Ok(n) = wire::write_frame(&mut w, &Down::Cancel).await {
                report.bytes_sent += n;
            }
            let _ = w.shutdown().await;
        }
    }

    /// Ends the exchange; returns the relay's exit code (`None`: killed) and
    /// the last lines of its log. The relay exits after Done; its start
    /// script then removes its run dirs. One that `broke` the protocol or
    /// went quiet is not waited for.
    async fn stop(mut self, broke: bool) -> (Option<i32>, Vec<String>) {
        self.reader.abort();
        drop(self.stdin.take());
        let wait = Duration::from_secs(if broke { 0 } else { 10 });
        let code = match tokio::time::timeout(wait, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = self.child.kill().await;
                None
            }
        };
        let log = match tokio::time::timeout(Duration::from_secs(2), self.log).await {
            Ok(Ok(tail)) => tail,
            _ => Vec::new(),
        };
        (code, log)
    }
}

/// Reads frames from a relay's stdout into `frames` until the stream ends,
/// a frame is bad or nobody listens.
async fn read_frames(
    stdout: AfterFrame<ChildStdout>,
    frames: mpsc::Sender<Result<Option<(Up, u64)>, FrameError>>,
) {
    let mut input = tokio::io::BufReader::with_capacity(256 * 1024, stdout);
    loop {
        let frame = wire::read_frame::<_, Up>(&mut input).await;
        let end = !matches!(frame, Ok(Some(_)));
        if frames.send(frame).await.is_err() || end {
            break;
        }
    }
}

/// The last [`LOG_LINES`] lines of a relay's stderr.
async fn log_tail(stderr: Option<AfterFrame<tokio::process::ChildStderr>>) -> Vec<String> {
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
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn failures_read_as_before_and_end_hosts_with_their_status() {
        let lost = stage_failure(StageError::Lost("broken pipe".into()), "r1", "payload");
        assert_eq!(error_chain(&lost), "relay r1: connection lost: broken pipe");
        assert_eq!(lost.status(), Status::Unreachable);
        let ended = RelayError::Ended {
            relay: "r1".into(),
            how: Ending::Frame(FrameError::Garbage(99)),
            last: Some("oops".into()),
            cancelled: true,
        };
        assert_eq!(
            error_chain(&ended),
            "relay r1: not a frame (length 99): garbage on the channel?: oops"
        );
        assert_eq!(ended.status(), Status::Cancelled);
        let staging = stage_failure(
            StageError::Failed {
                reason: "no space".into(),
                base: None,
            },
            "r1",
            "payload",
        );
        assert_eq!(
            error_chain(&staging),
            "relay r1: staging the payload: no space"
        );
        assert_eq!(staging.status(), Status::Failed);
    }
}
