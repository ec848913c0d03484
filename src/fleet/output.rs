//! Bytes from a host turned into events: output lines, and the records a
//! payload writes to `$PUSHRUN_TUNNEL`.
//!
//! The session hands over raw streams and sockets; this is where they
//! become [`Event`]s, so that the session knows nothing of events.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::events::{Event, HostId, Stream};
use crate::session::{Session, Tunnel, TunnelEnds};

/// A tunnel whose records are being read.
#[derive(Debug)]
pub(super) struct ServedTunnel {
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
    ends: TunnelEnds,
}

/// The longest record taken; a longer line is cut there.
const MAX_RECORD: usize = 1 << 20;

/// Reads every line written to the tunnel, by any number of connections,
/// as [`Event::Record`]s of `host`.
pub(super) fn serve_tunnel(
    tunnel: Tunnel,
    host: HostId,
    events: mpsc::Sender<Event>,
) -> ServedTunnel {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let (listener, ends) = tunnel.split();
    let task = tokio::spawn(async move {
        let mut readers = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                conn = listener.accept() => match conn {
                    Ok((stream, _)) => {
                        readers.spawn(read_records(stream, host, events.clone()));
                    }
                    Err(_) => break,
                },
                _ = &mut stopped => break,
            }
        }
        // The payload has ended: what it wrote is on its way; wait for
        // it, a little (a process it left behind may hold a connection).
        let drain = async { while readers.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    });
    ServedTunnel { task, stop, ends }
}

impl ServedTunnel {
    /// After the payload's end: takes what is still arriving, then closes the forwarding.
    pub(super) async fn finish(self, session: &Session) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        session.close_tunnel(self.ends).await;
    }
}

async fn read_records(stream: tokio::net::UnixStream, host: HostId, events: mpsc::Sender<Event>) {
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut reader)
            .take(MAX_RECORD as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(n) => n,
            Err(_) => break,
        };
        if n == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if !line.is_empty() {
            let _ = events.send(Event::Record(host, line.clone())).await;
        }
    }
}

/// Cuts a byte stream into [`Event::Output`] lines.
///
/// Lines longer than 64 KiB are passed on in pieces (`complete` false), as
/// is a last line without a newline. With `strip_cr`, a `\r` before the
/// newline is dropped (a PTY sends `\r\n`).
pub(super) struct LineSplitter<'a> {
    host: HostId,
    stream: Stream,
    strip_cr: bool,
    events: &'a mpsc::Sender<Event>,
    pending: Vec<u8>,
}

impl<'a> LineSplitter<'a> {
    const MAX_PIECE: usize = 64 * 1024;

    /// A splitter sending `host`'s `stream` lines on `events`.
    pub(super) fn new(
        host: HostId,
        stream: Stream,
        strip_cr: bool,
        events: &'a mpsc::Sender<Event>,
    ) -> Self {
        LineSplitter {
            host,
            stream,
            strip_cr,
            events,
            pending: Vec::new(),
        }
    }

    async fn emit(&self, line: Vec<u8>, complete: bool) {
        let _ = self
            .events
            .send(Event::Output {
                host: self.host,
                stream: self.stream,
                line,
                complete,
            })
            .await;
    }

    /// Takes the next bytes, sending every line they complete.
    pub(super) async fn push(&mut self, mut chunk: &[u8]) {
        while let Some(pos) = chunk.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&chunk[..pos]);
            if self.strip_cr && self.pending.last() == Some(&b'\r') {
                self.pending.pop();
            }
            let line = std::mem::take(&mut self.pending);
            self.emit(line, true).await;
            chunk = &chunk[pos + 1..];
        }
        self.pending.extend_from_slice(chunk);
        while self.pending.len() >= Self::MAX_PIECE {
            let rest = self.pending.split_off(Self::MAX_PIECE);
            let piece = std::mem::replace(&mut self.pending, rest);
            self.emit(piece, false).await;
        }
    }

    /// The end of the stream: sends a last line without a newline.
    pub(super) async fn finish(mut self) {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.emit(rest, false).await;
        }
    }
}

/// Reads `reader` to its end, sending one [`Event::Output`] per line (see
/// [`LineSplitter`]).
pub(super) async fn read_lines<R>(
    mut reader: R,
    strip_cr: bool,
    host: HostId,
    stream: Stream,
    events: &mpsc::Sender<Event>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut lines = LineSplitter::new(host, stream, strip_cr, events);
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        lines.push(&buf[..n]).await;
    }
    lines.finish().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8], strip_cr: bool) -> Vec<(Vec<u8>, bool)> {
        let (tx, mut rx) = mpsc::channel(100);
        let reader = async move { read_lines(input, strip_cr, 7, Stream::Stderr, &tx).await };
        let collect = async {
            let mut got = Vec::new();
            while let Some(ev) = rx.recv().await {
                let Event::Output {
                    host: 7,
                    stream: Stream::Stderr,
                    line,
                    complete,
                } = ev
                else {
                    panic!("{ev:?}")
                };
                got.push((line, complete));
            }
            got
        };
        let (r, got) = tokio::join!(reader, collect);
        r.unwrap();
        got
    }

    #[tokio::test]
    async fn lines_are_split_and_the_last_partial_line_kept() {
        let got = lines_of(b"one\r\ntwo\n\nthree", true).await;
        assert_eq!(
            got,
            vec![
                (b"one".to_vec(), true),
                (b"two".to_vec(), true),
                (vec![], true),
                (b"three".to_vec(), false)
            ]
        );
    }

    #[tokio::test]
    async fn very_long_lines_come_in_pieces() {
        let input = vec![b'x'; 150 * 1024];
        let sizes: Vec<_> = lines_of(&input, false)
            .await
            .into_iter()
            .map(|(l, c)| (l.len(), c))
            .collect();
        assert_eq!(sizes, vec![(65536, false), (65536, false), (22528, false)]);
    }
}
