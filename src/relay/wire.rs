//! What travels between an initiator and a relay: one frame after another,
//! each a 4-byte big-endian length and that many bytes of JSON.
//!
//! Down (the relay's stdin): one `Down::Plan`, then optionally
//! `Down::Converge` and `Down::Cancel`; the end of stdin means cancel too.
//! Up (its stdout): `Up::Hello` first, then the subtree's events with host
//! ids that index the plan's `hosts`, then `Up::Relays` and `Up::Done`, and
//! in between `Up::Alive` whenever it has been quiet for a while, so that a
//! hung relay is told from a busy one. Both ends check [`VERSION`]; a frame
//! that does not parse ends the exchange, it is never skipped.
//!
//! Frames carry the domain types themselves ([`Event`], [`Host`],
//! [`Access`], [`SshOptions`]…) through serde, so that a new field cannot be
//! forgotten in a hand-written copy. The few field encodings they need
//! (bytes as base64, durations as milliseconds, secrets as their text) are
//! the small `with` modules here.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::auth::Access;
use crate::events::{Event, StageStats};
use crate::fleet::PtyMode;
use crate::inventory::Host;
use crate::session::SshOptions;

/// The protocol's version; both ends must speak the same. 2: frames carry
/// the domain types (events, hosts, access) as serde writes them. 3:
/// results come in pieces (`results_part`, then `collected`), and the plan
/// carries `max_results`. 4: copy and fetch go through relays (the
/// `copy` and `fetch` jobs; a fetched tar comes up as `results_part`s).
pub const VERSION: u32 = 4;

/// A relay sends `Up::Alive` this often when it has nothing else to say.
pub const ALIVE_EVERY: Duration = Duration::from_secs(5);

/// A relay that sends nothing for this long is taken for hung.
pub const SILENCE: Duration = Duration::from_secs(30);

/// A frame larger than this is garbage, not a frame: events carry big data
/// (results archives) in pieces of [`crate::events::RESULTS_PART`] bytes,
/// and a plan's hosts and passwords fit many times over.
const MAX_FRAME: usize = 1 << 30;

/// Initiator → relay.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub(crate) enum Down {
    /// What the relay is to do.
    Plan(Box<Plan>),
    /// Stop the run (as Ctrl-C would).
    Cancel,
    /// The whole run converged (`--converged-timeout`): stop what still runs,
    /// collect and report.
    Converge,
}

/// Relay → initiator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub(crate) enum Up {
    /// First frame: the relay's protocol version.
    Hello { version: u32 },
    /// One event of the subtree's run; its host id indexes the plan's hosts.
    Event { event: Event },
    /// The relays below this one (depth 2 and more), for the summary.
    Relays { reports: Vec<RelayReport> },
    /// The last frame: every host of the plan has finished.
    Done,
    /// Nothing to report, but alive (every [`ALIVE_EVERY`] at the least).
    Alive,
}

/// A subtree's run, as the relay receives it: the parts of the initiator's
/// run spec that a relay can use (not the payload itself, which is staged
/// apart, nor the initiator's ssh config file, which is not on the relay).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Plan {
    /// [`VERSION`], checked again by the relay.
    pub version: u32,
    /// The run's id on the initiator.
    pub run_id: String,
    /// This relay's place in the tree (`r1`, `r1/r2`), for messages.
    pub path: String,
    /// The hosts the job runs on, behind this relay (their `via` is cleared
    /// where it named this relay); event host ids index this list.
    pub hosts: Vec<Host>,
    /// Relays further down that are not job hosts themselves.
    pub hops: Vec<Host>,
    /// What runs on the hosts.
    pub job: PlannedJob,
    /// `--timeout`.
    #[serde(rename = "timeout_ms", with = "crate::encoding::millis_opt")]
    pub timeout: Option<Duration>,
    /// `--forks`.
    pub forks: usize,
    /// `--pty`.
    pub pty: PtyMode,
    /// `--kex`, `--connect-timeout`, `--host-key-checking` (strict on the
    /// relay when unset: the lines that came with the plan are all there is
    /// to trust).
    pub ssh: SshOptions,
    /// known_hosts lines for every host of the subtree.
    pub known_hosts: String,
    /// Passwords and sudo, one entry per host of `hosts`. They travel inside
    /// the SSH connection, on the relay's stdin, and stay in its memory.
    pub access: Vec<Access>,
    /// `--converged-timeout`: the relay tries unreachable hosts again and
    /// waits for [`Down::Converge`] (the initiator decides when).
    #[serde(rename = "converge_ms", with = "crate::encoding::millis_opt")]
    pub converge: Option<Duration>,
    /// `--repeat`.
    #[serde(rename = "repeat_ms", with = "crate::encoding::millis_opt")]
    pub repeat: Option<Duration>,
    /// `--max-results`.
    pub max_results: u64,
}

/// The job of a plan: a payload job names the copy staged on the relay
/// (and its digest, to check it by), not the files.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum PlannedJob {
    /// A shell command.
    Command { command: String },
    /// The payload the initiator staged on the relay.
    Payload {
        /// Where the payload was staged on the relay.
        dir: String,
        /// Its digest on the initiator.
        digest: String,
        /// Arguments for the entry point.
        args: Vec<String>,
        /// Keep it in the hosts' caches.
        cache: bool,
    },
    /// `pushrun clean`.
    Clean,
    /// `pushrun copy`: the archive the initiator staged on the relay, as a
    /// one-file payload named [`COPY_ARCHIVE`].
    Copy {
        /// Where the archive's payload was staged on the relay.
        dir: String,
        /// That payload's digest on the initiator.
        digest: String,
        /// Where the files go on the hosts.
        dest: String,
        /// The archive's top-level names.
        names: Vec<String>,
    },
    /// `pushrun fetch`: what the hosts send comes back up unopened.
    Fetch {
        /// Paths on the hosts.
        paths: Vec<String>,
        /// The most bytes one host may send.
        max_bytes: u64,
    },
}

/// The copy's archive's name in the one-file payload staged on a relay.
pub(crate) const COPY_ARCHIVE: &str = "copy.tar";

/// What one relay did, for `summary.json` (`relays`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RelayReport {
    /// The relay's place in the tree: `r1`, `r1/r2`.
    pub path: String,
    /// `ok`, or why the relay failed its subtree.
    pub status: String,
    /// Why, when not ok.
    pub reason: Option<String>,
    /// How many job hosts it served.
    pub hosts: usize,
    /// Opening the connection to it.
    pub connect_ms: u64,
    /// Checking and sending the pushrun binary and the payload.
    pub stage_ms: u64,
    /// From starting `pushrun relay` to its last frame.
    pub run_ms: u64,
    /// Staging the pushrun binary.
    pub binary: StageStats,
    /// Staging the payload (payload runs).
    pub payload: Option<StageStats>,
    /// Every byte written to the relay: staging, plan, cancel.
    pub bytes_sent: u64,
    /// Every byte read from it: staging answers and frames.
    pub bytes_received: u64,
    /// The last lines `pushrun relay` wrote to its stderr.
    pub log: Vec<String>,
}

/// Why a frame could not be read.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The stream ended between a frame's first byte and its last.
    #[error("the stream ended inside a frame")]
    Cut,
    /// Reading failed.
    #[error("reading a frame")]
    Read(#[source] std::io::Error),
    /// The length is beyond any real frame: someone else writes there.
    #[error("not a frame (length {0}): garbage on the channel?")]
    Garbage(usize),
    /// The body is not the JSON of a frame.
    #[error("bad frame")]
    Malformed(#[source] serde_json::Error),
}

/// Writes one frame; returns how many bytes that took.
pub(crate) async fn write_frame<W, T>(out: &mut W, frame: &T) -> std::io::Result<u64>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = serde_json::to_vec(frame).map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    out.write_all(&len.to_be_bytes()).await?;
    out.write_all(&body).await?;
    Ok(4 + body.len() as u64)
}

/// Reads one frame: `Ok(None)` at a clean end of the stream (between
/// frames), `Err` for a cut or malformed frame. The second value is the
/// frame's size in bytes.
pub(crate) async fn read_frame<R, T>(input: &mut R) -> Result<Option<(T, u64)>, FrameError>
where
    R: AsyncRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match input.read(&mut len[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Cut),
            Ok(n) => got += n,
            Err(e) => return Err(FrameError::Read(e)),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::Garbage(len));
    }
    let mut body = vec![0u8; len];
    input
        .read_exact(&mut body)
        .await
        .map_err(|_| FrameError::Cut)?;
    let frame = serde_json::from_slice(&body).map_err(FrameError::Malformed)?;
    Ok(Some((frame, 4 + len as u64)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::{Become, Secret};
    use crate::events::{HostOutcome, Status, Stream, Timings};
    use crate::session::{HostKeyChecking, Kex};

    async fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(frames: &[T]) -> Vec<T> {
        let mut wire = Vec::new();
        for f in frames {
            write_frame(&mut wire, f).await.unwrap();
        }
        let mut input = &wire[..];
        let mut got = Vec::new();
        while let Some((frame, _)) = read_frame::<_, T>(&mut input).await.unwrap() {
            got.push(frame);
        }
        got
    }

    #[tokio::test]
    async fn events_survive_the_round_trip() {
        let events = vec![
            Event::Connecting(0),
            Event::Output {
                host: 1,
                stream: Stream::Stderr,
                line: b"not utf-8 \xff".to_vec(),
                complete: false,
            },
            Event::ResultsPart(1, vec![0, 1, 2, 255]),
            Event::Collected(1),
            Event::Retrying {
                host: 2,
                reason: "connection refused".into(),
                delay: Duration::from_secs(4),
            },
            Event::Finished(
                0,
                HostOutcome {
                    status: Status::TimedOut,
                    exit_code: None,
                    reason: Some("killed".into()),
                    notes: vec!["a note".into()],
                    timings: Timings {
                        run: Duration::from_millis(1234),
                        ..Timings::default()
                    },
                    stage: Some(StageStats {
                        cache_hit: true,
                        files_sent: 2,
                        bytes_sent: 3,
                        bytes_received: 4,
                    }),
                },
            ),
        ];
        let shown: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
        let mut frames: Vec<Up> = events
            .into_iter()
            .map(|event| Up::Event { event })
            .collect();
        frames.push(Up::Done);
        let got = round_trip(&frames).await;
        assert_eq!(got.len(), 7);
        for (frame, want) in got.iter().zip(&shown) {
            let Up::Event { event } = frame else {
                panic!("{frame:?}")
            };
            assert_eq!(&format!("{event:?}"), want);
        }
        assert!(matches!(got[6], Up::Done));
    }

    #[tokio::test]
    async fn a_plan_carries_the_run_spec_and_its_secrets_but_does_not_show_them() {
        let access = Access {
            password: Some(Arc::new(Secret::new("hunter2".into()))),
            become_: Some(Become {
                user: "root".into(),
                password: Some(Arc::new(Secret::new("s3cret".into()))),
            }),
            pty_auto: true,
        };
        let plan = Plan {
            version: VERSION,
            run_id: "run".into(),
            path: "r1/r2".into(),
            hosts: Vec::new(),
            hops: Vec::new(),
            job: PlannedJob::Command {
                command: "true".into(),
            },
            timeout: Some(Duration::from_millis(1500)),
            forks: 7,
            pty: PtyMode::Auto,
            ssh: SshOptions {
                config_file: Some("/home/me/.ssh/config".into()),
                kex: Kex::Fast,
                connect_timeout: Duration::from_secs(9),
                host_key_checking: Some(HostKeyChecking::AcceptNew),
                persist: Duration::ZERO,
            },
            known_hosts: String::new(),
            access: vec![access],
            converge: None,
            repeat: Some(Duration::from_secs(2)),
            max_results: 1 << 30,
        };
        let text = serde_json::to_string(&Down::Plan(Box::new(plan))).unwrap();
        assert!(text.contains(r#""pty":"auto""#), "{text}");
        assert!(
            text.contains(r#""host_key_checking":"accept-new""#),
            "{text}"
        );
        assert!(text.contains(r#""timeout_ms":1500"#), "{text}");
        assert!(!text.contains(".ssh/config"), "{text}");
        let got = round_trip(&[serde_json::from_str::<Down>(&text).unwrap()]).await;
        let [Down::Plan(plan)] = &got[..] else {
            panic!("{got:?}")
        };
        assert_eq!(plan.ssh.config_file, None);
        assert_eq!(plan.ssh.connect_timeout, Duration::from_secs(9));
        assert_eq!(plan.repeat, Some(Duration::from_secs(2)));
        let access = &plan.access[0];
        assert_eq!(access.password.as_ref().unwrap().expose(), "hunter2");
        let become_ = access.become_.as_ref().unwrap();
        assert_eq!(become_.password.as_ref().unwrap().expose(), "s3cret");
        let shown = format!("{plan:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn copy_and_fetch_jobs_name_the_staged_archive_and_the_limit() {
        let copy = PlannedJob::Copy {
            dir: "/var/tmp/.pushrun-me/runs/r1/payload".into(),
            digest: "abc".into(),
            dest: "/opt/app".into(),
            names: vec!["bin".into(), "conf".into()],
        };
        let fetch = PlannedJob::Fetch {
            paths: vec!["/etc/hostname".into()],
            max_bytes: 1 << 20,
        };
        let text = serde_json::to_string(&[copy, fetch]).unwrap();
        assert!(text.contains(r#""kind":"copy""#), "{text}");
        assert!(text.contains(r#""kind":"fetch""#), "{text}");
        let back: Vec<PlannedJob> = serde_json::from_str(&text).unwrap();
        let [
            PlannedJob::Copy { dest, names, .. },
            PlannedJob::Fetch { max_bytes, .. },
        ] = &back[..]
        else {
            panic!("{back:?}")
        };
        assert_eq!(
            (dest.as_str(), names.len(), *max_bytes),
            ("/opt/app", 2, 1 << 20)
        );
    }

    #[test]
    fn a_relay_report_keeps_its_summary_shape() {
        let report = RelayReport {
            path: "r1".into(),
            status: "ok".into(),
            binary: StageStats {
                files_sent: 1,
                ..StageStats::default()
            },
            ..RelayReport::default()
        };
        let value = serde_json::to_value(&report).unwrap();
        let want = serde_json::json!({
            "path": "r1", "status": "ok", "reason": null, "hosts": 0,
            "connect_ms": 0, "stage_ms": 0, "run_ms": 0,
            "binary": {"cache_hit": false, "files_sent": 1, "bytes_sent": 0, "bytes_received": 0},
            "payload": null, "bytes_sent": 0, "bytes_received": 0, "log": []
        });
        assert_eq!(value, want);
    }

    #[tokio::test]
    async fn a_cut_frame_is_an_error_and_garbage_is_refused() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &Up::Done).await.unwrap();
        let mut cut = &wire[..wire.len() - 1];
        assert!(matches!(
            read_frame::<_, Up>(&mut cut).await,
            Err(FrameError::Cut)
        ));
        let mut garbage = &b"hello from a noisy .bashrc\n"[..];
        let error = read_frame::<_, Up>(&mut garbage).await.unwrap_err();
        assert!(error.to_string().contains("not a frame"), "{error}");
        let mut empty = &b""[..];
        assert!(read_frame::<_, Up>(&mut empty).await.unwrap().is_none());
    }
}
