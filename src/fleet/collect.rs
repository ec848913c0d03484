//! Bringing a payload's `$PUSHRUN_OUT` back: the host's gzip'ed tar goes
//! on as [`Event::ResultsPart`]s as it arrives, never held whole, so
//! pushrun's memory stays bounded whatever a host sends; and a host that
//! sends more than `--max-results` (packed or unpacked: a few MB of
//! zeros unpack to GBs) is stopped there and fails with that reason.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, mpsc};

use super::ended::EndMarked;
use super::error_chain;
use super::output::read_lines;
use crate::events::{Event, HostId, RESULTS_PART, Stream};
use crate::remote;
use crate::session::{Continued, Lingering, Session, exit_code};

/// Where a collect's archive goes, and its bounds.
pub(super) struct Sink<'a> {
    pub(super) id: HostId,
    pub(super) events: &'a mpsc::Sender<Event>,
    /// `--max-results`: the most bytes kept, packed or unpacked.
    pub(super) max: u64,
    /// Also digest the results' content (under --repeat and --watch).
    pub(super) digest: bool,
}

/// What came back.
pub(super) struct Collected {
    /// Bytes of the archive, as sent.
    pub(super) bytes: u64,
    /// How long the archive took to arrive.
    pub(super) streamed: Duration,
    /// The content's digest (see [`results_digest`]), when asked for.
    pub(super) digest: Option<[u8; 32]>,
}

/// Why a collect brought nothing whole back.
pub(super) enum CollectError {
    /// The collect failed; why (the script's message, or the mux's).
    Failed(String),
    /// The host sent more than `--max-results`: stopped.
    TooBig(u64),
}

/// Where a run's results come from.
pub(super) enum Source<'s> {
    /// collect.sh on a channel of its own.
    Channel,
    /// The run's check, which becomes collect.sh on its own channel (see
    /// `Session::run_lingering`).
    Check(Box<Lingering<'s>>),
    /// The check that ran the payload itself: its channel goes on with
    /// them (check.sh, "Then").
    Here(Box<Here<'s>>),
}

/// A check that ran the payload and is sending its results (check.sh,
/// "Then": after its end line). On stdout the archive, on stderr the
/// collect's message, each up to the `done` line; what follows it is the
/// output of processes the payload left running.
pub(super) struct Here<'s> {
    pub(super) child: openssh::Child<&'s openssh::Session>,
    pub(super) stdout: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    pub(super) stderr: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    pub(super) done: Vec<u8>,
}

/// Runs collect.sh for `run_id`, which sends `$PUSHRUN_OUT` and removes
/// the run dir. Its archive goes to `sink`, or nowhere (a run dir cleaned
/// whose run never started). From `source`: see [`Source`].
pub(super) async fn collect<'s>(
    session: &'s Session,
    base: &str,
    run_id: &str,
    sink: Option<Sink<'_>>,
    source: Source<'s>,
) -> Result<Collected, CollectError> {
    let started = Instant::now();
    match source {
        Source::Check(check) => {
            let Continued {
                child,
                stdout,
                stderr,
                ..
            } = (*check).then("collect").await;
            return finish(child, stdout, stderr, sink, started, async {}).await;
        }
        Source::Here(here) => {
            let Here {
                child,
                stdout,
                stderr,
                done,
            } = *here;
            let late = sink.as_ref().map(|s| (s.id, s.events));
            let (archive, to_archive) = tokio::io::duplex(64 * 1024);
            let (message, to_message) = tokio::io::duplex(4096);
            let pumps = async {
                let out = late.map(|(i, e)| (i, Stream::Stdout, e));
                let err = late.map(|(i, e)| (i, Stream::Stderr, e));
                tokio::join!(
                    pump(stdout, &done, to_archive, out),
                    pump(stderr, &done, to_message, err),
                );
            };
            let (archive, message) = (Some(archive), Some(message));
            return finish(child, archive, message, sink, started, pumps).await;
        }
        Source::Channel => {}
    }
    let mut child = session
        .spawn_script(remote::COLLECT, "pushrun-collect", &[base, run_id], &[])
        .await
        .map_err(|e| CollectError::Failed(error_chain(&e)))?;
    drop(child.stdin().take());
    // what the login files print ahead of the script is not the archive
    let stdout = child.stdout().take().map(|r| session.after_frame(r, false));
    let stderr = child.stderr().take().map(|r| session.after_frame(r, true));
    finish(child, stdout, stderr, sink, started, async {}).await
}

/// Passes `r`'s bytes up to `marker` to `to` (the collect's archive or
/// message), and what follows the marker, the output of processes the
/// payload left running, on as the host's `stream` lines.
async fn pump(
    r: impl tokio::io::AsyncRead + Unpin,
    marker: &[u8],
    mut to: tokio::io::DuplexStream,
    late: Option<(HostId, Stream, &mpsc::Sender<Event>)>,
) {
    let mut m = EndMarked::new(r, marker);
    let _ = tokio::io::copy(&mut m, &mut to).await;
    drop(to);
    if !m.found() {
        return;
    }
    let r = m.into_stream();
    match late {
        Some((id, stream, events)) => {
            let _ = read_lines(r, false, id, stream, events).await;
        }
        None => {
            let _ = tokio::io::copy(&mut { r }, &mut tokio::io::sink()).await;
        }
    }
}

/// Reads a collect's archive (to `sink`) and its message, and how it ended.
/// `beside` runs along, to its end, before the exit status is asked for
/// (which lets the channel close: see [`Source::Here`]); it is given up
/// when the archive fails.
async fn finish(
    child: openssh::Child<&openssh::Session>,
    stdout: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>,
    stderr: Option<impl tokio::io::AsyncRead + Unpin + Send>,
    sink: Option<Sink<'_>>,
    started: Instant,
    beside: impl Future<Output = ()>,
) -> Result<Collected, CollectError> {
    let stop = Notify::new();
    let stop_beside = Notify::new();
    let read_out = async {
        let got = match stdout {
            // a tar.gz, or plain entries from a host without tar or gzip
            Some(r) => super::plain::stream_any(r, sink.as_ref()).await,
            None => Ok((0, None)),
        };
        if got.is_err() {
            stop.notify_one();
            stop_beside.notify_one();
        }
        got.map(|(bytes, digest)| (bytes, started.elapsed(), digest))
    };
    let read_err = async {
        // the script's message, if any: a few lines at most, kept to 4 KiB
        let mut text = Vec::new();
        let Some(mut r) = stderr else { return text };
        let mut buf = [0u8; 4096];
        loop {
            tokio::select! {
                n = r.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => text.extend_from_slice(&buf[..n.min(4096 - text.len().min(4096))]),
                },
                () = stop.notified() => break,
            }
        }
        text
    };
    let beside = async {
        tokio::select! {
            () = beside => {}
            () = stop_beside.notified() => {}
        }
    };
    let (out, err, ()) = tokio::join!(read_out, read_err, beside);
    // stopped early: dropping the child closes its channel, and collect.sh
    // removes the run dir when its output breaks
    let (bytes, streamed, digest) = out?;
    match exit_code(child.wait().await) {
        Ok(Some(0)) => Ok(Collected {
            bytes,
            streamed,
            digest,
        }),
        Ok(_) => Err(CollectError::Failed(
            String::from_utf8_lossy(&err).trim().to_string(),
        )),
        Err(e) => Err(CollectError::Failed(error_chain(&e))),
    }
}

/// Reads the archive to its end, passing it on in pieces; returns its
/// length and the content's digest (when asked for).
pub(super) async fn stream(
    mut r: impl tokio::io::AsyncRead + Unpin,
    sink: Option<&Sink<'_>>,
) -> Result<(u64, Option<[u8; 32]>), CollectError> {
    let max = sink.map_or(u64::MAX, |s| s.max);
    // the unpacked size, counted as the archive passes (not kept)
    let mut unpacked = flate2::write::GzDecoder::new(Counter(0));
    let mut countable = true;
    let (digest_tx, digester) = match sink.filter(|s| s.digest) {
        Some(_) => {
            let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
            let reader = ChannelReader {
                rx,
                held: Vec::new(),
                at: 0,
            };
            let task = tokio::task::spawn_blocking(move || results_digest(reader));
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    let mut buf = vec![0u8; RESULTS_PART];
    let mut bytes = 0u64;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(CollectError::Failed(e.to_string())),
        };
        let part = &buf[..n];
        bytes += n as u64;
        // what is not gzip is not counted here: unpacking it will say so
        countable = countable && unpacked.write_all(part).is_ok();
        if bytes > max || unpacked.get_ref().0 > max {
            return Err(CollectError::TooBig(max));
        }
        let Some(sink) = sink else { continue };
        if let Some(tx) = &digest_tx {
            let _ = tx.send(part.to_vec()).await;
        }
        let _ = sink
            .events
            .send(Event::ResultsPart(sink.id, part.to_vec()))
            .await;
    }
    drop(digest_tx);
    let digest = match digester {
        Some(task) => task.await.ok(),
        None => None,
    };
    Ok((bytes, digest))
}

/// Counts what is written to it, and keeps none of it.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The archive's pieces as one stream, for a blocking reader.
struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    held: Vec<u8>,
    at: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.held.len() {
            match self.rx.blocking_recv() {
                Some(next) => (self.held, self.at) = (next, 0),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.held.len() - self.at);
        buf[..n].copy_from_slice(&self.held[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A digest of a results archive's content (paths, modes, bytes), not of
/// its bytes: a payload that writes the same files again at other times
/// has the same results. Reads the archive to its end.
pub(super) fn results_digest(archive: impl Read) -> [u8; 32] {
    let mut entries: Vec<(Vec<u8>, u32, [u8; 32])> = Vec::new();
    let mut gz = flate2::read::GzDecoder::new(archive);
    if let Ok(iter) = tar::Archive::new(&mut gz).entries() {
        for entry in iter.flatten() {
            let mut entry = entry;
            let path = entry.path_bytes().into_owned();
            let mode = entry.header().mode().unwrap_or(0);
            let mut h = Sha256::new();
            let mut buf = [0u8; 8192];
            loop {
                match entry.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => h.update(&buf[..n]),
                }
            }
            entries.push((path, mode, h.finalize().into()));
        }
    }
    // the sender waits on this reader: drain what is left
    let _ = std::io::copy(&mut gz.into_inner(), &mut std::io::sink());
    entries.sort();
    let mut h = Sha256::new();
    for (path, mode, content) in entries {
        h.update(&path);
        h.update([0]);
        h.update(mode.to_le_bytes());
        h.update(content);
    }
    h.finalize().into()
}

/// A size for people: `1 GiB`, `600 MiB`, `1536 KiB`, `100 bytes`.
pub(crate) fn size_text(bytes: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size_text(1 << 30), "1 GiB");
        assert_eq!(size_text(600 << 20), "600 MiB");
        assert_eq!(size_text(1536 << 10), "1536 KiB");
        assert_eq!(size_text(100), "100 bytes");
    }
}
