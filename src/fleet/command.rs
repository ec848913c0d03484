//! Running one command line on a host and watching it to its end: output
//! streamed as lines, the timeout, Ctrl-C and convergence, and sudo's
//! prompt answered on a PTY.

use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

use super::output::{LineSplitter, read_lines};
use super::{RESTARTED, STOP_GRACE, Triggers, error_chain, raised, reloaded};

use crate::events::{HostOutcome, Status, Stream, Timings};
use crate::remote::SUDO_PROMPT;

use crate::session::{NO_PTY_EXIT, exit_code};

use super::host::{HostTask, Launch};

/// What to do about sudo's prompt on a terminal.
pub(super) enum PromptAction {
    None,
    Answer,
    Refused(String),
}

/// Watches a terminal's output for [`SUDO_PROMPT`]: sudo prints it first,
/// before anything of the command; it is answered once and taken out (with
/// the newline sudo sends after the password). A second prompt means the
/// password was wrong; a prompt with nothing to answer, that one is needed.
pub(super) struct PromptScan {
    pub(super) state: ScanState,
    pub(super) head: Vec<u8>,
}

#[derive(PartialEq)]
pub(super) enum ScanState {
    /// Still reading what may be the prompt.
    Start { have_answer: bool },
    /// Answered: drop the newline that follows.
    Answered,
    /// Then sudo's verdict on the password, or the command's first output.
    Verdict,
    /// Everything passes.
    Pass,
}

impl PromptScan {
    pub(super) fn new(have_answer: bool) -> PromptScan {
        PromptScan {
            state: ScanState::Start { have_answer },
            head: Vec::new(),
        }
    }

    /// Adds `bytes` to what is held and compares it with `marker`: `None`
    /// once all of the marker is there; otherwise what to return now, which
    /// is the held bytes (and no more scanning) where they differ from the
    /// marker, or nothing yet where they are a part of it.
    fn expect(&mut self, bytes: &[u8], marker: &[u8]) -> Option<(Vec<u8>, PromptAction)> {
        self.head.extend_from_slice(bytes);
        let n = self.head.len().min(marker.len());
        if self.head[..n] != marker[..n] {
            self.state = ScanState::Pass;
            return Some((std::mem::take(&mut self.head), PromptAction::None));
        }
        if self.head.len() < marker.len() {
            return Some((Vec::new(), PromptAction::None));
        }
        None
    }

    /// Takes output bytes; returns those to show, and what to do.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> (Vec<u8>, PromptAction) {
        let prompt = SUDO_PROMPT.as_bytes();
        match self.state {
            ScanState::Pass => (bytes.to_vec(), PromptAction::None),
            ScanState::Start { have_answer } => {
                if let Some(undecided) = self.expect(bytes, prompt) {
                    return undecided;
                }
                if !have_answer {
                    self.state = ScanState::Pass;
                    return (
                        Vec::new(),
                        PromptAction::Refused(
                            "sudo: a password is required (give become_password_env in the \
                             inventory, or --ask-become-pass)"
                                .into(),
                        ),
                    );
                }
                self.state = ScanState::Answered;
                let rest = self.head.split_off(prompt.len());
                self.head.clear();
                let (pass, _) = self.feed(&rest);
                (pass, PromptAction::Answer)
            }
            ScanState::Answered => {
                self.head.extend_from_slice(bytes);
                // sudo's newline after the password (the terminal makes it \r\n)
                for nl in [&b"\r\n"[..], b"\n"] {
                    if self.head.starts_with(nl) {
                        self.state = ScanState::Verdict;
                        let rest = self.head.split_off(nl.len());
                        self.head.clear();
                        return self.feed(&rest);
                    }
                }
                if self.head.len() < 2 && self.head.first().is_none_or(|&b| b == b'\r') {
                    return (Vec::new(), PromptAction::None);
                }
                self.state = ScanState::Verdict;
                let rest = std::mem::take(&mut self.head);
                self.feed(&rest)
            }
            ScanState::Verdict => {
                // "Sorry, try again." (and the prompt again) or the command's output
                if let Some(undecided) = self.expect(bytes, b"Sorry, try again.") {
                    return undecided;
                }
                self.state = ScanState::Pass;
                self.head.clear();
                (
                    Vec::new(),
                    PromptAction::Refused("sudo: incorrect sudo password".into()),
                )
            }
        }
    }
}

/// How a command ended, before it becomes a [`HostOutcome`].
pub(super) enum CommandEnd {
    Exited(i32),
    Signalled,
    TimedOut,
    Cancelled,
    NoPty,
    /// Still running when the run converged: stopped.
    Converged,
    /// Stopped to run a new version of the payload (--watch).
    Reloaded,
    /// The command could not run as asked (sudo's refusals); why.
    Refused(String),
    Lost(String),
}

impl CommandEnd {
    pub(super) fn into_outcome(self, timeout: Option<Duration>, timings: Timings) -> HostOutcome {
        let (status, exit_code, reason) = match self {
            CommandEnd::Exited(0) => (Status::Ok, Some(0), None),
            CommandEnd::Exited(c) => (Status::Failed, Some(c), Some(format!("exit {c}"))),
            CommandEnd::Signalled => (Status::Failed, None, Some("killed by a signal".to_string())),
            CommandEnd::TimedOut => {
                let secs = timeout.map(|t| t.as_secs_f64()).unwrap_or_default();
                (Status::TimedOut, None, Some(format!("killed after the {secs}s timeout")))
            }
            CommandEnd::Cancelled => (Status::Cancelled, None, Some("interrupted: command killed".to_string())),
            CommandEnd::NoPty => (
                Status::Failed,
                None,
                Some("the server refused a PTY (PermitTTY no?): run without --pty, or with --pty auto".to_string()),
            ),
            CommandEnd::Refused(why) => (Status::Failed, None, Some(why)),
            CommandEnd::Converged => (
                Status::Stopped,
                None,
                Some("still running when the run converged: stopped".to_string()),
            ),
            CommandEnd::Reloaded => (Status::Cancelled, None, Some(RESTARTED.to_string())),
            CommandEnd::Lost(why) => (Status::Unreachable, None, Some(format!("connection lost: {why}"))),
        };
        HostOutcome {
            status,
            exit_code,
            reason,
            notes: Vec::new(),
            timings,
            stage: None,
        }
    }
}

/// Waits for `work`, or stops it early on timeout, cancellation,
/// convergence or a new payload.
///
/// `stop` is called once, with why, to make the remote command end (it
/// writes "stop" or closes stdin, or kills the local ssh); then `work` gets
/// [`STOP_GRACE`] to finish.
pub(super) async fn supervise<W, S, F>(
    work: W,
    stop: S,
    timeout: Option<Duration>,
    triggers: &mut Triggers,
) -> CommandEnd
where
    W: Future<Output = CommandEnd>,
    S: FnOnce(&CommandEnd) -> F,
    F: Future<Output = ()>,
{
    tokio::pin!(work);
    let limit = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let early = tokio::select! {
        end = &mut work => return end,
        _ = limit => CommandEnd::TimedOut,
        _ = raised(&mut triggers.cancel) => CommandEnd::Cancelled,
        _ = raised(&mut triggers.converged) => CommandEnd::Converged,
        _ = reloaded(&mut triggers.reload) => CommandEnd::Reloaded,
    };

    stop(&early).await;
    let _ = tokio::time::timeout(STOP_GRACE, &mut work).await;
    early
}

impl HostTask<'_> {
    pub(super) async fn run_launch(
        &mut self,
        launch: Launch,
        keep_on_timeout: bool,
        timeout: Option<Duration>,
    ) -> CommandEnd {
        let end = if launch.pty {
            self.run_pty(launch, keep_on_timeout, timeout).await
        } else {
            self.run_streamed(launch, keep_on_timeout, timeout).await
        };
        // a command that ended without its status, or with ssh's 255, may
        // have lost its host: that is a connection failure, not the command's
        match end {
            CommandEnd::Signalled | CommandEnd::Exited(255) | CommandEnd::Lost(_) => {
                match self.session.lost().await {
                    Some(why) => CommandEnd::Lost(why),
                    None => end,
                }
            }
            end => end,
        }
    }

    /// Runs a remote command line with its output streamed as events,
    /// stopping it on timeout or cancellation by closing its stdin.
    pub(super) async fn run_streamed(
        &mut self,
        launch: Launch,
        keep_on_timeout: bool,
        timeout: Option<Duration>,
    ) -> CommandEnd {
        let (id, session, events) = (self.id, self.session, self.events);
        let mut child = match session.spawn_line(launch.line).await {
            Ok(c) => c,
            Err(e) => return CommandEnd::Lost(error_chain(&e)),
        };
        let mut stdin = child.stdin().take();
        if let (Some(first), Some(w)) = (&launch.stdin_first, stdin.as_mut()) {
            use tokio::io::AsyncWriteExt;
            let _ = w.write_all(first).await;
            let _ = w.flush().await;
        }
        // what the login files printed ahead of the script is not its output
        let mut stdout = child.stdout().take().map(|r| session.after_frame(r, false));
        let stderr = child.stderr().take().map(|r| session.after_frame(r, true));
        // "stop" waits until the script has been read (remote::start_gated)
        let framed = stdout.as_mut().map(crate::remote::AfterFrame::framed);
        let hash = launch.hash;
        let work = async move {
            let out = async {
                if let Some(r) = stdout {
                    let r = HashingReader { inner: r, hash };
                    let _ = read_lines(r, false, id, Stream::Stdout, events).await;
                }
            };
            let err = async {
                if let Some(r) = stderr {
                    let _ = read_lines(r, false, id, Stream::Stderr, events).await;
                }
            };
            tokio::join!(out, err);
            match exit_code(child.wait().await) {
                Ok(Some(c)) => CommandEnd::Exited(c),
                Ok(None) => CommandEnd::Signalled,
                Err(e) => CommandEnd::Lost(error_chain(&e)),
            }
        };
        let stop = move |why: &CommandEnd| {
            let keep =
                keep_on_timeout && matches!(why, CommandEnd::TimedOut | CommandEnd::Converged);
            async move {
                // "stop": run.sh ends the run and keeps its dir for collect.sh
                // (the end of stdin that follows comes after the line, so it is
                // not taken for a lost initiator). Otherwise the end of stdin
                // alone: the wrapper ends the whole process group.
                if let (true, Some(mut w)) = (keep, stdin) {
                    use tokio::io::AsyncWriteExt;
                    if let Some(mut framed) = framed {
                        let read = framed.wait_for(|done| *done);
                        let _ = tokio::time::timeout(STOP_GRACE, read).await;
                    }
                    let _ = w.write_all(b"stop\n").await;
                    let _ = w.flush().await;
                }
            }
        };
        supervise(work, stop, timeout, &mut self.triggers).await
    }

    /// Runs a remote command line on a PTY (`ssh -tt` through the master):
    /// stdout and stderr arrive merged. Answers sudo's prompt when asked to.
    pub(super) async fn run_pty(
        &mut self,
        launch: Launch,
        keep_on_timeout: bool,
        timeout: Option<Duration>,
    ) -> CommandEnd {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (id, session, events) = (self.id, self.session, self.events);
        let mut child = match session.spawn_pty_line(launch.line) {
            Ok(c) => c,
            Err(e) => return CommandEnd::Lost(format!("cannot start ssh: {e}")),
        };
        let stdin = Arc::new(tokio::sync::Mutex::new(child.stdin.take()));
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let pid = child.id();
        let answer = launch.answer;
        let preamble = launch.stdin_first;
        let input = stdin.clone();
        let work = async move {
            // The terminal's output, with sudo's prompt answered and taken out.
            let out = async {
                let mut r = stdout?;
                let mut lines = LineSplitter::new(id, Stream::Stdout, true, events);
                let mut prompt = PromptScan::new(answer.is_some());
                // the login's noise before the marker is not the command's output
                let mut frame = crate::remote::FrameScan::default();
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    let n = match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let (pass, action) = prompt.feed(&buf[..n]);
                    match action {
                        PromptAction::Answer => {
                            if let (Some(secret), Some(w)) = (&answer, input.lock().await.as_mut())
                            {
                                let _ = w
                                    .write_all(format!("{}\n", secret.expose()).as_bytes())
                                    .await;
                                let _ = w.flush().await;
                            }
                        }
                        PromptAction::Refused(why) => {
                            if let Some(pid) = pid {
                                // SAFETY: kill(2) on our own ssh child.
                                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                            }
                            return Some(why);
                        }
                        PromptAction::None => {}
                    }
                    let (pass, framed) = frame.feed(&pass);
                    if framed {
                        // the terminal is raw and silent now: the script
                        session.note_login_noise(frame.dropped());
                        if let (Some(pre), Some(w)) = (&preamble, input.lock().await.as_mut()) {
                            let _ = w.write_all(pre).await;
                            let _ = w.flush().await;
                        }
                    }
                    lines.push(&pass).await;
                }
                lines.push(&frame.finish()).await;
                lines.finish().await;
                None
            };
            // Only our wrapper, sudo without a terminal and ssh itself write
            // here: the remote command's stderr goes to the terminal.
            let err = async {
                let mut text = Vec::new();
                if let Some(mut r) = stderr {
                    let _ = r.read_to_end(&mut text).await;
                }
                text
            };
            let (refused, err_text) = tokio::join!(out, err);
            let status = child.wait().await;
            match refused {
                Some(why) => CommandEnd::Refused(why),
                None => pty_end(status, &err_text),
            }
        };
        let stop = move |why: &CommandEnd| {
            let keep =
                keep_on_timeout && matches!(why, CommandEnd::TimedOut | CommandEnd::Converged);
            async move {
                if keep {
                    // run.sh reads "stop" from the terminal: end the run, keep its dir
                    if let Some(w) = stdin.lock().await.as_mut() {
                        let _ = w.write_all(b"stop\n").await;
                        let _ = w.flush().await;
                    }
                    return;
                }
                if let Some(pid) = pid {
                    // SAFETY: kill(2) on our own ssh child; the master then closes the
                    // channel and sshd hangs up the remote terminal.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                }
            }
        };
        supervise(work, stop, timeout, &mut self.triggers).await
    }
}

/// How a command on a PTY ended, from ssh's exit status and what it (or
/// our wrapper, or sudo without a terminal) wrote on stderr.
fn pty_end(status: std::io::Result<std::process::ExitStatus>, err_text: &[u8]) -> CommandEnd {
    let err_text = String::from_utf8_lossy(err_text).trim().to_string();
    match status {
        Ok(status) => match status.code() {
            Some(NO_PTY_EXIT) if err_text.contains("no pseudo terminal") => CommandEnd::NoPty,
            Some(_) if err_text.contains("must have a tty") => CommandEnd::Refused(
                "sudo requires a terminal on this host (requiretty), and the server \
                 refuses one (PermitTTY no)"
                    .into(),
            ),
            Some(255) => CommandEnd::Lost(err_text),
            Some(c) => CommandEnd::Exited(c),
            None => CommandEnd::Signalled,
        },
        Err(e) => CommandEnd::Lost(e.to_string()),
    }
}

/// Passes bytes through, hashing them on the way when asked to.
pub(super) struct HashingReader<R> {
    pub(super) inner: R,
    pub(super) hash: Option<Arc<std::sync::Mutex<Sha256>>>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for HashingReader<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let (std::task::Poll::Ready(Ok(())), Some(hash)) = (&polled, &self.hash)
            && let Ok(mut h) = hash.lock()
        {
            h.update(&buf.filled()[before..]);
        }
        polled
    }
}
