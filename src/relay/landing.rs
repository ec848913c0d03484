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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;
    use crate::events::Timings;

    fn tar_of(name: &str, mode: u32, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
        b.into_inner().unwrap()
    }

    fn host(name: &str) -> Host {
        Host {
            name: name.into(),
            settings: Arc::default(),
            groups: Vec::new(),
        }
    }

    fn ended_well() -> HostOutcome {
        HostOutcome::ok(Timings::default())
    }

    #[tokio::test]
    async fn pieces_land_only_for_a_host_that_ended_well_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let folder = |h: &str| dir.path().join(h);
        let folders: HashMap<String, PathBuf> = ["a", "b", "c"]
            .iter()
            .map(|h| (h.to_string(), folder(h)))
            .collect();
        let job = FetchJob {
            paths: vec!["/f".into()],
            folders,
            max_bytes: 16 * 1024,
            forward: false,
        };
        let mut landing = Landing {
            job: Arc::new(job),
            spools: HashMap::new(),
        };
        let data = tar_of("f", 0o4777, b"fetched\n");
        for piece in data.chunks(1000) {
            landing.part(0, piece);
            landing.part(1, piece);
        }
        let a = landing.finish(0, &host("a"), ended_well()).await;
        assert_eq!(a.status, Status::Ok, "{a:?}");
        assert_eq!(std::fs::read(folder("a").join("f")).unwrap(), b"fetched\n");
        let mode = std::fs::metadata(folder("a").join("f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "setuid and o+w masked");

        // a host that failed keeps what it ended with, and nothing lands
        let failed = HostOutcome::without_exit(Status::Failed, "exit 2", Timings::default());
        let b = landing.finish(1, &host("b"), failed).await;
        assert_eq!(b.reason.as_deref(), Some("exit 2"));
        assert!(!folder("b").exists());

        // more than --max-bytes fails the host, whatever it said
        for _ in 0..20 {
            landing.part(2, &[0u8; 1024]);
        }
        let c = landing.finish(2, &host("c"), ended_well()).await;
        assert_eq!(c.status, Status::Failed);
        let why = c.reason.unwrap();
        assert!(why.contains("more than 16384 bytes"), "{why}");
        assert!(!folder("c").exists());
    }
}
