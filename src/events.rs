//! What happens to a host during a run, as data.
//!
//! Host tasks never print: they send [`Event`]s on one channel, and the
//! reporter alone turns them into terminal lines, JSON or files. This keeps
//! output of different hosts from interleaving and lets every output mode
//! see exactly the same run.

use std::time::Duration;

use serde::Serialize;

/// Index of a host in the run's selection (the order of the inventory).
pub type HostId = usize;

/// Which of the remote command's streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The command's standard output.
    Stdout,
    /// The command's standard error.
    Stderr,
}

/// How a host's part of the run ended.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, PartialOrd, Ord,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The command ran and exited 0.
    Ok,
    /// The command ran and exited non-zero (or was killed by a signal).
    Failed,
    /// The command ran longer than `--timeout` and was killed.
    TimedOut,
    /// No working connection: refused, timed out, authentication or host key failure.
    Unreachable,
    /// The run converged (`--converged-timeout`) while this host's payload
    /// was still running: it was stopped there, and its results collected.
    Stopped,
    /// The run was interrupted (Ctrl-C, SIGTERM, SIGHUP) before this host finished.
    Cancelled,
    /// A rolling run (`--batch`) stopped before this host's wave: too many
    /// hosts of earlier waves failed (`--max-fail`). It was never contacted.
    Skipped,
}

impl Status {
    /// Every status, in the order summaries list them.
    pub const ALL: [Status; 7] = [
        Status::Ok,
        Status::Failed,
        Status::Stopped,
        Status::TimedOut,
        Status::Unreachable,
        Status::Cancelled,
        Status::Skipped,
    ];

    /// The status as a word in JSON, summary.json and relay frames
    /// (`ok`, `failed`, `timed_out`, `unreachable`, `stopped`, `cancelled`,
    /// `skipped`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::TimedOut => "timed_out",
            Status::Unreachable => "unreachable",
            Status::Stopped => "stopped",
            Status::Cancelled => "cancelled",
            Status::Skipped => "skipped",
        }
    }

    /// The word used for this status in summaries.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::TimedOut => "timed out",
            Status::Unreachable => "unreachable",
            Status::Stopped => "stopped at convergence",
            Status::Cancelled => "cancelled",
            Status::Skipped => "skipped",
        }
    }
}

/// Time spent in each phase of one host's run.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub struct Timings {
    /// Opening the master connection.
    #[serde(
        rename = "connect_ms",
        serialize_with = "crate::encoding::millis::serialize",
        deserialize_with = "crate::encoding::millis::deserialize"
    )]
    pub connect: Duration,
    /// Checking the cached payload and sending what was missing.
    #[serde(
        rename = "stage_ms",
        serialize_with = "crate::encoding::millis::serialize",
        deserialize_with = "crate::encoding::millis::deserialize"
    )]
    pub stage: Duration,
    /// Running the command or the payload.
    #[serde(
        rename = "run_ms",
        serialize_with = "crate::encoding::millis::serialize",
        deserialize_with = "crate::encoding::millis::deserialize"
    )]
    pub run: Duration,
    /// Bringing back `$PUSHRUN_OUT`.
    #[serde(
        rename = "collect_ms",
        serialize_with = "crate::encoding::millis::serialize",
        deserialize_with = "crate::encoding::millis::deserialize"
    )]
    pub collect: Duration,
    /// Removing the run dir (after the collect stream ended).
    #[serde(
        rename = "clean_ms",
        serialize_with = "crate::encoding::millis::serialize",
        deserialize_with = "crate::encoding::millis::deserialize"
    )]
    pub clean: Duration,
}

/// What staging a payload on a host took.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub struct StageStats {
    /// Every cached file was there and right: nothing was sent.
    pub cache_hit: bool,
    /// Files sent because they were missing or wrong.
    pub files_sent: usize,
    /// Bytes written to the host (manifest, payload archive).
    pub bytes_sent: u64,
    /// Bytes read back (check report, results archive; not the live output).
    pub bytes_received: u64,
}

/// The end of one host's part of the run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct HostOutcome {
    /// How it ended.
    pub status: Status,
    /// The command's exit code, when it ran to an end.
    pub exit_code: Option<i32>,
    /// Why, for anything but a clean exit: "connection refused", "killed after 5s timeout", ...
    pub reason: Option<String>,
    /// Things worth knowing that did not fail the host (e.g. a PTY fallback).
    pub notes: Vec<String>,
    /// Time per phase.
    pub timings: Timings,
    /// Payload staging figures (payload runs only).
    pub stage: Option<StageStats>,
}

impl HostOutcome {
    /// A host that ended well: exit status 0, nothing to say.
    pub fn ok(timings: Timings) -> Self {
        HostOutcome {
            status: Status::Ok,
            exit_code: Some(0),
            reason: None,
            notes: Vec::new(),
            timings,
            stage: None,
        }
    }

    /// An outcome with no exit code, for hosts that never ran the command.
    pub fn without_exit(status: Status, reason: impl Into<String>, timings: Timings) -> Self {
        HostOutcome {
            status,
            exit_code: None,
            reason: Some(reason.into()),
            notes: Vec::new(),
            timings,
            stage: None,
        }
    }
}

/// The largest piece of a host's results one event carries: results go
/// to disk as they arrive, and a relay's frames stay small, whatever the
/// host sends.
pub const RESULTS_PART: usize = 64 * 1024;

/// One thing that happened to one host.
#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The host's task started connecting (it got one of the `--forks` slots).
    Connecting(HostId),
    /// The master connection is up.
    Connected(HostId),
    /// One line of output, without its line end. `complete` is false for a
    /// last line that had no newline, or a very long line cut into pieces.
    Output {
        /// Which host.
        host: HostId,
        /// Which stream.
        stream: Stream,
        /// The bytes, exactly as the host sent them (minus the newline).
        #[serde(with = "crate::encoding::bytes_base64")]
        line: Vec<u8>,
        /// Whether a newline ended this piece.
        complete: bool,
    },
    /// Still at work for this host, with nothing to show: connecting,
    /// staging (sent every second; `--converged-timeout` counts it as
    /// activity, the reporter ignores it).
    Busy(HostId),
    /// A piece of the payload's `$PUSHRUN_OUT`, the gzip'ed tar the host
    /// sends, as it arrives (at most [`RESULTS_PART`] bytes). The pieces of
    /// one collect come in order, then [`Event::Collected`]; a collect that
    /// failed (a lost host, results over `--max-results`) ends at the host's
    /// [`Event::Finished`] instead, and its pieces are dropped. From a
    /// relay in a `fetch`, the pieces are the tar the host sent, which the
    /// initiator unpacks (they never reach the reporter).
    ResultsPart(
        HostId,
        #[serde(with = "crate::encoding::bytes_base64")] Vec<u8>,
    ),
    /// Every piece of the host's results has arrived.
    Collected(HostId),
    /// One line the payload wrote to `$PUSHRUN_TUNNEL` (a JSON record), as it came.
    Record(
        HostId,
        #[serde(with = "crate::encoding::bytes_base64")] Vec<u8>,
    ),
    /// The host could not be reached; another try follows (`--converged-timeout`).
    Retrying {
        /// Which host.
        host: HostId,
        /// Why the last try failed.
        reason: String,
        /// When the next one starts.
        #[serde(rename = "delay_ms", with = "crate::encoding::millis")]
        delay: Duration,
    },
    /// A payload run of a repeating or watching run ended (`--repeat`, `--watch`).
    Repeated {
        /// Which host.
        host: HostId,
        /// Its number, from 1.
        run: u32,
        /// Whether its stdout or `$PUSHRUN_OUT` differ from the previous run's.
        changed: bool,
        /// How it ended.
        status: Status,
    },
    /// The host is done, one way or another.
    Finished(HostId, HostOutcome),
}

impl Event {
    /// The host the event is about.
    pub fn host_mut(&mut self) -> &mut HostId {
        match self {
            Event::Connecting(id)
            | Event::Connected(id)
            | Event::Busy(id)
            | Event::Collected(id)
            | Event::ResultsPart(id, _)
            | Event::Record(id, _)
            | Event::Finished(id, _) => id,
            Event::Output { host, .. }
            | Event::Retrying { host, .. }
            | Event::Repeated { host, .. } => host,
        }
    }
}
