//! Open files for connections: each connected host costs pushrun about
//! [`PER_HOST`] descriptors while a command runs on it (the mux socket, the
//! command's three pipes and their ends on our side). With `--forks` above
//! what `ulimit -n` holds, hosts would fail half-way with "Too many open
//! files"; instead a host waits for another to close before it connects,
//! as it waits for a fork. Only when no host at all closes for a long while
//! (every connected host busy with a long command) does it fail, saying
//! which limit it hit; a limit too low for even one host fails every host
//! at once, saying so, rather than half-way through ssh's own errors.
//!
//! Persisted masters (`--persist`) are processes of their own with their
//! own descriptors: they do not count here, and a host attached to one
//! costs pushrun fewer descriptors than one it starts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::control::open_files_limit;

/// Descriptors one connected host takes at most (measured: 7.5 with a
/// command running).
const PER_HOST: u64 = 8;
/// Descriptors kept for everything else: stdio, the runtime, results files.
const RESERVE: u64 = 48;
/// The lowest `ulimit -n` a run can work under, one host at a time
/// (measured: a command needs 18; the rest is margin for payloads).
const MINIMUM: u64 = 24;
/// How long a host waits with no other host closing before it gives up.
const WAIT: Duration = Duration::from_secs(60);

/// How many shares have been given back so far: a waiting host gives up
/// only when this stands still for [`WAIT`].
static GIVEN_BACK: AtomicU64 = AtomicU64::new(0);

/// One connected host's share of the open files; given back on drop.
#[derive(Debug)]
pub(super) struct Share {
    _permit: OwnedSemaphorePermit,
}

impl Drop for Share {
    fn drop(&mut self) {
        GIVEN_BACK.fetch_add(1, Ordering::Relaxed);
    }
}

/// How many hosts may be connected at once under the open files limit.
fn hosts_that_fit() -> usize {
    (open_files_limit().saturating_sub(RESERVE) / PER_HOST).max(1) as usize
}

fn shares() -> &'static Arc<Semaphore> {
    static SHARES: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SHARES.get_or_init(|| Arc::new(Semaphore::new(hosts_that_fit())))
}

/// Waits for a share of the open files, in turn; fails, naming the limit,
/// when it is too low for any host or no host closes for a long while.
pub(super) async fn take() -> Result<Share, String> {
    let limit = open_files_limit();
    if limit < MINIMUM {
        return Err(format!(
            "too many open files: ulimit -n is {limit}, pushrun needs at least {MINIMUM}: raise the limit"
        ));
    }
    let acquire = shares().clone().acquire_owned();
    tokio::pin!(acquire);
    let mut seen = GIVEN_BACK.load(Ordering::Relaxed);
    loop {
        match tokio::time::timeout(WAIT, &mut acquire).await {
            Ok(Ok(permit)) => return Ok(Share { _permit: permit }),
            Ok(Err(_)) => break,
            Err(_) => {
                // Hosts are closing: this one's turn comes.
                let now = GIVEN_BACK.load(Ordering::Relaxed);
                if now == seen {
                    break;
                }
                seen = now;
            }
        }
    }
    Err(format!(
        "too many open files: ulimit -n is {limit} (about {PER_HOST} per host connected at once, {} hosts fit) and no host closed within {}s: lower --forks or raise the limit",
        hosts_that_fit(),
        WAIT.as_secs()
    ))
}
