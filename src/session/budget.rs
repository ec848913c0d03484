//! Open files for connections: each connected host costs pushrun about
//! [`PER_HOST`] descriptors while a command runs on it (the mux socket, the
//! command's three pipes and their ends on our side). With `--forks` above
//! what `ulimit -n` holds, hosts would fail half-way with "Too many open
//! files"; instead a host waits for another to close before it connects,
//! and only when none closes for a long while does it fail, saying which
//! limit it hit.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::control::open_files_limit;

/// Descriptors one connected host takes at most (measured: 7.5 with a
/// command running).
const PER_HOST: u64 = 8;
/// Descriptors kept for everything else: stdio, the runtime, results files.
const RESERVE: u64 = 48;
/// How long a host waits for another to close before it gives up.
const WAIT: Duration = Duration::from_secs(60);

/// One connected host's share of the open files; given back on drop.
#[derive(Debug)]
pub(super) struct Share {
    _permit: OwnedSemaphorePermit,
}

/// How many hosts may be connected at once under the open files limit.
fn hosts_that_fit() -> usize {
    (open_files_limit().saturating_sub(RESERVE) / PER_HOST).max(1) as usize
}

fn shares() -> &'static Arc<Semaphore> {
    static SHARES: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SHARES.get_or_init(|| Arc::new(Semaphore::new(hosts_that_fit())))
}

/// Waits for a share of the open files; fails, naming the limit, when no
/// host closes for a long while.
pub(super) async fn take() -> Result<Share, String> {
    let shares = shares().clone();
    match tokio::time::timeout(WAIT, shares.acquire_owned()).await {
        Ok(Ok(permit)) => Ok(Share { _permit: permit }),
        _ => Err(format!(
            "too many open files: ulimit -n is {} (about {PER_HOST} per host connected at once, {} hosts fit) and no host closed within {}s: lower --forks or raise the limit",
            open_files_limit(),
            hosts_that_fit(),
            WAIT.as_secs()
        )),
    }
}
