//! `pushrun copy` and `pushrun fetch` on one host: files as one tar over
//! the host's one connection, through `remote/copy.sh` and
//! `remote/fetch.sh`.
//!
//! Copy sends one archive, built once for every host into a file with no
//! name (never held in memory: a copy can be hundreds of MB) and streamed
//! from there by each host, which unpacks it beside the destination and
//! renames into place file by file. Fetch reads what the host sends as
//! untrusted: at most `max_bytes`, regular files and directories only (no
//! symlink is made or followed), modes masked (no setuid, setgid or sticky
//! bit, nothing group- or world-writable), names that stay inside the
//! host's folder. On a relay, fetch passes it on up unopened instead.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::host::HostTask;
use super::{error_chain, raised};
use crate::events::{Event, HostOutcome, RESULTS_PART, Status, Timings};
use crate::payload::unnamed_file;
use crate::remote;

/// The mode bits a fetched file or directory may keep.
const KEPT_MODE: u32 = 0o755;

/// The most of a script's stderr kept to say why it failed.
const STDERR_KEPT: u64 = 64 * 1024;

/// Files and directories to put on every host.
#[derive(Debug)]
pub struct CopyJob {
    /// Their tar (modes kept, symlinks as symlinks), built once into a file
    /// with no name; each host reads it through an opening of its own.
    archive: fs::File,
    /// The archive's size in bytes.
    size: u64,
    /// Where they go on the host.
    pub dest: String,
    /// The archive's top-level names, one per source.
    pub names: Vec<String>,
    /// Regular files in the archive.
    pub files: usize,
}

impl CopyJob {
    /// Reads `sources` (files or directories, each under its own name) into
    /// one archive for `dest`, on disk: the sources are never held in
    /// memory whole.
    pub fn new(sources: &[PathBuf], dest: String) -> io::Result<CopyJob> {
        let spool = io::BufWriter::with_capacity(256 * 1024, unnamed_file()?);
        let mut tar = tar::Builder::new(spool);
        tar.follow_symlinks(false);
        tar.mode(tar::HeaderMode::Complete);
        let mut names: Vec<String> = Vec::new();
        for src in sources {
            let name = source_name(src)?;
            if names.contains(&name) {
                return Err(io::Error::other(format!(
                    "{}: a second source named {name}",
                    src.display()
                )));
            }
            let meta = fs::symlink_metadata(src)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
            if meta.is_dir() {
                tar.append_dir_all(&name, src)?;
            } else {
                tar.append_path_with_name(src, &name)?;
            }
            names.push(name);
        }
        let archive = tar.into_inner()?.into_inner().map_err(|e| e.into_error())?;
        CopyJob::from_archive(archive, dest, names)
    }

    /// A copy of the tar in `archive` (read from its start) to `dest`;
    /// `names` are its top-level names.
    pub(crate) fn from_archive(
        mut archive: fs::File,
        dest: String,
        names: Vec<String>,
    ) -> io::Result<CopyJob> {
        use std::io::{Seek, SeekFrom};
        archive.seek(SeekFrom::Start(0))?;
        let mut files = 0;
        for entry in tar::Archive::new(io::BufReader::new(&archive)).entries()? {
            if entry?.header().entry_type().is_file() {
                files += 1;
            }
        }
        let size = archive.metadata()?.len();
        Ok(CopyJob {
            archive,
            size,
            dest,
            names,
            files,
        })
    }

    /// The archive's size in bytes.
    pub fn bytes(&self) -> u64 {
        self.size
    }

    /// The archive's path for this process: a new opening of it reads it
    /// from its start, whoever else is reading it.
    pub(crate) fn archive_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.archive.as_raw_fd()))
    }
}

/// A source's name on the host: its last component (`dir/` and `dir/.`
/// are `dir`).
fn source_name(src: &Path) -> io::Result<String> {
    let full = if src.file_name().is_some() {
        src.to_path_buf()
    } else {
        fs::canonicalize(src)?
    };
    full.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| io::Error::other(format!("{}: no file name to copy it as", src.display())))
}

/// Files and directories to bring back from every host.
#[derive(Debug)]
pub struct FetchJob {
    /// Paths on the hosts.
    pub paths: Vec<String>,
    /// Where each host's go, by host name (`LOCAL_DIR/<host folder>`).
    pub folders: HashMap<String, PathBuf>,
    /// The most bytes one host may send.
    pub max_bytes: u64,
    /// On a relay: what a host sends is not unpacked here but passed on up,
    /// as it came, in [`Event::ResultsPart`]s then [`Event::Collected`];
    /// the initiator unpacks it (see `relay::landing`).
    pub forward: bool,
}

/// How a transfer ended, short of a clean exit.
enum Cut {
    /// The connection failed.
    Lost(String),
    /// The host sent more than allowed.
    TooBig(u64),
    /// Ctrl-C.
    Cancelled,
    /// `--timeout` passed.
    TimedOut(Duration),
}

/// What the host's side answered.
struct Answer {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl HostTask<'_> {
    /// `pushrun copy` on this host.
    pub(super) async fn copy(
        &mut self,
        job: &CopyJob,
        timeout: Option<Duration>,
        mut timings: Timings,
    ) -> HostOutcome {
        let started = Instant::now();
        let mut args = vec![job.dest.clone()];
        args.extend(job.names.iter().cloned());
        // an opening of its own: hosts read the shared archive each from its start
        let archive = match tokio::fs::File::open(job.archive_path()).await {
            Ok(f) => tokio::io::BufReader::with_capacity(64 * 1024, f),
            Err(e) => {
                let why = format!("cannot read the copy's archive: {e}");
                return HostOutcome::without_exit(Status::Failed, why, timings);
            }
        };
        let answer = self
            .transfer(
                (remote::COPY, "pushrun-copy", &args),
                archive,
                4096,
                timeout,
            )
            .await;
        timings.run = started.elapsed();
        let answer = match answer {
            Ok(a) => a,
            Err(cut) => return cut_outcome(cut, timings),
        };
        if answer
            .stdout
            .starts_with(super::plain_copy::LACKS_TAR.as_bytes())
        {
            return self.copy_plain(job, timeout, timings).await;
        }
        if let Some(reason) = remote::error_line(&answer.stdout) {
            return HostOutcome::without_exit(Status::Failed, reason, timings);
        }
        match answer.code {
            Some(0) => ok(timings, Vec::new()),
            _ => HostOutcome::without_exit(Status::Failed, failure("copy", &answer), timings),
        }
    }

    /// `pushrun fetch` on this host.
    pub(super) async fn fetch(
        &mut self,
        job: &FetchJob,
        timeout: Option<Duration>,
        mut timings: Timings,
    ) -> HostOutcome {
        let started = Instant::now();
        let answer = self
            .transfer_to(
                (remote::FETCH, "pushrun-fetch", &job.paths),
                tokio::io::empty(),
                job.max_bytes,
                timeout,
                job.forward,
            )
            .await;
        timings.run = started.elapsed();
        let answer = match answer {
            Ok(a) => a,
            Err(cut) => return cut_outcome(cut, timings),
        };
        if answer.code != Some(0) {
            return HostOutcome::without_exit(Status::Failed, failure("fetch", &answer), timings);
        }
        if job.forward {
            // every piece went on up as it came
            let _ = self.events.send(Event::Collected(self.id)).await;
            return ok(timings, Vec::new());
        }
        let Some(folder) = job.folders.get(&self.host.name).cloned() else {
            return HostOutcome::without_exit(Status::Failed, "no folder for host", timings);
        };
        let started = Instant::now();
        let unpacked = tokio::task::spawn_blocking(move || {
            // a host without tar sends plain entries (see plain.rs)
            let data = super::plain::fetched_as_tar(answer.stdout).map_err(io::Error::other)?;
            unpack_untrusted(&data[..], &folder)
        })
        .await;
        timings.collect = started.elapsed();
        match unpacked {
            Ok(unpacked) => fetched_outcome(unpacked, timings),
            Err(e) => HostOutcome::without_exit(Status::Failed, e.to_string(), timings),
        }
    }

    /// Runs `script` (through sudo with --become), feeds it `input`, and
    /// reads at most `limit` bytes of its stdout; Ctrl-C and `timeout` end it.
    async fn transfer(
        &mut self,
        script: (&str, &str, &[String]),
        input: impl tokio::io::AsyncBufRead + Unpin,
        limit: u64,
        timeout: Option<Duration>,
    ) -> Result<Answer, Cut> {
        self.transfer_to(script, input, limit, timeout, false).await
    }

    /// [`Self::transfer`]; with `pass_on`, stdout is not kept but sent on
    /// as it comes, in [`Event::ResultsPart`]s (a relay's fetch).
    async fn transfer_to(
        &mut self,
        script: (&str, &str, &[String]),
        mut input: impl tokio::io::AsyncBufRead + Unpin,
        limit: u64,
        timeout: Option<Duration>,
        pass_on: bool,
    ) -> Result<Answer, Cut> {
        let (id, events) = (self.id, self.events);
        let launch = self.launch(script, &[], false, false).map_err(Cut::Lost)?;
        // what the login files print ahead of the script is not its
        // answer; the input waits until the script has been read
        let lost = |e| Cut::Lost(format!("connection lost: {}", error_chain(&e)));
        let fed = self.start_fed(launch).await.map_err(lost)?;
        let (child, feeder, stdout, stderr) = (fed.child, fed.feeder, fed.stdout, fed.stderr);
        let write = async {
            feeder.feed(&mut input).await;
            Ok::<(), Cut>(())
        };
        let read_out = async {
            let mut buf = Vec::new();
            if let Some(r) = stdout {
                if pass_on {
                    pass_pieces_on(r, limit, id, events).await?;
                    return Ok(buf);
                }
                let _ = r.take(limit + 1).read_to_end(&mut buf).await;
            }
            if buf.len() as u64 > limit {
                return Err(Cut::TooBig(limit));
            }
            Ok(buf)
        };
        let read_err = async {
            let mut buf = Vec::new();
            if let Some(mut r) = stderr {
                let _ = (&mut r).take(STDERR_KEPT).read_to_end(&mut buf).await;
                let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
            }
            Ok(buf)
        };
        let cancel = &mut self.triggers.cancel;
        let expired = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let streams = tokio::select! {
            r = async { tokio::try_join!(write, read_out, read_err) } => r,
            _ = raised(cancel) => Err(Cut::Cancelled),
            () = expired => Err(Cut::TimedOut(timeout.unwrap_or_default())),
        };
        let ((), stdout, stderr) = match streams {
            Ok(s) => s,
            Err(cut) => {
                // dropping the child closes the channel: the host's side ends on a broken pipe
                drop(child);
                return Err(cut);
            }
        };
        let code = crate::session::exit_code(child.wait().await)
            .map_err(|e| Cut::Lost(format!("connection lost: {}", error_chain(&e))))?;
        Ok(Answer {
            code,
            stdout,
            stderr,
        })
    }
}

/// Sends what `from` says on as [`Event::ResultsPart`]s of host `id`, in
/// pieces of [`RESULTS_PART`] bytes, none of it kept; more than `limit`
/// bytes is cut. A read error ends it, as the end of the stream does: the
/// script's exit status then says how it went.
async fn pass_pieces_on(
    mut from: impl tokio::io::AsyncRead + Unpin,
    limit: u64,
    id: crate::events::HostId,
    events: &tokio::sync::mpsc::Sender<Event>,
) -> Result<(), Cut> {
    let mut total = 0u64;
    loop {
        let mut part = Vec::with_capacity(RESULTS_PART);
        let mut piece = (&mut from).take(RESULTS_PART as u64);
        let n = piece.read_to_end(&mut part).await.unwrap_or(0);
        if n == 0 {
            return Ok(());
        }
        total += n as u64;
        if total > limit {
            return Err(Cut::TooBig(limit));
        }
        let _ = events.send(Event::ResultsPart(id, part)).await;
    }
}

/// A host that ended well, with `notes`.
fn ok(timings: Timings, notes: Vec<String>) -> HostOutcome {
    HostOutcome {
        notes,
        ..HostOutcome::ok(timings)
    }
}

/// A fetch's outcome, once what the host sent was unpacked (or not).
pub(crate) fn fetched_outcome(unpacked: io::Result<Vec<String>>, timings: Timings) -> HostOutcome {
    match unpacked {
        Ok(skipped) if skipped.is_empty() => ok(timings, Vec::new()),
        Ok(skipped) => ok(
            timings,
            vec![format!(
                "not kept (neither file nor directory): {}",
                skipped.join(", ")
            )],
        ),
        Err(e) => HostOutcome::without_exit(Status::Failed, e.to_string(), timings),
    }
}

/// The outcome of a fetch whose host sent more than `limit` bytes.
pub(crate) fn too_big(limit: u64, timings: Timings) -> HostOutcome {
    cut_outcome(Cut::TooBig(limit), timings)
}

/// The outcome of a transfer cut short.
fn cut_outcome(cut: Cut, timings: Timings) -> HostOutcome {
    match cut {
        Cut::Lost(why) => HostOutcome::without_exit(Status::Failed, why, timings),
        Cut::TooBig(limit) => HostOutcome::without_exit(
            Status::Failed,
            format!("the host sent more than {limit} bytes (--max-bytes): stopped"),
            timings,
        ),
        Cut::Cancelled => {
            HostOutcome::without_exit(Status::Cancelled, "interrupted: transfer stopped", timings)
        }
        Cut::TimedOut(after) => HostOutcome::without_exit(
            Status::TimedOut,
            format!("transfer stopped after {}s timeout", after.as_secs_f64()),
            timings,
        ),
    }
}

/// Why a transfer script failed, in one line: the last thing it said on stderr.
fn failure(what: &str, answer: &Answer) -> String {
    let stderr = String::from_utf8_lossy(&answer.stderr);
    let code = answer
        .code
        .map_or_else(|| "killed".to_string(), |c| format!("exit {c}"));
    match stderr.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(last) => format!("{what} failed: {}", last.trim()),
        None => format!("{what} failed ({code})"),
    }
}

/// Unpacks the host's archives (one after the other in `data`) into
/// `folder`, keeping only regular files and directories, with masked
/// modes. Returns the names of entries left out.
pub(crate) fn unpack_untrusted(data: impl Read, folder: &Path) -> io::Result<Vec<String>> {
    real_dir(folder)?;
    let mut archive = tar::Archive::new(data);
    // one archive per fetched path, back to back
    archive.set_ignore_zeros(true);
    let mut skipped = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.into_owned();
        let Some(rel) = inside(&name) else {
            return Err(io::Error::other(format!(
                "unsafe name in the host's archive: {}",
                name.display()
            )));
        };
        let mode = entry.header().mode().unwrap_or(0o644) & KEPT_MODE;
        let kind = entry.header().entry_type();
        let target = folder.join(&rel);
        if kind.is_dir() {
            real_dirs(folder, &rel)?;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o700))?;
        } else if kind.is_file() {
            if let Some(parent) = rel.parent() {
                real_dirs(folder, parent)?;
            }
            write_file(&mut entry, &target, mode)?;
        } else {
            skipped.push(rel.display().to_string());
        }
    }
    Ok(skipped)
}

/// `name` as a path that stays below the folder: plain components only.
fn inside(name: &Path) -> Option<PathBuf> {
    let mut rel = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!rel.as_os_str().is_empty()).then_some(rel)
}

/// Makes `dir` a real directory (never through a symlink).
fn real_dir(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::other(format!(
            "{}: not a directory (refusing to write through it)",
            dir.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(dir),
        Err(e) => Err(e),
    }
}

/// Makes every directory of `rel` below `folder` a real directory.
fn real_dirs(folder: &Path, rel: &Path) -> io::Result<()> {
    let mut at = folder.to_path_buf();
    for part in rel.components() {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{}: not a directory (refusing to write through it)",
                    at.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&at)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes a regular file, never through a symlink, with `mode`.
fn write_file(from: &mut impl Read, target: &Path, mode: u32) -> io::Result<()> {
    if let Ok(m) = fs::symlink_metadata(target)
        && !m.is_file()
    {
        return Err(io::Error::other(format!(
            "{}: already there and not a file",
            target.display()
        )));
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(target)?;
    io::copy(from, &mut file)?;
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, tar::EntryType, u32, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, mode, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_size(data.len() as u64);
            if kind.is_symlink() {
                h.set_link_name("/etc/passwd").unwrap();
            }
            // set_path refuses `..`: write the raw name
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn fetched_modes_are_masked_and_links_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = archive(&[
            ("d", tar::EntryType::Directory, 0o777, b""),
            ("d/run", tar::EntryType::Regular, 0o4777, b"#!/bin/sh\n"),
            ("d/link", tar::EntryType::Symlink, 0o777, b""),
        ]);
        // a second archive after the first, as fetch.sh sends them
        data.extend(archive(&[("f", tar::EntryType::Regular, 0o666, b"x")]));
        let skipped = unpack_untrusted(&data[..], dir.path()).unwrap();
        assert_eq!(skipped, vec!["d/link".to_string()]);
        let mode = |p: &str| {
            fs::metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("d"), 0o755);
        assert_eq!(mode("d/run"), 0o755);
        assert_eq!(mode("f"), 0o644);
        assert!(fs::symlink_metadata(dir.path().join("d/link")).is_err());
        assert_eq!(fs::read(dir.path().join("d/run")).unwrap(), b"#!/bin/sh\n");
    }

    #[test]
    fn names_leaving_the_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = archive(&[("../evil", tar::EntryType::Regular, 0o644, b"x")]);
        let err = unpack_untrusted(&data[..], &dir.path().join("h")).unwrap_err();
        assert!(err.to_string().contains("unsafe name"), "{err}");
        assert!(!dir.path().join("evil").exists());
    }

    #[test]
    fn a_symlinked_folder_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/tmp", dir.path().join("h")).unwrap();
        let data = archive(&[("f", tar::EntryType::Regular, 0o644, b"x")]);
        assert!(unpack_untrusted(&data[..], &dir.path().join("h")).is_err());
    }
}
