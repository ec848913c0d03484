//! Connecting to a host or a relay, and trying again, later and later,
//! while an unattended run (`--converged-timeout`) has not converged.
//!
//! Job hosts and relays connect the same way; only the words differ (a
//! relay's reasons name it).

use std::path::Path;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::converge::busy;
use super::raised;
use crate::auth::Secret;
use crate::events::{Event, HostId, Status};
use crate::inventory::Host;
use crate::session::{ConnectError, ConnectFailure, ControlDir, Session, SshOptions};

/// The longest wait between two tries of an unreachable host.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// What a connection is made with, and for whom.
pub(crate) struct Dial<'a> {
    /// The run's control dir, and its socket's slot in it.
    pub(crate) dir: &'a ControlDir,
    /// The slot that names the control socket.
    pub(crate) slot: usize,
    /// The run's ssh config.
    pub(crate) config: &'a Path,
    /// Whom to connect to.
    pub(crate) host: &'a Host,
    /// The run's ssh settings.
    pub(crate) ssh: &'a SshOptions,
    /// The login password, where the host takes one.
    pub(crate) password: Option<&'a Secret>,
    /// Try again until the run converges (`--converged-timeout`).
    pub(crate) retry: bool,
    /// The host whose events show this work (busy, retrying).
    pub(crate) shown_as: HostId,
    /// `Some("relay NAME")` for a relay: its reasons name it.
    pub(crate) relay: Option<&'a str>,
}

/// Why no connection was made: the host's status, and the reason shown.
pub(crate) type Unreached = (Status, String);

/// Whether a host that could not be connected may answer a later try:
/// wrong credentials and host keys will not change by themselves.
fn worth_retrying(e: &ConnectError) -> bool {
    !matches!(
        e.kind,
        ConnectFailure::Authentication | ConnectFailure::HostKey | ConnectFailure::HostKeyChanged
    )
}

/// Connects, saying every second that the host is busy; on failure, for an
/// unattended run, tries again after 1, 2, 4 … 30 s until the run converges.
pub(crate) async fn connect(
    dial: Dial<'_>,
    events: &mpsc::Sender<Event>,
    cancel: &mut watch::Receiver<bool>,
    converged: &mut watch::Receiver<bool>,
) -> Result<Session, Unreached> {
    let to = dial.relay.map(|r| format!(" to {r}")).unwrap_or_default();
    let interrupted = |phase: &str| match dial.relay {
        Some(_) => (
            Status::Cancelled,
            format!("interrupted while connecting{to}"),
        ),
        None => (Status::Cancelled, format!("interrupted while {phase}")),
    };
    let mut delay = Duration::from_secs(1);
    let mut tries = 0;
    loop {
        tries += 1;
        let attempt = Session::connect(
            dial.dir,
            dial.config,
            dial.slot,
            dial.host,
            dial.ssh,
            dial.password,
        );
        let connected = tokio::select! {
            r = busy(attempt, dial.shown_as, events) => r,
            _ = raised(cancel) => return Err(interrupted("connecting")),
            _ = raised(converged) => {
                let why = format!("never reached: the run converged while connecting{to}");
                return Err((Status::Unreachable, why));
            }
        };
        let e = match connected {
            Ok(session) => return Ok(session),
            Err(e) => e,
        };
        let why = match dial.relay {
            Some(r) => format!("{r}: {}", e.message),
            None => e.message.clone(),
        };
        if !dial.retry || !worth_retrying(&e) {
            return Err((Status::Unreachable, why));
        }
        let retrying = Event::Retrying {
            host: dial.shown_as,
            reason: why.clone(),
            delay,
        };
        let _ = events.send(retrying).await;
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = raised(cancel) => return Err(interrupted("retrying")),
            _ = raised(converged) => {
                return Err((Status::Unreachable, format!("never reached ({tries} tries): {why}")));
            }
        }
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}
