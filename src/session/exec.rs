//! Running things through a connected master: pushrun's scripts behind the
//! bootstrap line (see `remote::boot`), a command line with or without a
//! PTY, and a script run to its end with its answer read (and bounded).

use std::io;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::Session;
use crate::remote;

impl Session {
    /// Reads a script's stdout (or its stderr, `stderr`) after its frame
    /// marker, counting what the login files printed ahead of it.
    pub fn after_frame<R>(&self, stream: R, stderr: bool) -> remote::AfterFrame<R> {
        remote::AfterFrame::new(stream).counted(&self.login_noise, stderr)
    }

    /// Counts what the login files printed ahead of the frame marker on a
    /// terminal (read by hand: `remote::FrameScan`).
    pub fn note_login_noise(&self, bytes: usize) {
        self.login_noise.record(false, bytes);
    }

    /// The host's note about what its login files printed ahead of
    /// pushrun's output on any channel of this connection, if anything.
    pub fn login_noise_note(&self) -> Option<String> {
        self.login_noise.note()
    }

    /// Starts one of pushrun's remote scripts that reads nothing from stdin
    /// (collect.sh) as `NAME ARGS...` with `vars` exported and all three
    /// streams piped: the fixed bootstrap line (see `remote::start_gated`),
    /// the script written to stdin, which the caller then closes. As nothing
    /// follows the script, it is read in one go (not a byte at a time).
    pub async fn spawn_script(
        &self,
        script: &str,
        name: &str,
        args: &[&str],
        vars: &[(String, String)],
    ) -> Result<openssh::Child<&openssh::Session>, openssh::Error> {
        let start = remote::start_gated(script, name, args, vars);
        let mut child = self.spawn_line(start.line()).await?;
        if let Some(w) = child.stdin().as_mut() {
            use tokio::io::AsyncWriteExt;
            // a script that cannot be sent shows in its output and exit code
            let _ = w.write_all(&start.preamble).await;
        }
        Ok(child)
    }

    /// Starts `line` (a gated bootstrap: `remote::start_gated`) and hands
    /// back its streams: stdout and stderr read after the frame marker
    /// (login noise counted for the host's note), and a feeder that writes
    /// `first` (the preamble), waits until the script has been read, then
    /// writes `input` and closes stdin.
    pub async fn spawn_fed<'s>(
        &'s self,
        line: String,
        first: Vec<u8>,
    ) -> Result<Fed<'s>, openssh::Error> {
        let mut child = self.spawn_line(line).await?;
        let stdin = child.stdin().take();
        let mut stdout = child.stdout().take().map(|r| self.after_frame(r, false));
        let stderr = child.stderr().take().map(|r| self.after_frame(r, true));
        let framed = stdout.as_mut().map(remote::AfterFrame::framed);
        Ok(Fed {
            child,
            feeder: Feeder {
                stdin,
                first,
                framed,
            },
            stdout,
            stderr,
        })
    }

    /// Starts a remote command line (see `remote::start`) with all three
    /// streams piped. A server that limits the sessions of a connection
    /// (`MaxSessions`) may refuse one while the channel before it is still
    /// closing: it is asked again a few times, 10 ms, 20 ms, ... apart (at
    /// most 0.36 s in all) before the refusal is the answer.
    pub async fn spawn_line(
        &self,
        line: String,
    ) -> Result<openssh::Child<&openssh::Session>, openssh::Error> {
        let mut tries = 0u64;
        loop {
            let spawned = self
                .mux
                .raw_command(&line)
                .stdin(openssh::Stdio::piped())
                .stdout(openssh::Stdio::piped())
                .stderr(openssh::Stdio::piped())
                .spawn()
                .await;
            match spawned {
                Err(e) if tries < 8 && session_refused(&e) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10 * tries)).await;
                }
                other => return other,
            }
        }
    }

    /// Notes that the server allows one session at a time on this
    /// connection (it refused one beside another).
    pub fn note_one_session(&self) {
        self.one_session
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the server was seen to allow one session at a time.
    pub fn one_session(&self) -> bool {
        self.one_session.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs a remote script to its end, feeding it `input`; returns its
    /// exit code (None if killed), stdout and stderr, without what the
    /// login files printed ahead of the script (`remote::AfterFrame`).
    pub async fn run_script(
        &self,
        script: &str,
        name: &str,
        args: &[&str],
        input: &[u8],
    ) -> Result<ScriptOutput, openssh::Error> {
        self.run_script_from(script, name, args, input, input.len())
            .await
    }

    /// [`Session::run_script`] with its input read from `input` as it goes
    /// (a payload archive streamed from its file, never held whole).
    ///
    /// A script's answer is about what it was asked (check.sh names files
    /// of the manifest it got), so what is kept of its stdout is at most
    /// `asked` bytes and [`ANSWER_MARGIN`] more, of its stderr the margin:
    /// a host that sends more is read to its end but not kept, and the
    /// answer's parser finds it cut short.
    pub async fn run_script_from(
        &self,
        script: &str,
        name: &str,
        args: &[&str],
        input: impl tokio::io::AsyncBufRead + Unpin,
        asked: usize,
    ) -> Result<ScriptOutput, openssh::Error> {
        let started = tokio::time::Instant::now();
        // the input waits until the script has been read (its frame marker
        // on stdout), so the bootstrap reads the script in one go
        let start = remote::start_gated(script, name, args, &[]);
        let Fed {
            child,
            feeder,
            mut stdout,
            mut stderr,
        } = self.spawn_fed(start.line(), start.preamble).await?;
        let read_out = async {
            let buf = match stdout.as_mut() {
                Some(r) => read_at_most(r, asked.saturating_add(ANSWER_MARGIN)).await,
                None => Vec::new(),
            };
            (buf, started.elapsed())
        };
        let read_err = async {
            match stderr.as_mut() {
                Some(r) => read_at_most(r, ANSWER_MARGIN).await,
                None => Vec::new(),
            }
        };
        let ((), (stdout, stdout_done), stderr) =
            tokio::join!(feeder.feed(input), read_out, read_err);
        let code = exit_code(child.wait().await)?;
        Ok(ScriptOutput {
            code,
            stdout,
            stdout_done,
            stderr,
        })
    }

    /// Starts a remote command line (see `remote::start_pty`) with a PTY, through
    /// the master (`ssh -S ctl -tt`).
    ///
    /// stdout and stderr arrive merged on the child's stdout, as on any
    /// terminal. Run under `remote/pty.sh`, a command does not run where the
    /// server refuses the PTY: the child exits [`NO_PTY_EXIT`](super::NO_PTY_EXIT).
    pub fn spawn_pty_line(&self, remote: String) -> io::Result<Child> {
        self.spawn_through_master(&["-tt"], remote)
    }

    /// Starts one of pushrun's remote scripts through the master with a
    /// plain `ssh -S` client, for what the mux client cannot ask for (agent
    /// forwarding: `opts` = `["-o", "ForwardAgent=yes"]`). The script is
    /// written to its stdin first and what it reads follows at once, so it
    /// is read a byte at a time (`remote::start`); its
    /// stdout and stderr still start with the login's noise and the frame
    /// marker (read them through `remote::AfterFrame`).
    pub async fn spawn_client(
        &self,
        opts: &[&str],
        script: &str,
        name: &str,
        args: &[&str],
    ) -> io::Result<Child> {
        use tokio::io::AsyncWriteExt;
        let mut all = vec!["-T"];
        all.extend_from_slice(opts);
        let start = remote::start(script, name, args, &[]);
        let mut child = self.spawn_through_master(&all, start.line())?;
        if let Some(w) = child.stdin.as_mut() {
            w.write_all(&start.preamble).await?;
        }
        Ok(child)
    }

    /// `ssh -S <control socket> OPTS -- DESTINATION REMOTE`, quiet, all
    /// streams piped. It never opens a connection of its own: without the
    /// master it fails (ProxyCommand=false).
    fn spawn_through_master(&self, opts: &[&str], remote: String) -> io::Result<Child> {
        let mut cmd = Command::new("ssh");
        cmd.arg("-S").arg(&self.ctl).arg("-q").args(opts);
        cmd.args(["-o", "ControlMaster=no", "-o", "BatchMode=yes"])
            .args(["-o", "ProxyCommand=false"]);
        cmd.arg("-F").arg(&self.config_file);
        cmd.arg("--").arg(&self.destination).arg(remote);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.process_group(0).kill_on_drop(true);
        cmd.spawn()
    }
}

/// How much more than it was asked a script's answer may be (see
/// [`Session::run_script_from`]).
pub const ANSWER_MARGIN: usize = 1 << 20;

/// Whether `e` is the server refusing a session channel (see
/// [`is_refusal`]), anywhere in its chain of causes.
fn session_refused(e: &openssh::Error) -> bool {
    let mut cause: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cause {
        if is_refusal(&c.to_string()) {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Whether an error's text is the server refusing a session channel
/// ("Session open refused by peer", as ssh's mux server words it).
pub fn is_refusal(text: &str) -> bool {
    text.contains("open refused")
}

/// Reads `r` to its end, keeping its first `max` bytes.
pub(super) async fn read_at_most(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    max: usize,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = max.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(&buf[..room]);
            }
        }
    }
}

/// What a remote script left behind.
#[derive(Debug)]
pub struct ScriptOutput {
    /// Its exit code; None when it was killed.
    pub code: Option<i32>,
    /// What it wrote to stdout (at most what [`Session::run_script_from`] keeps).
    pub stdout: Vec<u8>,
    /// How long after it was started its stdout ended.
    pub stdout_done: Duration,
    /// What it wrote to stderr (its first [`ANSWER_MARGIN`] bytes).
    pub stderr: Vec<u8>,
}

/// A remote command's exit code from what the mux client reports: `None`
/// when it was killed by a signal. openssh turns exit 127 into an error of
/// its own; it is an exit code like any other here.
pub fn exit_code(
    waited: Result<std::process::ExitStatus, openssh::Error>,
) -> Result<Option<i32>, openssh::Error> {
    match waited {
        Ok(status) => Ok(status.code()),
        Err(openssh::Error::Remote(e)) if e.kind() == io::ErrorKind::NotFound => Ok(Some(127)),
        Err(openssh::Error::RemoteProcessTerminated) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A script started by [`Session::spawn_fed`].
pub struct Fed<'s> {
    /// The remote process, for its exit status.
    pub child: openssh::Child<&'s openssh::Session>,
    /// What writes its stdin.
    pub feeder: Feeder,
    /// Its stdout, after the frame marker.
    pub stdout: Option<remote::AfterFrame<openssh::ChildStdout>>,
    /// Its stderr, after the frame marker.
    pub stderr: Option<remote::AfterFrame<openssh::ChildStderr>>,
}

/// Writes a gated script's stdin: its preamble, then, once the script has
/// been read, its input.
pub struct Feeder {
    stdin: Option<openssh::ChildStdin>,
    first: Vec<u8>,
    framed: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Feeder {
    /// Writes the preamble, waits for the frame marker, copies `input` and
    /// closes stdin. A script that stops reading early says why on its own,
    /// so write errors are not the answer.
    pub async fn feed(mut self, mut input: impl tokio::io::AsyncBufRead + Unpin) {
        use tokio::io::AsyncWriteExt;
        self.send_first().await;
        if let Some(w) = self.stdin.as_mut() {
            if let Some(mut framed) = self.framed {
                let _ = framed.wait_for(|done| *done).await;
            }
            // in the input's own pieces (a file's 64 KiB buffer: a write to
            // the master's socket each)
            let _ = tokio::io::copy_buf(&mut input, w).await;
            let _ = w.shutdown().await;
        }
    }

    /// Writes the preamble and hands back stdin, open, for what the script
    /// is told later (a lingering script: `Session::run_lingering`).
    pub(super) async fn first_only(mut self) -> Option<openssh::ChildStdin> {
        self.send_first().await;
        self.stdin
    }

    async fn send_first(&mut self) {
        use tokio::io::AsyncWriteExt;
        if let Some(w) = self.stdin.as_mut() {
            let _ = w.write_all(&self.first).await;
            let _ = w.flush().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_answer_is_kept_up_to_its_bound_and_read_to_its_end() {
        let sent = vec![7u8; 300 * 1024];
        let mut r = &sent[..];
        assert_eq!(read_at_most(&mut r, 100_000).await, vec![7u8; 100_000]);
        assert!(r.is_empty(), "the rest was read too");
        let mut r = &b"short"[..];
        assert_eq!(read_at_most(&mut r, 100).await, b"short");
    }
}
