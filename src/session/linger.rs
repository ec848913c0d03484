//! A script that stays on its channel once it has answered, to become the
//! next script there when asked (check.sh, which becomes collect.sh once
//! the run has ended): one channel, login shell and bootstrap fewer per
//! payload run.

use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::Session;
use super::exec::{ANSWER_MARGIN, Fed, ScriptOutput, exit_code, read_at_most};
use crate::remote::{self, AfterFrame};

/// A script that answered and waits on its stdin for what comes next.
pub struct Lingering<'s> {
    child: openssh::Child<&'s openssh::Session>,
    stdin: Option<openssh::ChildStdin>,
    stdout: Option<AfterFrame<openssh::ChildStdout>>,
    stderr: Option<AfterFrame<openssh::ChildStderr>>,
}

/// What a lingering script became: its streams after its new frame marker
/// (what came before it, the old script's, is dropped), and the process,
/// for its exit status.
pub struct Continued<'s> {
    /// The remote process (the same one), for its exit status.
    pub child: openssh::Child<&'s openssh::Session>,
    /// Its stdin, still open after a request that reads on (`run`).
    pub stdin: Option<openssh::ChildStdin>,
    /// Its stdout, after the new frame marker.
    pub stdout: Option<AfterFrame<AfterFrame<openssh::ChildStdout>>>,
    /// Its stderr, after the new frame marker.
    pub stderr: Option<AfterFrame<AfterFrame<openssh::ChildStderr>>>,
}

impl<'s> Lingering<'s> {
    /// Ends the script (the end of its stdin: it exits, the run dir left
    /// to whoever holds it) and waits until its channel is closed, so that
    /// a server that allows one session at a time can open the next.
    pub async fn end(self) {
        let limit = std::time::Duration::from_secs(10);
        let _ = tokio::time::timeout(limit, self.drain(0)).await;
    }

    /// Closes the script's stdin and reads it to its end: the first `keep`
    /// bytes of its stderr, and its exit code.
    async fn drain(mut self, keep: usize) -> (Vec<u8>, Result<Option<i32>, openssh::Error>) {
        drop(self.stdin.take());
        let out = async {
            if let Some(r) = self.stdout.as_mut() {
                read_at_most(r, 0).await;
            }
        };
        let err = async {
            match self.stderr.as_mut() {
                Some(r) => read_at_most(r, keep).await,
                None => Vec::new(),
            }
        };
        let ((), err) = tokio::join!(out, err);
        (err, exit_code(self.child.wait().await))
    }

    /// Writes `line` (a word and a newline) to the script, which then
    /// prints a new frame marker and becomes what the word asked for.
    pub async fn then(mut self, line: &str) -> Continued<'s> {
        if let Some(mut w) = self.stdin.take() {
            // a script gone already says so by its end
            let _ = w.write_all(format!("{line}\n").as_bytes()).await;
            let _ = w.shutdown().await;
        }
        Continued {
            child: self.child,
            stdin: None,
            stdout: self.stdout.map(AfterFrame::new),
            stderr: self.stderr.map(AfterFrame::new),
        }
    }

    /// Sends the upload `upload` (`size` bytes, in receive.sh's `format`)
    /// to the script, which receives it (check.sh's "receive") and then
    /// stays: the request line and the upload right behind it. Returns what
    /// the script printed and its exit code (from the line "received RC",
    /// which is not in `stdout`), and the script, still waiting, when it
    /// went well; else (it failed, ended, or the upload could not be sent
    /// whole) the script is ended, and its output, error output and exit
    /// code are returned.
    pub async fn receive<R: AsyncBufRead + Unpin>(
        mut self,
        format: &str,
        upload: R,
        size: u64,
    ) -> Result<(ScriptOutput, Option<Lingering<'s>>), openssh::Error> {
        let started = Instant::now();
        let request = remote::receive_request(size, format);
        let (stdin, stdout) = (&mut self.stdin, &mut self.stdout);
        let mut sent = false;
        let mut answer = Vec::new();
        if let (Some(w), Some(r)) = (stdin.as_mut(), stdout.as_mut()) {
            let send = async {
                // in the reader's own pieces (a 64 KiB buffer: a write to
                // the master's socket each, not one per 8 KiB)
                w.write_all(request.as_bytes()).await.is_ok()
                    && tokio::io::copy_buf(&mut upload.take(size), w)
                        .await
                        .is_ok_and(|n| n == size)
                    && w.flush().await.is_ok()
            };
            let read = read_line_to(r, &mut answer, b"received ", ANSWER_MARGIN);
            (sent, _) = tokio::join!(send, read);
        }
        let stdout_done = started.elapsed();
        // the receive's code, on the last line (which is not its output)
        let code = match last_line(&answer) {
            Some((from, line)) if line.starts_with(b"received ") => {
                let code = std::str::from_utf8(&line[b"received ".len()..])
                    .ok()
                    .and_then(|c| c.parse::<i32>().ok());
                answer.truncate(from);
                code
            }
            _ => None,
        };
        if sent && code == Some(0) {
            let output = ScriptOutput {
                code,
                stdout: answer,
                stdout_done,
                stderr: Vec::new(),
            };
            return Ok((output, Some(self)));
        }
        // it failed, ended or was cut short: what it said (its error output
        // too), and how it ended (the receive's code where it said it)
        let (stderr, ended) = self.drain(ANSWER_MARGIN).await;
        let code = match code {
            Some(code) => Some(code),
            None => ended?,
        };
        Ok((
            ScriptOutput {
                code,
                stdout: answer,
                stdout_done,
                stderr,
            },
            None,
        ))
    }

    /// Writes `request` (check.sh's "run": its line and the lines it
    /// announces) and leaves stdin open, for what the script reads next.
    pub async fn then_run(mut self, request: &str) -> Continued<'s> {
        let mut stdin = self.stdin.take();
        if let Some(w) = stdin.as_mut() {
            // a script gone already says so by its end
            if w.write_all(request.as_bytes()).await.is_err() || w.flush().await.is_err() {
                stdin = None;
            }
        }
        Continued {
            child: self.child,
            stdin,
            stdout: self.stdout.map(AfterFrame::new),
            stderr: self.stderr.map(AfterFrame::new),
        }
    }
}

impl Session {
    /// Runs a gated script whose answer ends with a line that starts with
    /// `last`, after which it stays (see [`Lingering`]). Returns the answer
    /// (at most `asked` bytes and [`ANSWER_MARGIN`] more are kept) and the
    /// waiting script; or, when the script ended instead (it failed, or
    /// sent more than that), its whole output and exit code, and no script.
    pub async fn run_lingering<'s>(
        &'s self,
        script: &str,
        name: &str,
        args: &[&str],
        asked: usize,
        last: &[u8],
    ) -> Result<(ScriptOutput, Option<Lingering<'s>>), openssh::Error> {
        let started = Instant::now();
        let start = remote::start_gated(script, name, args, &[]);
        let Fed {
            child,
            feeder,
            mut stdout,
            stderr,
        } = self.spawn_fed(start.line(), start.preamble).await?;
        // the script says by its output when it could not be sent
        let stdin = feeder.first_only().await;
        let max = asked.saturating_add(ANSWER_MARGIN);
        let mut answer = Vec::new();
        let whole = match stdout.as_mut() {
            Some(r) => read_line_to(r, &mut answer, last, max).await,
            None => false,
        };
        let stdout_done = started.elapsed();
        let script = Lingering {
            child,
            stdin,
            stdout,
            stderr,
        };
        if whole {
            let output = ScriptOutput {
                code: Some(0),
                stdout: answer,
                stdout_done,
                stderr: Vec::new(),
            };
            return Ok((output, Some(script)));
        }
        // ended (or said too much): what it said, and how it ended
        let (stderr, code) = script.drain(ANSWER_MARGIN).await;
        Ok((
            ScriptOutput {
                code: code?,
                stdout: answer,
                stdout_done,
                stderr,
            },
            None,
        ))
    }
}

/// Reads `r` into `answer` until it ends with a whole line that starts
/// with `last` (true), or its end or more than `max` bytes (false; what is
/// kept is cut to `max`).
async fn read_line_to<R: AsyncRead + Unpin>(
    r: &mut R,
    answer: &mut Vec<u8>,
    last: &[u8],
    max: usize,
) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
        if answer.len() > max {
            answer.truncate(max);
            return false;
        }
        if answer_ends_with(answer, last) {
            return true;
        }
    }
}

/// The last line of `answer` when it ends with a newline: where it starts,
/// and the line without its newline.
fn last_line(answer: &[u8]) -> Option<(usize, &[u8])> {
    let body = answer.strip_suffix(b"\n")?;
    let start = body
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    Some((start, &body[start..]))
}

/// Whether `answer` ends with a whole line that starts with `last`.
fn answer_ends_with(answer: &[u8], last: &[u8]) -> bool {
    last_line(answer).is_some_and(|(_, line)| line.starts_with(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_whole_at_its_last_line_only() {
        assert!(answer_ends_with(b"base /x\nchecked 3\n", b"checked "));
        assert!(answer_ends_with(b"checked 0\n", b"checked "));
        assert!(!answer_ends_with(b"base /x\nchecked 3", b"checked "));
        assert!(!answer_ends_with(b"need checked 3\n", b"checked "));
        assert!(!answer_ends_with(b"checked 3\nneed a\n", b"checked "));
        assert!(!answer_ends_with(b"", b"checked "));
    }
}
