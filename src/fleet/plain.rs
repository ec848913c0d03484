//! Payloads on a host without tar or gzip (minimal images): files go up
//! one per channel and `$PUSHRUN_OUT` comes back as plain entries, all over
//! the same master connection, every file still checked with sha256.
//!
//! Not SFTP: the subsystem is often missing (dropbear ships none, hardened
//! hosts turn it off) and cannot write as another user, while a channel
//! running `/bin/sh` works wherever pushrun's scripts do.
//!
//! Upload: `put.sh` per missing file, at most four channels at once (sshd
//! allows 10 per connection by default), each reading the file
//! to its end (exact, where a count read from a pipe may come short),
//! checking its sha256 and renaming it into place. Collect: collect.sh
//! sends the plain stream of `plain-out.sh`; it is read with exact counts,
//! every file's digest checked, and rebuilt as the tar.gz that tar and gzip
//! would have sent, so that the results and their bounds
//! (`--max-results`) go on exactly as from any other host.

use std::ffi::OsStr;
use std::io::{self, BufRead, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt};
use tokio_util::io::SyncIoBridge;

use super::collect::{CollectError, Sink, stream};
use super::payload::StageError;
use super::{PayloadJob, error_chain, script_failure};
use crate::events::StageStats;
use crate::payload::FileSource;
use crate::remote;
use crate::session::Session;

/// The first line of the plain stream.
const PLAIN_HEADER: &[u8] = b"pushrun-plain 1\n";

/// The longest header line or name read from a host.
const LINE_LIMIT: usize = 64 * 1024;

/// Sends the `needed` files one per channel (see the module's doc).
pub(super) async fn put_files(
    session: &Session,
    job: &PayloadJob,
    (base, run_id): (&str, &str),
    needed: &[String],
    stats: &mut StageStats,
) -> Result<(), StageError> {
    let next = Mutex::new(needed.iter());
    let failed: Mutex<Option<StageError>> = Mutex::new(None);
    let totals = Mutex::new((0u64, 0u64));
    let worker = async || {
        loop {
            if failed.lock().is_ok_and(|f| f.is_some()) {
                return;
            }
            let Some(path) = next.lock().ok().and_then(|mut n| n.next()) else {
                return;
            };
            match put_one(session, job, (base, run_id), path).await {
                Ok((sent, received)) => {
                    if let Ok(mut t) = totals.lock() {
                        t.0 += sent;
                        t.1 += received;
                    }
                }
                Err(e) => {
                    if let Ok(mut f) = failed.lock() {
                        f.get_or_insert(e);
                    }
                    return;
                }
            }
        }
    };
    // four channels at once
    tokio::join!(worker(), worker(), worker(), worker());
    let (sent, received) = totals.into_inner().unwrap_or_default();
    stats.bytes_sent += sent;
    stats.bytes_received += received;
    stats.files_sent = needed.len();
    match failed.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One file up through `put.sh`: the bytes sent and received.
async fn put_one(
    session: &Session,
    job: &PayloadJob,
    (base, run_id): (&str, &str),
    path: &str,
) -> Result<(u64, u64), StageError> {
    let failed = |reason: String| StageError::Failed {
        reason,
        base: Some(base.to_string()),
    };
    let (entry, source) = job
        .payload
        .file_source(path)
        .ok_or_else(|| failed(format!("{path} is not in the payload")))?;
    let input: Box<dyn AsyncBufRead + Unpin + Send> = match source {
        FileSource::Embedded(bytes) => Box::new(bytes),
        FileSource::Disk(p) => {
            let file = tokio::fs::File::open(p)
                .await
                .map_err(|e| failed(format!("cannot read {}: {e}", p.display())))?;
            Box::new(tokio::io::BufReader::with_capacity(64 * 1024, file))
        }
    };
    let mode = format!("{:03o}", entry.mode);
    let digest = job.payload.digest();
    let cache = if job.cache { "cache" } else { "nocache" };
    let out = session
        .run_script_from(
            remote::PUT,
            "pushrun-put",
            &[base, digest, run_id, cache, &entry.sha256, &mode, path],
            input,
            0,
        )
        .await
        .map_err(|e| StageError::Lost(error_chain(&e)))?;
    if let Some(reason) = remote::error_line(&out.stdout) {
        return Err(failed(reason));
    }
    if out.code != Some(0) {
        return Err(failed(script_failure("put failed".into(), &out)));
    }
    Ok((entry.size, out.stdout.len() as u64))
}

/// Reads what collect.sh sends: a tar.gz goes on as it is; the plain
/// stream (a host without tar or gzip) is checked and rebuilt as one.
/// Returns the archive's length and the content's digest, as [`stream`].
pub(super) async fn stream_any(
    mut r: impl AsyncRead + Unpin + Send + 'static,
    sink: Option<&Sink<'_>>,
) -> Result<(u64, Option<[u8; 32]>), CollectError> {
    let mut first = Vec::with_capacity(PLAIN_HEADER.len());
    while first.len() < PLAIN_HEADER.len() {
        let mut buf = [0u8; 16];
        let want = PLAIN_HEADER.len() - first.len();
        match r.read(&mut buf[..want]).await {
            Ok(0) => break,
            Ok(n) => first.extend_from_slice(&buf[..n]),
            Err(e) => return Err(CollectError::Failed(e.to_string())),
        }
        if !PLAIN_HEADER.starts_with(&first) {
            break;
        }
    }
    if first != PLAIN_HEADER {
        return stream(AsyncReadExt::chain(std::io::Cursor::new(first), r), sink).await;
    }
    let (packed, rebuilt) = tokio::io::duplex(64 * 1024);
    let rebuilding = tokio::task::spawn_blocking(move || {
        let input = io::BufReader::with_capacity(64 * 1024, SyncIoBridge::new(r));
        rebuild(input, SyncIoBridge::new(rebuilt))
    });
    // stopped early (--max-results): the rebuild ends by itself once its
    // output or the host's stream breaks
    let got = stream(packed, sink).await?;
    rebuilding
        .await
        .map_err(|e| CollectError::Failed(e.to_string()))?
        .map_err(CollectError::Failed)?;
    Ok(got)
}

/// Reads the plain stream after its first line from `input` and writes the
/// tar.gz of its entries to `out`; `Err` says what was wrong.
fn rebuild(input: impl BufRead, out: impl Write) -> Result<(), String> {
    let mut tar = tar::Builder::new(GzEncoder::new(out, Compression::fast()));
    append_entries(input, &mut tar)?;
    tar.into_inner()
        .and_then(GzEncoder::finish)
        .map_err(|e| format!("cannot rebuild the results: {e}"))?;
    Ok(())
}

/// What `pushrun fetch` got from a host: its tar archives as they are,
/// or, from a host without tar, its plain stream checked and rebuilt as
/// one tar of the same entries.
pub(super) fn fetched_as_tar(data: Vec<u8>) -> Result<Vec<u8>, String> {
    let Some(plain) = data.strip_prefix(PLAIN_HEADER) else {
        return Ok(data);
    };
    let mut tar = tar::Builder::new(Vec::new());
    append_entries(plain, &mut tar)?;
    tar.into_inner()
        .map_err(|e| format!("cannot rebuild what the host sent: {e}"))
}

/// Reads the plain stream's entries, up to and including its `end` line,
/// into `tar`, checking every file's size and digest.
fn append_entries<W: Write>(
    mut input: impl BufRead,
    tar: &mut tar::Builder<W>,
) -> Result<(), String> {
    let write = |e: io::Error| format!("cannot rebuild the results: {e}");
    loop {
        let line = read_line(&mut input)?;
        let fields: Vec<&str> = line.split(' ').collect();
        let (kind, rest) = fields.split_first().ok_or("unexpected results stream")?;
        let num = |s: &str, radix| u64::from_str_radix(s, radix).ok();
        let (mode, size, len) = match (*kind, rest) {
            ("end", []) => break,
            ("d", [m, n]) => (num(m, 8), Some(0), num(n, 10)),
            ("l" | "o", [n]) => (Some(0o644), Some(0), num(n, 10)),
            ("f", [m, s, n]) => (num(m, 8), num(s, 10), num(n, 10)),
            _ => return Err(format!("unexpected results line '{line}'")),
        };
        let (Some(mode), Some(size), Some(len)) = (mode, size, len) else {
            return Err(format!("unexpected results line '{line}'"));
        };
        let name = read_name(&mut input, len)?;
        let shown = String::from_utf8_lossy(&name).into_owned();
        let path = std::path::Path::new(OsStr::from_bytes(&name));
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode((mode & 0o7777) as u32);
        header.set_mtime(0);
        header.set_entry_type(match *kind {
            "d" => tar::EntryType::Directory,
            "f" => tar::EntryType::Regular,
            "l" => tar::EntryType::Symlink,
            _ => tar::EntryType::Fifo,
        });
        if *kind != "f" {
            tar.append_data(&mut header, path, io::empty())
                .map_err(write)?;
            continue;
        }
        let mut content = Hashing {
            inner: (&mut input).take(size),
            hash: Sha256::new(),
            count: 0,
        };
        tar.append_data(&mut header, path, &mut content)
            .map_err(|e| format!("{shown}: {}", write(e)))?;
        if content.count != size {
            return Err(format!("{shown}: the results stream was cut short"));
        }
        let got = crate::payload::hex(&content.hash.finalize());
        let line = read_line(&mut input)?;
        if line.strip_prefix("sum ") != Some(got.as_str()) {
            return Err(format!("{shown} changed while it was collected"));
        }
    }
    Ok(())
}

/// One header line, without its newline.
fn read_line(input: &mut impl BufRead) -> Result<String, String> {
    let mut line = Vec::new();
    input
        .take(LINE_LIMIT as u64)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("cannot read the results: {e}"))?;
    match line.pop() {
        Some(b'\n') => {}
        None => return Err("the results stream was cut short".into()),
        Some(_) => return Err("unexpected results stream".into()),
    }
    String::from_utf8(line).map_err(|_| "unexpected results stream".into())
}

/// A name of `len` bytes and its newline.
fn read_name(input: &mut impl BufRead, len: u64) -> Result<Vec<u8>, String> {
    if len == 0 || len > LINE_LIMIT as u64 {
        return Err(format!("unexpected results name length {len}"));
    }
    let mut name = vec![0u8; len as usize + 1];
    input
        .read_exact(&mut name)
        .map_err(|_| "the results stream was cut short".to_string())?;
    if name.pop() != Some(b'\n') {
        return Err("unexpected results stream".into());
    }
    Ok(name)
}

/// Reads through, hashing and counting what passes.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> String {
        crate::payload::hex(&Sha256::digest(bytes))
    }

    fn unpack(gz: &[u8]) -> Vec<(String, tar::EntryType, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(gz));
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let mut content = Vec::new();
            e.read_to_end(&mut content).unwrap();
            out.push((
                String::from_utf8(e.path_bytes().into_owned()).unwrap(),
                e.header().entry_type(),
                e.header().mode().unwrap(),
                content,
            ));
        }
        out
    }

    #[test]
    fn a_plain_stream_becomes_the_same_entries_in_a_tar_gz() {
        let bin = b"\x00\x01\xff\nbin";
        let mut s = Vec::new();
        s.extend_from_slice(b"d 755 7\nsub dir\n");
        s.extend_from_slice(format!("f 644 {} 11\nsub dir/a\nb", bin.len()).as_bytes());
        s.extend_from_slice(b"\n");
        s.extend_from_slice(bin);
        s.extend_from_slice(format!("sum {}\n", sum(bin)).as_bytes());
        s.extend_from_slice(format!("f 600 0 5\nempty\nsum {}\n", sum(b"")).as_bytes());
        s.extend_from_slice(b"l 4\nlink\nend\n");
        let mut gz = Vec::new();
        rebuild(&s[..], &mut gz).unwrap();
        let got = unpack(&gz);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].0, "sub dir");
        assert_eq!(got[0].1, tar::EntryType::Directory);
        assert_eq!(
            got[1],
            (
                "sub dir/a\nb".into(),
                tar::EntryType::Regular,
                0o644,
                bin.to_vec()
            )
        );
        assert_eq!(
            got[2],
            ("empty".into(), tar::EntryType::Regular, 0o600, vec![])
        );
        assert_eq!(got[3].1, tar::EntryType::Symlink);
    }

    #[test]
    fn fetched_tars_pass_as_they_are_and_a_plain_stream_becomes_a_tar() {
        assert_eq!(fetched_as_tar(b"any tar".to_vec()).unwrap(), b"any tar");
        let plain = format!(
            "pushrun-plain 1\nf 644 2 4\nname\nhisum {}\nend\n",
            sum(b"hi")
        );
        let tar = fetched_as_tar(plain.into_bytes()).unwrap();
        let mut a = tar::Archive::new(&tar[..]);
        let mut e = a.entries().unwrap().next().unwrap().unwrap();
        let mut content = String::new();
        e.read_to_string(&mut content).unwrap();
        assert_eq!(
            (e.path_bytes().as_ref(), content.as_str()),
            (&b"name"[..], "hi")
        );
    }

    #[test]
    fn a_changed_or_cut_file_is_an_error() {
        let changed = format!("f 644 3 1\na\nabcsum {}\nend\n", sum(b"abd"));
        assert_eq!(
            rebuild(changed.as_bytes(), Vec::new()),
            Err("a changed while it was collected".into())
        );
        // a file that shrank after its size was sent: what follows is read
        // as its content, and the digest line is then missing
        let shrank = format!("f 644 9 1\na\nabcsum {}\nend\n", sum(b"abc"));
        assert!(rebuild(shrank.as_bytes(), Vec::new()).is_err());
        assert_eq!(
            rebuild(&b"d 755 1\nx\n"[..], Vec::new()),
            Err("the results stream was cut short".into())
        );
        assert!(rebuild(&b"d 755 3\n../\nend\n"[..], Vec::new()).is_err());
    }
}
