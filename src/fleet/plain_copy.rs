//! `pushrun copy` to a host without tar (copy.sh answers `lacks tar`):
//! the copy's archive, built once, is taken apart here and sent in steps
//! through `remote/copy-plain.sh`, each on a channel of its own over the
//! same connection (and through sudo with `--become`, as copy.sh): one to
//! make the stage directory with the directories and symlinks, one per
//! file (four at once; its sha256 checked on the host), one to set the
//! directories' modes and move everything into place as copy.sh does.
//! A step that fails, Ctrl-C or `--timeout` removes the stage directory.

use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::host::HostTask;
use super::transfer::CopyJob;
use super::{error_chain, raised};
use crate::events::{HostOutcome, Status, Timings};
use crate::remote;

/// What copy.sh answers on a host without tar.
pub(super) const LACKS_TAR: &str = "lacks tar";

/// The most of a step's stdout or stderr kept.
const ANSWER_KEPT: u64 = 64 * 1024;

/// The copy's archive taken apart.
#[derive(Default)]
struct Parts {
    /// `d MODE NAME` and `l TARGET NAME` triples for the begin step.
    begin: Vec<String>,
    /// (mode, name) of each directory, parents first.
    dirs: Vec<(String, String)>,
    /// (mode, sha256, name, content) of each file.
    files: Vec<(String, String, String, Vec<u8>)>,
}

/// Reads the copy's archive into its parts.
fn parts(archive: impl Read) -> Result<Parts, String> {
    let mut p = Parts::default();
    let bad = |e: std::io::Error| format!("cannot read the copy's archive: {e}");
    let mut a = tar::Archive::new(archive);
    for entry in a.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| "a name that is not UTF-8".to_string())?;
        let name = name.trim_end_matches('/').to_string();
        let mode = format!("{:o}", entry.header().mode().map_err(bad)? & 0o7777);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            p.begin.extend(["d".into(), "700".into(), name.clone()]);
            p.dirs.push((mode, name));
        } else if kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default();
            p.begin.extend(["l".into(), target, name]);
        } else if kind.is_file() {
            let mut content = Vec::new();
            entry.read_to_end(&mut content).map_err(bad)?;
            let sum = crate::payload::hex(&Sha256::digest(&content));
            p.files.push((mode, sum, name, content));
        }
    }
    Ok(p)
}

/// Reads `r` to its end, keeping its first [`ANSWER_KEPT`] bytes.
async fn read_kept(r: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut r) = r {
        let _ = (&mut r).take(ANSWER_KEPT).read_to_end(&mut buf).await;
        let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
    }
    buf
}

impl HostTask<'_> {
    /// `pushrun copy` in steps (see the module's doc), bounded by `timeout`
    /// and Ctrl-C like copy.sh's one transfer.
    pub(super) async fn copy_plain(
        &mut self,
        job: &CopyJob,
        timeout: Option<Duration>,
        mut timings: Timings,
    ) -> HostOutcome {
        let started = Instant::now();
        let token = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let head = [job.dest.clone(), job.names.len().to_string(), token.clone()];
        let mut cancel = self.triggers.cancel.clone();
        let expired = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let done = tokio::select! {
            r = self.copy_steps(job, &head) => r.map_err(|why| (Status::Failed, why)),
            _ = raised(&mut cancel) => Err((Status::Cancelled, "interrupted: transfer stopped".into())),
            () = expired => Err((
                Status::TimedOut,
                format!("transfer stopped after {}s timeout", timeout.unwrap_or_default().as_secs_f64()),
            )),
        };
        timings.run = started.elapsed();
        match done {
            Ok(()) => HostOutcome::ok(timings),
            Err((status, why)) => {
                // what was staged goes (best effort)
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    self.step("abort", &head, &[], &[]),
                )
                .await;
                HostOutcome::without_exit(status, why, timings)
            }
        }
    }

    /// begin, the files four at once, finish.
    async fn copy_steps(&self, job: &CopyJob, head: &[String; 3]) -> Result<(), String> {
        let path = job.archive_path();
        let p = tokio::task::spawn_blocking(move || {
            std::fs::File::open(path)
                .map_err(|e| format!("cannot read the copy's archive: {e}"))
                .and_then(parts)
        })
        .await
        .map_err(|e| e.to_string())??;
        self.step("begin", head, &p.begin, &[]).await?;
        let next = Mutex::new(p.files.iter());
        let failed: Mutex<Option<String>> = Mutex::new(None);
        let worker = async || {
            loop {
                if failed.lock().is_ok_and(|f| f.is_some()) {
                    return;
                }
                let Some((mode, sum, name, content)) = next.lock().ok().and_then(|mut n| n.next())
                else {
                    return;
                };
                let args = [mode.clone(), sum.clone(), name.clone()];
                if let Err(e) = self.step("file", head, &args, content).await {
                    if let Ok(mut f) = failed.lock() {
                        f.get_or_insert(e);
                    }
                    return;
                }
            }
        };
        // four channels at once
        tokio::join!(worker(), worker(), worker(), worker());
        if let Some(e) = failed.into_inner().ok().flatten() {
            return Err(e);
        }
        // the deepest first: a parent's mode never stops its children's
        let mut args = Vec::new();
        for (mode, name) in p.dirs.into_iter().rev() {
            args.extend(["d".into(), mode, name]);
        }
        args.push("--".into());
        args.extend(job.names.iter().cloned());
        self.step("finish", head, &args, &[]).await
    }

    /// Runs one step of copy-plain.sh with `input` on its stdin; `Err` is
    /// the reason shown for the host.
    async fn step(
        &self,
        step: &str,
        head: &[String; 3],
        rest: &[String],
        input: &[u8],
    ) -> Result<(), String> {
        let mut args = vec![step.to_string()];
        args.extend(head.iter().cloned());
        args.extend(rest.iter().cloned());
        let launch = self.launch(
            (remote::COPY_PLAIN, "pushrun-copy-plain", &args),
            &[],
            false,
            false,
        )?;
        if launch.pty {
            return Err("copy: this host has no tar, and sudo needs a terminal here".into());
        }
        let lost = |e: openssh::Error| format!("connection lost: {}", error_chain(&e));
        let fed = self.start_fed(launch).await.map_err(lost)?;
        let write = fed.feeder.feed(input);
        let ((), out, err) = tokio::join!(write, read_kept(fed.stdout), read_kept(fed.stderr));
        let code = crate::session::exit_code(fed.child.wait().await).map_err(lost)?;
        if let Some(reason) = remote::error_line(&out) {
            return Err(reason);
        }
        if code == Some(0) {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&err);
        Err(match err.lines().rev().find(|l| !l.trim().is_empty()) {
            Some(last) => format!("copy failed: {}", last.trim()),
            None => format!("copy failed ({step}: exit {code:?})"),
        })
    }
}
