//! What travels between an initiator and a relay: one frame after another,
//! each a 4-byte big-endian length and that many bytes of JSON.
//!
//! Down (the relay's stdin): one `Down::Plan`, then optionally
//! `Down::Cancel`; the end of stdin means cancel too. Up (its stdout):
//! `Up::Hello` first, then the subtree's events with host ids that index
//! the plan's `hosts`, then `Up::Relays` and `Up::Done`, and in between
//! `Up::Alive` whenever it has been quiet for a while, so that a hung relay
//! is told from a busy one. Both ends check [`VERSION`]; a frame that does
//! not parse ends the exchange, it is never skipped.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::events::{Event, HostId, HostOutcome, StageStats, Status, Stream, Timings};
use crate::inventory::Host;

/// The protocol's version; both ends must speak the same.
pub const VERSION: u32 = 1;

/// A relay sends `Up::Alive` this often when it has nothing else to say.
pub const ALIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A relay that sends nothing for this long is taken for hung.
pub const SILENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// A frame larger than this is garbage, not a frame (results archives
/// included: they are held in memory whole anyway).
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
    /// [`Event::Connecting`].
    Connecting { host: HostId },
    /// [`Event::Connected`].
    Connected { host: HostId },
    /// [`Event::Output`]; `data` is base64.
    Output {
        host: HostId,
        stderr: bool,
        data: String,
        complete: bool,
    },
    /// [`Event::Collected`]; `archive` is base64.
    Collected { host: HostId, archive: String },
    /// [`Event::Finished`].
    Finished { host: HostId, outcome: Outcome },
    /// [`Event::Busy`].
    Busy { host: HostId },
    /// [`Event::Record`]; `data` is base64.
    Record { host: HostId, data: String },
    /// [`Event::Retrying`].
    Retrying {
        host: HostId,
        reason: String,
        delay_ms: u64,
    },
    /// [`Event::Repeated`].
    Repeated {
        host: HostId,
        run: u32,
        changed: bool,
        status: String,
    },
    /// The relays below this one (depth 2 and more), for the summary.
    Relays { reports: Vec<RelayReport> },
    /// The last frame: every host of the plan has finished.
    Done,
    /// Nothing to report, but alive (every [`ALIVE_EVERY`] at the least).
    Alive,
}

/// A subtree's run, as the relay receives it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Plan {
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
    pub job: Job,
    pub timeout_ms: Option<u64>,
    pub forks: usize,
    /// `--pty`, `--kex` and `--host-key-checking` values, as on the command line.
    pub pty: String,
    pub kex: String,
    pub host_key_checking: Option<String>,
    pub connect_timeout_ms: u64,
    /// known_hosts lines for every host of the subtree.
    pub known_hosts: String,
    /// Passwords and sudo, one entry per host of `hosts`. They travel inside
    /// the SSH connection, on the relay's stdin, and stay in its memory.
    pub access: Vec<Access>,
    /// `--converged-timeout`: the relay tries unreachable hosts again and
    /// waits for [`Down::Converge`] (the initiator decides when).
    pub converge_ms: Option<u64>,
    /// `--repeat`.
    pub repeat_ms: Option<u64>,
}

/// One host's [`crate::auth::Access`] on the wire.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Access {
    pub password: Option<String>,
    pub become_user: Option<String>,
    pub become_password: Option<String>,
    pub pty_auto: bool,
}

impl From<&crate::auth::Access> for Access {
    fn from(a: &crate::auth::Access) -> Access {
        Access {
            password: a.password.as_ref().map(|p| p.expose().to_string()),
            become_user: a.become_.as_ref().map(|b| b.user.clone()),
            become_password: a
                .become_
                .as_ref()
                .and_then(|b| b.password.as_ref())
                .map(|p| p.expose().to_string()),
            pty_auto: a.pty_auto,
        }
    }
}

impl Access {
    /// Back to what a host task uses.
    pub(crate) fn into_access(self) -> crate::auth::Access {
        use crate::auth::{Become, Secret};
        let secret = |p: Option<String>| p.map(|p| Arc::new(Secret::new(p)));
        crate::auth::Access {
            password: secret(self.password),
            become_: self.become_user.map(|user| Become {
                user,
                password: secret(self.become_password),
            }),
            pty_auto: self.pty_auto,
        }
    }
}

/// The job of a plan.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Job {
    Command {
        command: String,
    },
    Payload {
        /// Where the payload was staged on the relay.
        dir: String,
        digest: String,
        args: Vec<String>,
        cache: bool,
    },
    Clean,
}

/// A [`HostOutcome`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Outcome {
    pub status: String,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub notes: Vec<String>,
    /// connect, stage, run, collect, clean, in ms.
    pub timings_ms: [u64; 5],
    pub stage: Option<Staged>,
}

/// [`StageStats`] on the wire (and in the summary's relay entries).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Staged {
    /// Every cached file was there and right: nothing was sent.
    pub cache_hit: bool,
    /// Files sent because they were missing or wrong.
    pub files_sent: usize,
    /// Bytes written to the host.
    pub bytes_sent: u64,
    /// Bytes read back.
    pub bytes_received: u64,
}

impl From<StageStats> for Staged {
    fn from(s: StageStats) -> Staged {
        Staged {
            cache_hit: s.cache_hit,
            files_sent: s.files_sent,
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
        }
    }
}

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
    pub binary: Staged,
    /// Staging the payload (payload runs).
    pub payload: Option<Staged>,
    /// Every byte written to the relay: staging, plan, cancel.
    pub bytes_sent: u64,
    /// Every byte read from it: staging answers and frames.
    pub bytes_received: u64,
    /// The last lines `pushrun relay` wrote to its stderr.
    pub log: Vec<String>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("bad base64 in a frame: {e}"))
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn status_word(status: Status) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn parse_status(word: &str) -> Result<Status, String> {
    Status::ALL
        .into_iter()
        .find(|s| status_word(*s) == word)
        .ok_or_else(|| format!("unknown status {word:?} in a frame"))
}

impl Up {
    /// An event of the relay's run, as a frame.
    pub(crate) fn from_event(event: Event) -> Up {
        match event {
            Event::Connecting(host) => Up::Connecting { host },
            Event::Connected(host) => Up::Connected { host },
            Event::Output {
                host,
                stream,
                line,
                complete,
            } => Up::Output {
                host,
                stderr: stream == Stream::Stderr,
                data: b64(&line),
                complete,
            },
            Event::Collected(host, archive) => Up::Collected {
                host,
                archive: b64(&archive),
            },
            Event::Busy(host) => Up::Busy { host },
            Event::Record(host, line) => Up::Record {
                host,
                data: b64(&line),
            },
            Event::Retrying {
                host,
                reason,
                delay,
            } => Up::Retrying {
                host,
                reason,
                delay_ms: ms(delay),
            },
            Event::Repeated {
                host,
                run,
                changed,
                status,
            } => Up::Repeated {
                host,
                run,
                changed,
                status: status_word(status),
            },
            Event::Finished(host, o) => {
                let t = o.timings;
                Up::Finished {
                    host,
                    outcome: Outcome {
                        status: status_word(o.status),
                        exit_code: o.exit_code,
                        reason: o.reason,
                        notes: o.notes,
                        timings_ms: [
                            ms(t.connect),
                            ms(t.stage),
                            ms(t.run),
                            ms(t.collect),
                            ms(t.clean),
                        ],
                        stage: o.stage.map(Staged::from),
                    },
                }
            }
        }
    }

    /// The event this frame carries, with its host id mapped by `map`;
    /// `Ok(None)` for frames that are not events.
    pub(crate) fn into_event(
        self,
        map: impl Fn(HostId) -> Option<HostId>,
    ) -> Result<Option<Event>, String> {
        let id = |host: HostId| map(host).ok_or_else(|| format!("frame for unknown host {host}"));
        Ok(Some(match self {
            Up::Connecting { host } => Event::Connecting(id(host)?),
            Up::Connected { host } => Event::Connected(id(host)?),
            Up::Output {
                host,
                stderr,
                data,
                complete,
            } => Event::Output {
                host: id(host)?,
                stream: if stderr {
                    Stream::Stderr
                } else {
                    Stream::Stdout
                },
                line: unb64(&data)?,
                complete,
            },
            Up::Collected { host, archive } => Event::Collected(id(host)?, unb64(&archive)?),
            Up::Busy { host } => Event::Busy(id(host)?),
            Up::Record { host, data } => Event::Record(id(host)?, unb64(&data)?),
            Up::Retrying {
                host,
                reason,
                delay_ms,
            } => Event::Retrying {
                host: id(host)?,
                reason,
                delay: Duration::from_millis(delay_ms),
            },
            Up::Repeated {
                host,
                run,
                changed,
                status,
            } => Event::Repeated {
                host: id(host)?,
                run,
                changed,
                status: parse_status(&status)?,
            },
            Up::Finished { host, outcome: o } => {
                let [connect, stage, run, collect, clean] = o.timings_ms.map(Duration::from_millis);
                Event::Finished(
                    id(host)?,
                    HostOutcome {
                        status: parse_status(&o.status)?,
                        exit_code: o.exit_code,
                        reason: o.reason,
                        notes: o.notes,
                        timings: Timings {
                            connect,
                            stage,
                            run,
                            collect,
                            clean,
                        },
                        stage: o.stage.map(|s| StageStats {
                            cache_hit: s.cache_hit,
                            files_sent: s.files_sent,
                            bytes_sent: s.bytes_sent,
                            bytes_received: s.bytes_received,
                        }),
                    },
                )
            }
            Up::Hello { .. } | Up::Relays { .. } | Up::Done | Up::Alive => return Ok(None),
        }))
    }
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
pub(crate) async fn read_frame<R, T>(input: &mut R) -> Result<Option<(T, u64)>, String>
where
    R: AsyncRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match input.read(&mut len[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err("the stream ended inside a frame".into()),
            Ok(n) => got += n,
            Err(e) => return Err(format!("reading a frame: {e}")),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(format!(
            "not a frame (length {len}): garbage on the channel?"
        ));
    }
    let mut body = vec![0u8; len];
    input
        .read_exact(&mut body)
        .await
        .map_err(|_| "the stream ended inside a frame".to_string())?;
    let frame = serde_json::from_slice(&body).map_err(|e| format!("bad frame: {e}"))?;
    Ok(Some((frame, 4 + len as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_survive_the_round_trip_with_ids_mapped() {
        let events = vec![
            Event::Connecting(0),
            Event::Output {
                host: 1,
                stream: Stream::Stderr,
                line: b"not utf-8 \xff".to_vec(),
                complete: false,
            },
            Event::Collected(1, vec![0, 1, 2, 255]),
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
        let mut wire = Vec::new();
        for e in events {
            write_frame(&mut wire, &Up::from_event(e)).await.unwrap();
        }
        write_frame(&mut wire, &Up::Done).await.unwrap();
        let mut input = &wire[..];
        let mut got = Vec::new();
        while let Some((frame, _)) = read_frame::<_, Up>(&mut input).await.unwrap() {
            if let Some(e) = frame.into_event(|h| Some(h + 10)).unwrap() {
                got.push(format!("{e:?}"));
            }
        }
        assert_eq!(got.len(), 4);
        assert!(got[0].contains("Connecting(10)"), "{}", got[0]);
        assert!(
            got[1].contains("host: 11") && got[1].contains("255"),
            "{}",
            got[1]
        );
        assert!(
            got[2].contains("Collected(11, [0, 1, 2, 255])"),
            "{}",
            got[2]
        );
        assert!(
            got[3].contains("TimedOut")
                && got[3].contains("1.234s")
                && got[3].contains("files_sent: 2"),
            "{}",
            got[3]
        );
    }

    #[tokio::test]
    async fn a_cut_frame_is_an_error_and_garbage_is_refused() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &Up::Done).await.unwrap();
        let mut cut = &wire[..wire.len() - 1];
        assert!(read_frame::<_, Up>(&mut cut).await.is_err());
        let mut garbage = &b"hello from a noisy .bashrc\n"[..];
        assert!(
            read_frame::<_, Up>(&mut garbage)
                .await
                .unwrap_err()
                .contains("not a frame")
        );
        let mut empty = &b""[..];
        assert!(read_frame::<_, Up>(&mut empty).await.unwrap().is_none());
    }
}
