//! Where `pushrun fetch` lands for hosts behind relays: on the initiator,
//! never on a relay. A relay passes what each host sent on up unopened, in
//! `results_part` frames; here the pieces go to a file with no name, are
//! counted against `--max-bytes`, and are unpacked into `LOCAL_DIR/<host>/`
//! only once the host has ended well, with the same checks as a direct
//! host's (`fleet::unpack_untrusted`: no links, masked modes, names that
//! stay inside the host's folder).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::Instant;

use crate::events::{HostId, HostOutcome, Status};
use crate::fleet::{FetchJob, Job, RunSpec, fetched_outcome, too_big, unpack_untrusted};
use crate::inventory::Host;
use crate::payload::unnamed_file;

/// What one host behind the relay has sent so far.
#[derive(Default)]
struct Spool {
    /// The pieces, in order (made at the first piece).
    file: Option<File>,
    /// How many bytes came.
    bytes: u64,
    /// Why the pieces could not be kept, if they could not.
    broken: Option<String>,
}

/// The fetched pieces of a relay's hosts, by the relay's host ids.
pub(super) struct Landing {
    /// The run's fetch.
    job: Arc<FetchJob>,
    /// Each host's pieces.
    spools: HashMap<HostId, Spool>,
}

impl Landing {
    /// A landing for the run's fetch; `None` for other jobs, and on a relay
    /// (which passes the pieces on).
    pub(super) fn of(spec: &RunSpec) -> Option<Landing> {
        match &spec.job {
            Job::Fetch(job) if !job.forward => Some(Landing {
                job: job.clone(),
                spools: HashMap::new(),
            }),
            _ => None,
        }
    }

    /// Takes in one piece of host `id`'s archive.
    pub(super) fn part(&mut self, id: HostId, data: &[u8]) {
        let spool = self.spools.entry(id).or_default();
        spool.bytes += data.len() as u64;
        if spool.broken.is_some() || spool.bytes > self.job.max_bytes {
            spool.file = None;
            return;
        }
        let file = match spool.file.take() {
            Some(f) => f,
            None => match unnamed_file() {
                Ok(f) => f,
                Err(e) => {
                    spool.broken = Some(format!("cannot keep what the host sent: {e}"));
                    return;
                }
            },
        };
        let mut file = file;
        match file.write_all(data) {
            Ok(()) => spool.file = Some(file),
            Err(e) => spool.broken = Some(format!("cannot keep what the host sent: {e}")),
        }
    }

    /// Host `id` (`host`) ended with `outcome`: unpacks what it sent when it
    /// ended well, and says how that went instead.
    pub(super) async fn finish(
        &mut self,
        id: HostId,
        host: &Host,
        outcome: HostOutcome,
    ) -> HostOutcome {
        let spool = self.spools.remove(&id).unwrap_or_default();
        if outcome.status != Status::Ok {
            return outcome;
        }
        let mut timings = outcome.timings;
        if spool.bytes > self.job.max_bytes {
            return too_big(self.job.max_bytes, timings);
        }
        if let Some(why) = spool.broken {
            return HostOutcome::without_exit(Status::Failed, why, timings);
        }
        let Some(folder) = self.job.folders.get(&host.name).cloned() else {
            return HostOutcome::without_exit(Status::Failed, "no folder for host", timings);
        };
        let started = Instant::now();
        let unpacked = tokio::task::spawn_blocking(move || match spool.file {
            Some(mut file) => {
                file.seek(SeekFrom::Start(0))?;
                unpack_untrusted(BufReader::with_capacity(64 * 1024, file), &folder)
            }
            None => unpack_untrusted(io::empty(), &folder),
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
        timings.collect += started.elapsed();
        fetched_outcome(unpacked, timings)
    }
}
