//! Staging on a relay: what it takes before `pushrun relay` can start
//! there. The relay is asked what it runs first, so that a binary built
//! for another machine is refused before anything is sent; then the pushrun
//! binary and the payload go through the same staging (cache and checks
//! included) as a payload does to any host.

use super::{RelayError, RelayTask};
use crate::events::StageStats;
use crate::fleet::{self, Job, StageError};
use crate::relay::BINARY_NAME;
use crate::relay::wire::RelayReport;
use crate::session::Session;

/// Says the relay's OS and machine.
const PROBE: &str = include_str!(concat!(env!("OUT_DIR"), "/relay/probe.sh"));

/// What staging left on a relay.
pub(super) struct Staged {
    /// The relay's pushrun dir (BASE).
    pub(super) base: String,
    /// The staged pushrun there.
    pub(super) binary: String,
    /// The staged payload's dir there (payload runs; a copy's archive in
    /// copy runs), and its digest.
    pub(super) payload_dir: Option<(String, String)>,
    /// Run dirs staging made, for the start script to remove.
    pub(super) run_dirs: Vec<String>,
}

impl RelayTask {
    /// Checks that the relay can run the binary, then stages it and the
    /// payload.
    pub(super) async fn stage(
        &self,
        session: &Session,
        report: &mut RelayReport,
    ) -> Result<Staged, RelayError> {
        let relay = &self.subtree.relay;
        self.check_machine(session, report).await?;
        let cache = match &self.spec.job {
            Job::Payload(j) => j.cache,
            _ => true,
        };
        let binary =
            self.relaying
                .binary_job(cache)
                .await
                .map_err(|source| RelayError::Binary {
                    relay: relay.name.clone(),
                    source,
                })?;
        let mut stats = StageStats::default();
        let staged = fleet::stage(session, relay, &binary, &mut stats).await;
        report.binary = stats;
        report.bytes_sent += stats.bytes_sent;
        report.bytes_received += stats.bytes_received;
        let (base, bin_dir) =
            staged.map_err(|e| stage_failure(e, &relay.name, "pushrun binary"))?;
        let mut run_dirs = vec![fleet::host_run_id(&binary.run_id, relay)];
        let job = match &self.spec.job {
            Job::Payload(job) => Some(self.relaying.payload_job(job).await),
            Job::Copy(job) => {
                let cache = self.spec.waves.is_some();
                let staged = self.relaying.copy_job(job, cache).await;
                match staged {
                    Ok(job) => Some(job),
                    Err(reason) => {
                        remove_run_dirs(session, &base, &run_dirs).await;
                        return Err(RelayError::Archive {
                            relay: relay.name.clone(),
                            reason,
                        });
                    }
                }
            }
            _ => None,
        };
        let payload_dir = match job {
            Some(job) => {
                run_dirs.push(fleet::host_run_id(&job.run_id, relay));
                let mut stats = StageStats::default();
                let staged = fleet::stage(session, relay, &job, &mut stats).await;
                report.payload = Some(stats);
                report.bytes_sent += stats.bytes_sent;
                report.bytes_received += stats.bytes_received;
                match staged {
                    Ok((_, dir)) => Some((dir, job.payload.digest().to_string())),
                    Err(e) => {
                        remove_run_dirs(session, &base, &run_dirs).await;
                        let what = match &self.spec.job {
                            Job::Copy(_) => "copy's archive",
                            _ => "payload",
                        };
                        return Err(stage_failure(e, &relay.name, what));
                    }
                }
            }
            None => None,
        };
        Ok(Staged {
            binary: format!("{bin_dir}/{BINARY_NAME}"),
            base,
            payload_dir,
            run_dirs,
        })
    }

    /// Asks the relay what it runs, and refuses a binary built for another
    /// machine before anything is sent.
    async fn check_machine(
        &self,
        session: &Session,
        report: &mut RelayReport,
    ) -> Result<(), RelayError> {
        let relay = &self.subtree.relay.name;
        let probe = session
            .run_script(PROBE, "pushrun-probe", &[], b"")
            .await
            .map_err(|e| RelayError::Lost {
                relay: relay.clone(),
                cause: Box::new(e),
            })?;
        report.bytes_received += probe.stdout.len() as u64;
        let answer = String::from_utf8_lossy(&probe.stdout);
        let mut words = answer.lines();
        let (os, machine) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let (want_os, want_arch, binary) = match &self.relaying.binary {
            None => (
                std::env::consts::OS,
                std::env::consts::ARCH,
                "this pushrun".to_string(),
            ),
            Some(p) => {
                let arch = elf_arch(p).unwrap_or("unknown");
                ("linux", arch, p.display().to_string())
            }
        };
        if !os.eq_ignore_ascii_case(want_os) || normal_arch(machine) != want_arch {
            return Err(RelayError::WrongMachine {
                relay: relay.clone(),
                runs: format!("{os} {machine}"),
                binary,
                built_for: format!("{want_os} {want_arch}"),
            });
        }
        Ok(())
    }
}

/// Drops the run dirs staging made on a relay (collect.sh removes them).
async fn remove_run_dirs(session: &Session, base: &str, run_dirs: &[String]) {
    for run_id in run_dirs {
        fleet::clean_run_dir(session, base, run_id).await;
    }
}

/// Why staging `what` on `relay` failed, as the relay's failure.
pub(super) fn stage_failure(e: StageError, relay: &str, what: &'static str) -> RelayError {
    let (status, reason) = e.status_reason(Some(relay), what);
    RelayError::Shown { status, reason }
}

/// `uname -m` in Rust's words (`std::env::consts::ARCH`).
fn normal_arch(machine: &str) -> &str {
    match machine {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "i386" | "i486" | "i586" | "i686" => "x86",
        m if m.starts_with("armv") => "arm",
        m => m,
    }
}

/// The machine an ELF executable is built for, in Rust's words.
fn elf_arch(path: &std::path::Path) -> Option<&'static str> {
    use std::io::Read;
    let mut head = [0u8; 20];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    if &head[..4] != b"\x7fELF" {
        return None;
    }
    let machine = match head[5] {
        1 => u16::from_le_bytes([head[18], head[19]]),
        _ => u16::from_be_bytes([head[18], head[19]]),
    };
    Some(match machine {
        3 => "x86",
        40 => "arm",
        62 => "x86_64",
        183 => "aarch64",
        243 => "riscv64",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_are_named_as_rust_names_them() {
        assert_eq!(normal_arch("x86_64"), "x86_64");
        assert_eq!(normal_arch("arm64"), "aarch64");
        assert_eq!(normal_arch("armv7l"), "arm");
        let me = std::env::current_exe().unwrap();
        assert_eq!(elf_arch(&me), Some(std::env::consts::ARCH));
    }
}
