//! Unattended runs: when the whole run has gone quiet
//! (`--converged-timeout`), and a payload dir that changes (`--watch`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::PayloadJob;

use crate::events::{Event, HostId};
use crate::payload::Payload;

/// Passes every event from `from` on to `to`, and raises `converged` once
/// no host has been active for `quiet` (`--converged-timeout`). Runs until
/// `from` ends. It sits where the events of the whole run meet, relays'
/// subtrees included, so convergence is the whole tree's.
pub async fn converge(
    mut from: mpsc::Receiver<Event>,
    to: mpsc::Sender<Event>,
    quiet: Duration,
    repeating: bool,
    converged: watch::Sender<bool>,
) {
    let mut last_activity = tokio::time::Instant::now();
    let mut done = false;
    loop {
        tokio::select! {
            ev = from.recv() => {
                let Some(ev) = ev else { break };
                if is_activity(&ev, repeating) {
                    last_activity = tokio::time::Instant::now();
                }
                let _ = to.send(ev).await;
            }
            _ = tokio::time::sleep_until(last_activity + quiet), if !done => {
                done = true;
                let _ = converged.send(true);
            }
        }
    }
}

/// Runs `work`, saying every second that host `id` is [`Event::Busy`].
pub(crate) async fn busy<F: Future>(
    work: F,
    id: HostId,
    events: &mpsc::Sender<Event>,
) -> F::Output {
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                let _ = events.send(Event::Busy(id)).await;
            }
        }
    }
}

/// Whether an event shows a host active, for --converged-timeout: its state
/// changed, it wrote output or a record, or (repeating) a run's results
/// differed from the previous run's — a repeated run's output alone is not.
pub(super) fn is_activity(event: &Event, repeating: bool) -> bool {
    match event {
        Event::Output { .. } => !repeating,
        Event::Repeated { changed, .. } => *changed,
        Event::Collected(..) | Event::ResultsPart(..) => false,
        Event::Connecting(_)
        | Event::Busy(_)
        | Event::Connected(_)
        | Event::Finished(..)
        | Event::Record(..)
        | Event::Retrying { .. } => true,
    }
}

/// Watches a payload dir; publishes the payload again whenever its digest changes.
pub(super) async fn watch_payload(
    dir: PathBuf,
    first: Arc<PayloadJob>,
    jobs: watch::Sender<Arc<PayloadJob>>,
) {
    use notify::Watcher;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        let _ = tx.send(e.is_ok());
    });
    let Ok(mut watcher) = watcher else { return };
    if watcher
        .watch(&dir, notify::RecursiveMode::Recursive)
        .is_err()
    {
        return;
    }
    let mut digest = first.payload.digest().to_string();
    while rx.recv().await.is_some() {
        // let a burst of writes (an editor saving) settle
        loop {
            tokio::select! {
                more = rx.recv() => if more.is_none() { return },
                _ = tokio::time::sleep(Duration::from_millis(200)) => break,
            }
        }
        if jobs.is_closed() {
            return;
        }
        let load = dir.clone();
        let Ok(Ok(payload)) = tokio::task::spawn_blocking(move || Payload::load(&load)).await
        else {
            continue; // half-written, or broken for now: the next change will tell
        };
        if payload.digest() == digest {
            continue;
        }
        digest = payload.digest().to_string();
        let job = PayloadJob::new(
            payload,
            first.args.clone(),
            first.cache,
            first.run_id.clone(),
        );
        if jobs.send(Arc::new(job)).is_err() {
            return;
        }
    }
}
