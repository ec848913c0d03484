//! Rolling runs (`--batch`, `--max-fail`) across relays. The waves are cut
//! from all the run's hosts, direct and relayed alike, in inventory order,
//! and failures are counted across all of them: a wave may span direct
//! hosts and hosts behind several relays.
//!
//! Each wave is one run of the tree with that wave's hosts only: a relay
//! gets one request of its own (one `pushrun relay`, with a plan of that
//! wave's hosts behind it) for each wave it has hosts in, and none for the
//! others. So a host of a wave that never starts is in no relay's plan and
//! is never contacted; it ends `skipped` here. Relays keep their cache
//! between waves (the pushrun binary, a copy's archive), so a relay costs a
//! connection and a check per wave, not a second transfer.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{RelayReport, Wiring, renumber};
use crate::events::{Event, HostOutcome, Status, Timings};
use crate::fleet::Waves;
use crate::inventory::Host;

/// Runs `hosts` wave by wave; returns what the relays did, one entry per
/// relay and wave it served.
pub(super) async fn in_waves(
    waves: Waves,
    hosts: Arc<Vec<Host>>,
    wiring: &Wiring,
    events: mpsc::Sender<Event>,
) -> Vec<RelayReport> {
    let all = waves.cut(hosts.len());
    let mut failed = 0;
    let mut reports = Vec::new();
    for (n, wave) in all.iter().enumerate() {
        let not_started = match waves.stop(failed) {
            Some(why) => Some((Status::Skipped, why)),
            None if *wiring.cancel.borrow() => {
                Some((Status::Cancelled, "interrupted before it started".into()))
            }
            None => None,
        };
        if let Some((status, why)) = not_started {
            for &id in all[n..].iter().flatten() {
                let o = HostOutcome::without_exit(status, why.clone(), Timings::default());
                let _ = events.send(Event::Finished(id, o)).await;
            }
            break;
        }
        let wave_hosts: Vec<Host> = wave.iter().map(|&id| hosts[id].clone()).collect();
        let (tx, mut rx) = mpsc::channel(1024);
        let forward = async {
            let mut failed = 0;
            while let Some(event) = rx.recv().await {
                if let Event::Finished(_, outcome) = &event
                    && outcome.status != Status::Ok
                {
                    failed += 1;
                }
                let _ = events.send(renumber(event, |i| wave[i])).await;
            }
            failed
        };
        let (done, wave_failed) = tokio::join!(wiring.once(Arc::new(wave_hosts), tx), forward);
        reports.extend(done);
        failed += wave_failed;
    }
    reports.sort_by(|a, b| a.path.cmp(&b.path));
    reports
}
