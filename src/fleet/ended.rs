//! A stream that ends where a marker is: a payload run by its lingering
//! check (check.sh, "Then") shares its channel with the results that
//! follow, and the check says where the payload's output ends with a line
//! that carries a nonce only the initiator knows.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use memchr::memmem::Finder;
use tokio::io::{AsyncRead, ReadBuf};

/// Passes `inner`'s bytes up to `marker`, then reads as ended. What came
/// after the marker stays for [`EndMarked::into_stream`].
pub(super) struct EndMarked<R> {
    inner: R,
    finder: Finder<'static>,
    /// Read from `inner`, not handed out yet.
    held: Vec<u8>,
    /// How many bytes at the front of `held` are known to come before the
    /// marker (handed out as they are asked for).
    clear: usize,
    /// The marker was found (`held` is what preceded it) or `inner` ended.
    done: bool,
    /// Whether the marker was found.
    found: bool,
    /// What followed the marker.
    rest: Vec<u8>,
}

impl<R> EndMarked<R> {
    pub(super) fn new(inner: R, marker: &[u8]) -> EndMarked<R> {
        EndMarked {
            inner,
            finder: Finder::new(marker).into_owned(),
            held: Vec::new(),
            clear: 0,
            done: false,
            found: false,
            rest: Vec::new(),
        }
    }

    /// Whether the marker came (else the stream ended without it).
    pub(super) fn found(&self) -> bool {
        self.found
    }

    /// The stream from just after the marker: what came after it, then
    /// the rest of `inner`.
    pub(super) fn into_stream(self) -> tokio::io::Chain<io::Cursor<Vec<u8>>, R>
    where
        R: AsyncRead,
    {
        tokio::io::AsyncReadExt::chain(io::Cursor::new(self.rest), self.inner)
    }

    /// Looks for the marker in what is held; marks what may go out.
    fn scan(&mut self) {
        let len = self.finder.needle().len();
        if let Some(at) = self.finder.find(&self.held) {
            self.rest = self.held.split_off(at + len);
            self.held.truncate(at);
            self.clear = at;
            self.done = true;
            self.found = true;
        } else {
            // only a tail that is the start of the marker waits for more
            let needle = self.finder.needle();
            let keep = (1..len.min(self.held.len() + 1))
                .rev()
                .find(|&k| self.held.ends_with(&needle[..k]))
                .unwrap_or(0);
            self.clear = self.held.len() - keep;
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for EndMarked<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.clear > 0 {
                let n = this.clear.min(buf.remaining());
                buf.put_slice(&this.held[..n]);
                this.held.drain(..n);
                this.clear -= n;
                return Poll::Ready(Ok(()));
            }
            if this.done {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // ended without the marker: all of it goes out
                    this.clear = this.held.len();
                    this.done = true;
                }
                Poll::Ready(Ok(())) => {
                    this.held.extend_from_slice(read.filled());
                    this.scan();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Feeds `parts` one read at a time; returns what passed, whether the
    /// marker was found and what followed it.
    async fn split(parts: &[&[u8]], marker: &[u8]) -> (Vec<u8>, bool, Vec<u8>) {
        let mut b = tokio_test_reader(parts);
        let mut r = EndMarked::new(&mut b, marker);
        let mut passed = Vec::new();
        r.read_to_end(&mut passed).await.unwrap();
        let found = r.found();
        let mut rest = Vec::new();
        r.into_stream().read_to_end(&mut rest).await.unwrap();
        (passed, found, rest)
    }

    /// A reader that returns `parts` one per read.
    fn tokio_test_reader(parts: &[&[u8]]) -> Parts {
        Parts(parts.iter().map(|p| p.to_vec()).collect())
    }

    struct Parts(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Parts {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(p) = self.0.pop_front() {
                buf.put_slice(&p);
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn output_ends_at_the_marker_wherever_the_reads_cut_it() {
        let m = b"pushrun-end-0123abcd ";
        let (p, f, r) = split(&[b"line 1\nno newline", m, b"0\n\x1f\x8brest"], m).await;
        assert_eq!(
            (p.as_slice(), f, r.as_slice()),
            (&b"line 1\nno newline"[..], true, &b"0\n\x1f\x8brest"[..])
        );
        let (p, f, r) = split(&[b"ab pushrun-e", b"nd-0123", b"abcd 7\nxyz"], m).await;
        assert_eq!(
            (p.as_slice(), f, r.as_slice()),
            (&b"ab "[..], true, &b"7\nxyz"[..])
        );
        // a look-alike with another nonce is output
        let (p, f, _) = split(
            &[b"pushrun-end-0123abce 0\n", b"pushrun-end-0123abcd 0\n"],
            m,
        )
        .await;
        assert_eq!((p.as_slice(), f), (&b"pushrun-end-0123abce 0\n"[..], true));
    }

    #[tokio::test]
    async fn output_is_not_held_back_unless_it_may_be_the_marker_starting() {
        let m = b"pushrun-end-0123abcd ";
        let mut b = tokio_test_reader(&[b"started\n", b"progress pushrun-e"]);
        let mut r = EndMarked::new(&mut b, m);
        let mut buf = [0u8; 64];
        let n = r.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"started\n");
        let n = r.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"progress ");
    }

    #[tokio::test]
    async fn without_the_marker_everything_passes() {
        let m = b"pushrun-end-0123abcd ";
        let (p, f, r) = split(&[b"all ", b"of it pushrun-end-0123"], m).await;
        assert_eq!(
            (p.as_slice(), f, r.len()),
            (&b"all of it pushrun-end-0123"[..], false, 0)
        );
    }
}
