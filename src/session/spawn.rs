//! Starting masters off the runtime's thread, on threads that live as long
//! as pushrun.
//!
//! Spawning a process waits until the child has exec'd (std reports exec
//! failures that way); on a machine busy with a hundred key exchanges each
//! such wait is a scheduler slice, and on the one thread that drives every
//! host `--forks` spawns queue behind each other (measured: 64 masters took
//! 0.85 s to start). A few spawner threads take that wait instead.
//!
//! They are plain threads that never end, not tokio's blocking pool: a
//! master of this run alone is started with `PR_SET_PDEATHSIG`, which fires
//! when the *thread* that forked it ends, and the pool ends idle threads
//! after a few seconds.

use std::io;
use std::sync::{Mutex, OnceLock, mpsc};

use tokio::process::{Child, Command};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How many masters may be starting at once.
const SPAWNERS: usize = 8;

type Job = (Command, Handle, oneshot::Sender<io::Result<Child>>);

fn queue() -> &'static mpsc::Sender<Job> {
    static QUEUE: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for i in 0..SPAWNERS {
            let rx = rx.clone();
            let started = std::thread::Builder::new()
                .name(format!("pushrun-spawn-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        let Ok((mut cmd, handle, reply)) = job else {
                            return;
                        };
                        let _entered = handle.enter();
                        let _ = reply.send(cmd.spawn());
                    }
                });
            if started.is_err() {
                break;
            }
        }
        tx
    })
}

/// Spawns `cmd` on a spawner thread; on the calling thread when there is
/// none.
pub(super) async fn spawn(cmd: Command) -> io::Result<Child> {
    let (reply, answer) = oneshot::channel();
    let job = (cmd, Handle::current(), reply);
    match queue().send(job) {
        Ok(()) => answer
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the spawner thread ended"))),
        Err(mpsc::SendError((mut cmd, _, _))) => cmd.spawn(),
    }
}
