//! How a script reaches a host: a short fixed command line, the script over
//! the channel, and a frame marker that separates the login's noise from the
//! script's own bytes.
//!
//! sshd runs every command as `$SHELL -c LINE` with the login user's shell,
//! so the line must mean the same to sh, bash, dash, zsh, busybox ash, csh,
//! tcsh and fish: one line, no backslash, no `!`, nothing but a single-quoted
//! word for `/bin/sh -c`. It never grows with the script (dropbear refuses
//! lines over 9000 bytes, and argv shows in `ps` on the host): the script,
//! its arguments and its exports are sent first on stdin as a length line
//! and that many bytes. Whatever stdin carries next is the script's own
//! input, so the read must be exact (dash and busybox sh read a piped script
//! ahead in blocks and would swallow the data after it): where pushrun
//! writes nothing more until the script's frame marker shows it was read
//! ([`start_gated`]: every script but the relay's start) one `head -c` does
//! it, or for a short script (a command's wrapper) the shell's own `read`,
//! line by line, with no process started; where data follows at once
//! ([`start`]), `dd bs=1`, a read per byte. A command's wrapper reads no
//! script at all: exec.sh is itself the fixed line ([`start_exec`]), and
//! only the command and its exports come on stdin.
//!
//! Login files (a chatty `.bashrc`) print before the line runs. The line
//! writes [`FRAME_START`] on stdout and on stderr before the script starts;
//! everything ahead of it is the login's, and is dropped ([`AfterFrame`]);
//! how much was dropped is counted ([`LoginNoise`]) so that the host's
//! outcome says so once, instead of the bytes vanishing without a word.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use super::line::sh_quote;

/// The line each script's output starts with, on stdout and on stderr,
/// once the login shell has handed over to `/bin/sh`.
pub const FRAME_START: &str = "pushrun-frame-start-5e1f";

/// The fixed `/bin/sh -c` word: read the length line, that many bytes of
/// script, mark the start of our output, run the script.
const BOOT: &str = concat!(
    "IFS= read -r pushrun_n && pushrun_script=$(dd bs=1 count=\"$pushrun_n\" 2>/dev/null) && ",
    "echo pushrun-frame-start-5e1f && echo pushrun-frame-start-5e1f >&2 && ",
    "eval \"$pushrun_script\""
);

/// The `/bin/sh -c` word for a script whose input waits for its frame
/// marker ([`start_gated`]): nothing follows the script on stdin until the
/// script has been read, so `head -c` (one read, not one per byte) is exact.
const BOOT_GATED: &str = concat!(
    "IFS= read -r pushrun_n && pushrun_script=$(head -c \"$pushrun_n\") && ",
    "echo pushrun-frame-start-5e1f && echo pushrun-frame-start-5e1f >&2 && ",
    "eval \"$pushrun_script\""
);

/// The `/bin/sh -c` word for a small gated script ([`LINES_UP_TO`] bytes
/// or less): the length line counts lines, and the script is read line by
/// line by the shell's own `read`, with no process started for it (`head`
/// is a fork and an exec per command; reading a byte per call, as every sh
/// reads a pipe, costs less than that for a short script). The newline that
/// joins the lines is the last character of IFS, which every sh sets to
/// space, tab, newline when it starts (whatever the environment says).
const BOOT_LINES: &str = concat!(
    "pushrun_nl=${IFS#??} && IFS= read -r pushrun_n && pushrun_script= && ",
    "while [ \"$pushrun_n\" -gt 0 ] && IFS= read -r pushrun_l; do ",
    "pushrun_script=$pushrun_script$pushrun_l$pushrun_nl; pushrun_n=$((pushrun_n - 1)); done; ",
    "[ \"$pushrun_n\" = 0 ] && ",
    "echo pushrun-frame-start-5e1f && echo pushrun-frame-start-5e1f >&2 && ",
    "eval \"$pushrun_script\""
);

/// The size up to which a gated script is read line by line (`BOOT_LINES`)
/// rather than by `head -c`.
const LINES_UP_TO: usize = 3000;

/// The `/bin/sh -c` word for a script run on a terminal (`--pty`, sudo
/// prompting on one): the terminal made raw and silent (its settings saved)
/// before the marker, so that the script pushrun sends once it sees the
/// marker passes the line discipline unaltered and unechoed, whatever its
/// length (no canonical line limit); then the settings restored, and the
/// script run on the terminal as it was.
const BOOT_PTY: &str = concat!(
    "pushrun_tty=$(stty -g 2>/dev/null); stty raw -echo 2>/dev/null; ",
    "echo pushrun-frame-start-5e1f && IFS= read -r pushrun_n && ",
    "pushrun_script=$(head -c \"$pushrun_n\") && ",
    "{ [ -z \"$pushrun_tty\" ] || stty \"$pushrun_tty\" 2>/dev/null; true; } && ",
    "eval \"$pushrun_script\""
);

/// A script ready to start: the line for sshd and what goes on stdin first.
#[derive(Debug, Clone)]
pub struct Start {
    /// The command line, without a leading `exec` (see [`Start::line`]).
    pub boot: String,
    /// The length line and the script (with its arguments and exports).
    pub preamble: Vec<u8>,
}

impl Start {
    /// The whole command line: the login shell replaced by `/bin/sh`, which
    /// stays the session's process group leader (see exec.sh).
    pub fn line(&self) -> String {
        format!("exec {}", self.boot)
    }
}

/// Prepares `script` to run as `NAME ARGS...` with `vars` exported.
pub fn start(script: &str, name: &str, args: &[&str], vars: &[(String, String)]) -> Start {
    start_with(BOOT, script, name, args, vars)
}

/// As [`start`], for a caller that writes nothing after the preamble until
/// the script's stdout has shown [`FRAME_START`] (see [`AfterFrame::framed`]).
pub fn start_gated(script: &str, name: &str, args: &[&str], vars: &[(String, String)]) -> Start {
    let text = script_text(script, args, vars);
    if text.len() > LINES_UP_TO {
        return start_text(BOOT_GATED, text.len(), &text, name);
    }
    start_text(BOOT_LINES, text.matches('\n').count(), &text, name)
}

/// Prepares a command for exec.sh, which is itself the `/bin/sh -c` word
/// behind `BOOT_LINES` ([`super::EXEC`]): only `args` (the command and its
/// plain words, see exec.sh) and `vars` go on stdin, a few lines that
/// `BOOT_LINES` reads (and evaluates, after the frame marker), so a command
/// reads no script byte by byte. As [`start_gated`], nothing may follow on
/// stdin before the frame marker.
pub fn start_exec(args: &[&str], vars: &[(String, String)]) -> Start {
    let text = script_text("", args, vars);
    let line = format!("{BOOT_LINES} || exit 3; {}", super::EXEC);
    start_text(&line, text.matches('\n').count(), &text, "pushrun-exec")
}

/// The request that makes a lingering check receive an upload of `size`
/// bytes in `format` (receive.sh's FORMAT, `gz` or `tar`), sent right
/// after it (check.sh, "Then"): the line `receive SIZE FORMAT`. The check
/// has receive.sh's work already, and its own BASE, digest, run id and mode.
pub fn receive_request(size: u64, format: &str) -> String {
    format!("receive {size} {format}\n")
}

/// The request that makes a lingering check run the payload itself
/// (check.sh, "Then"): the line `run NONCE COUNT`, then COUNT lines that
/// set run.sh's arguments (`args`) and `pushrun_env`, the exports of
/// `vars`, which only the payload's process evaluates.
pub fn run_request(nonce: &str, args: &[&str], vars: &[(String, String)]) -> String {
    let mut text = script_text("", args, &[]);
    text.push_str(&format!("pushrun_env={}\n", sh_quote(&exports(vars))));
    format!("run {nonce} {}\n{text}", text.matches('\n').count())
}

/// As [`start_gated`], on a terminal: the preamble is written once the
/// terminal's output has shown [`FRAME_START`] (see [`FrameScan`]), and
/// with `quiet` the terminal's echo stays off while the script runs (a
/// payload's run, to which pushrun may write "stop").
pub fn start_pty(
    script: &str,
    name: &str,
    args: &[&str],
    vars: &[(String, String)],
    quiet: bool,
) -> Start {
    if quiet {
        let script = format!("stty -echo 2>/dev/null\n{script}");
        start_with(BOOT_PTY, &script, name, args, vars)
    } else {
        start_with(BOOT_PTY, script, name, args, vars)
    }
}

fn start_with(
    boot: &str,
    script: &str,
    name: &str,
    args: &[&str],
    vars: &[(String, String)],
) -> Start {
    let text = script_text(script, args, vars);
    start_text(boot, text.len(), &text, name)
}

/// `export NAME='VALUE'` lines for `vars`, for the shell.
fn exports(vars: &[(String, String)]) -> String {
    let mut text = String::new();
    for (k, v) in vars {
        text.push_str(&format!("export {k}={}\n", sh_quote(v)));
    }
    text
}

/// The script with its exports and arguments ahead of it, ending in a newline.
fn script_text(script: &str, args: &[&str], vars: &[(String, String)]) -> String {
    let mut text = exports(vars);
    text.push_str("set --");
    for a in args {
        text.push(' ');
        text.push_str(&sh_quote(a));
    }
    text.push('\n');
    text.push_str(script);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// `boot` as the line, `text` behind its length line (`count`: bytes or
/// lines, as `boot` reads it).
fn start_text(boot: &str, count: usize, text: &str, name: &str) -> Start {
    let mut preamble = format!("{count}\n").into_bytes();
    preamble.extend_from_slice(text.as_bytes());
    Start {
        boot: format!("/bin/sh -c {} {}", sh_quote(boot), safe_name(name)),
        preamble,
    }
}

/// A script's name as `$0`: letters, digits and dashes only, so it needs
/// no quoting in any shell.
fn safe_name(name: &str) -> String {
    let n: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    if n.is_empty() { "pushrun".into() } else { n }
}

/// Drops what comes before [`FRAME_START`]'s line; passes the rest. When
/// the marker never comes (the login shell failed before the line ran), it
/// passes what it held at the end, so that the error is seen.
pub fn skip_login(bytes: &[u8]) -> &[u8] {
    match find_frame(bytes) {
        Some(at) => &bytes[at..],
        None => bytes,
    }
}

/// Where the bytes after the marker line start, if the marker is there.
fn find_frame(bytes: &[u8]) -> Option<usize> {
    let marker = FRAME_START.as_bytes();
    let at = bytes.windows(marker.len()).position(|w| w == marker)?;
    let mut end = at + marker.len();
    if bytes.get(end) == Some(&b'\r') {
        end += 1;
    }
    if bytes.get(end) == Some(&b'\n') {
        end += 1;
    }
    Some(end)
}

/// How many bytes of `upto_frame` (what [`find_frame`] ends) come before
/// the marker's line.
fn before_marker(upto_frame: &[u8]) -> usize {
    let mut n = upto_frame.len();
    for end in [b'\n', b'\r'] {
        if n > 0 && upto_frame[n - 1] == end {
            n -= 1;
        }
    }
    n.saturating_sub(FRAME_START.len())
}

/// How much login noise is held while waiting for the marker: more is
/// dropped from the front (it is noise either way).
const HOLD_LIMIT: usize = 256 * 1024;

/// What one host's login files printed ahead of pushrun's frames, over
/// every channel of its connection: each channel starts the login shell
/// again, so the most any one channel's stdout (and stderr) dropped is what
/// the login files print once.
#[derive(Debug, Default)]
pub struct LoginNoise {
    stdout: AtomicUsize,
    stderr: AtomicUsize,
}

impl LoginNoise {
    /// What the login files print once, in bytes (stdout and stderr).
    pub fn bytes(&self) -> usize {
        self.stdout.load(Ordering::Relaxed) + self.stderr.load(Ordering::Relaxed)
    }

    /// The host's note about it, when there was any.
    pub fn note(&self) -> Option<String> {
        match self.bytes() {
            0 => None,
            n => Some(format!(
                "login files printed {n} bytes before pushrun's output (not shown)"
            )),
        }
    }

    /// Counts `dropped` bytes of one channel's stdout (or stderr).
    pub fn record(&self, stderr: bool, dropped: usize) {
        let which = if stderr { &self.stderr } else { &self.stdout };
        which.fetch_max(dropped, Ordering::Relaxed);
    }
}

/// [`AfterFrame`]'s work on bytes handed to it, for a terminal's output
/// that is read by hand (sudo's prompt answered first).
#[derive(Debug)]
pub struct FrameScan {
    /// `Some` while still looking for the marker.
    held: Option<Vec<u8>>,
    dropped: usize,
}

impl Default for FrameScan {
    fn default() -> FrameScan {
        FrameScan {
            held: Some(Vec::new()),
            dropped: 0,
        }
    }
}

impl FrameScan {
    /// The bytes of `bytes` to pass on, and whether the marker came with them.
    pub fn feed(&mut self, bytes: &[u8]) -> (Vec<u8>, bool) {
        let Some(held) = self.held.as_mut() else {
            return (bytes.to_vec(), false);
        };
        held.extend_from_slice(bytes);
        if let Some(at) = find_frame(held) {
            // a marker cut right after its text may still have its newline coming
            if at == held.len() && !held.ends_with(b"\n") {
                return (Vec::new(), false);
            }
            let rest = held.split_off(at);
            self.dropped += before_marker(held);
            self.held = None;
            return (rest, true);
        }
        if held.len() > HOLD_LIMIT {
            let cut = held.len() - HOLD_LIMIT / 2;
            held.drain(..cut);
            self.dropped += cut;
        }
        (Vec::new(), false)
    }

    /// What was held when the output ended without a marker (the login
    /// shell failed before the line ran): shown, so that the error is seen.
    pub fn finish(&mut self) -> Vec<u8> {
        self.held.take().unwrap_or_default()
    }

    /// How many bytes came before the marker (dropped as the login's).
    pub fn dropped(&self) -> usize {
        self.dropped
    }
}

/// A reader that drops the login's bytes ahead of [`FRAME_START`].
#[derive(Debug)]
pub struct AfterFrame<R> {
    inner: R,
    /// Where the dropped bytes are counted, and whether this is stderr.
    noise: Option<(Arc<LoginNoise>, bool)>,
    /// Bytes dropped from the front while holding more than the limit.
    dropped: usize,
    /// Told once the marker came (or the stream ended without it).
    framed: Option<tokio::sync::watch::Sender<bool>>,
    /// `Some` while still looking for the marker.
    held: Option<Vec<u8>>,
    /// Bytes after the marker not yet handed out.
    rest: Vec<u8>,
}

impl<R> AfterFrame<R> {
    /// Wraps a script's stdout or stderr.
    pub fn new(inner: R) -> AfterFrame<R> {
        AfterFrame {
            inner,
            noise: None,
            dropped: 0,
            framed: None,
            held: Some(Vec::new()),
            rest: Vec::new(),
        }
    }

    /// Counts what it drops into `noise` (as stderr when `stderr`).
    #[must_use]
    pub fn counted(mut self, noise: &Arc<LoginNoise>, stderr: bool) -> AfterFrame<R> {
        self.noise = Some((Arc::clone(noise), stderr));
        self
    }

    /// A receiver that turns true once the marker has come (the script has
    /// been read) or the stream has ended without one.
    pub fn framed(&mut self) -> tokio::sync::watch::Receiver<bool> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        self.framed = Some(tx);
        rx
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for AfterFrame<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.rest.is_empty() {
                let n = this.rest.len().min(buf.remaining());
                buf.put_slice(&this.rest[..n]);
                this.rest.drain(..n);
                return Poll::Ready(Ok(()));
            }
            let Some(held) = this.held.as_mut() else {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            };
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let got = rb.filled();
            if got.is_empty() {
                // the end without a marker: show what there was
                this.rest = std::mem::take(held);
                this.held = None;
                if let Some(tx) = this.framed.take() {
                    let _ = tx.send(true);
                }
                if this.rest.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            held.extend_from_slice(got);
            if let Some(at) = find_frame(held) {
                // a marker cut right after its text may still have its newline coming
                if at == held.len() && !held.ends_with(b"\n") {
                    continue;
                }
                this.rest = held.split_off(at);
                if let Some((noise, stderr)) = &this.noise {
                    noise.record(*stderr, this.dropped + before_marker(held));
                }
                this.held = None;
                if let Some(tx) = this.framed.take() {
                    let _ = tx.send(true);
                }
                continue;
            }
            if held.len() > HOLD_LIMIT {
                let cut = held.len() - HOLD_LIMIT / 2;
                held.drain(..cut);
                this.dropped += cut;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn the_line_is_fixed_and_free_of_what_csh_and_fish_choke_on() {
        let big = "x".repeat(50_000);
        let s = start(&big, "pushrun-check", &["it's", "a!b\nc"], &[]);
        let line = s.line();
        assert!(line.len() < 300, "{line}");
        assert!(!line.contains('\\') && !line.contains('!') && !line.contains('\n'));
        assert_eq!(line, start("echo", "pushrun-check", &[], &[]).line());
        assert_eq!(BOOT.matches(FRAME_START).count(), 2);
        assert_eq!(BOOT_GATED.matches(FRAME_START).count(), 2);
        let gated = start_gated(&big, "pushrun-check", &[], &[]).line();
        assert!(gated.len() < 300 && !gated.contains('\\') && !gated.contains('!'));
        // a short gated script is read line by line, its length in lines
        let short = start_gated("echo a\necho b", "pushrun-exec", &["x\ny"], &[]);
        assert!(short.line().contains("read -r pushrun_l") && short.line().len() < 500);
        assert!(!short.line().contains('\\') && !short.line().contains('!'));
        assert_eq!(short.preamble, b"4\nset -- 'x\ny'\necho a\necho b\n");
        let text = String::from_utf8(s.preamble).unwrap();
        let (len, script) = text.split_once('\n').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), script.len());
        assert!(script.starts_with("set -- 'it'\\''s' 'a!b\nc'\n"));
    }

    #[test]
    fn login_noise_before_the_marker_is_dropped() {
        let out = b"Welcome\r\npushrun-frame-start-5e1f\nbase /x\n";
        assert_eq!(skip_login(out), b"base /x\n");
        assert_eq!(skip_login(b"sh: not found\n"), b"sh: not found\n");
    }

    #[tokio::test]
    async fn the_reader_skips_noise_split_across_reads() {
        let data = b"motd line\npushrun-frame-start-5e1f\npayload\n".to_vec();
        let (a, b) = data.split_at(15);
        let r = tokio_test_reader(a.to_vec(), b.to_vec());
        let mut out = Vec::new();
        AfterFrame::new(r).read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"payload\n");
        let mut out = Vec::new();
        AfterFrame::new(&b"no marker\n"[..])
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, b"no marker\n");
    }

    #[test]
    fn the_pty_line_is_fixed_and_the_scan_finds_the_marker_in_pieces() {
        let big = "x".repeat(50_000);
        let s = start_pty(&big, "pushrun-run", &["a'b"], &[], true);
        let line = s.line();
        assert!(line.len() < 400, "{line}");
        assert!(!line.contains('\\') && !line.contains('!') && !line.contains('\n'));
        assert_eq!(
            line,
            start_pty("echo", "pushrun-run", &[], &[], false).line()
        );
        assert_eq!(BOOT_PTY.matches(FRAME_START).count(), 1);
        let text = String::from_utf8(s.preamble).unwrap();
        assert!(
            text.contains("\nstty -echo 2>/dev/null\nxxx"),
            "{}",
            &text[..80]
        );
        let mut scan = FrameScan::default();
        assert_eq!(
            scan.feed(b"Welcome\r\npushrun-frame-start-5e1f"),
            (vec![], false)
        );
        assert_eq!(scan.feed(b"\nout\r\n"), (b"out\r\n".to_vec(), true));
        assert_eq!(scan.feed(b"more"), (b"more".to_vec(), false));
        assert_eq!(scan.dropped(), 9);
        let mut none = FrameScan::default();
        assert_eq!(none.feed(b"sh: error\n"), (vec![], false));
        assert_eq!(none.finish(), b"sh: error\n");
    }

    #[tokio::test]
    async fn dropped_noise_is_counted_once_per_stream_not_per_channel() {
        let noise = Arc::new(LoginNoise::default());
        for _channel in 0..3 {
            let data = b"Welcome to host0\r\npushrun-frame-start-5e1f\r\nanswer\n".to_vec();
            let (a, b) = data.split_at(20);
            let r = tokio_test_reader(a.to_vec(), b.to_vec());
            let mut out = Vec::new();
            let mut r = AfterFrame::new(r).counted(&noise, false);
            r.read_to_end(&mut out).await.unwrap();
            assert_eq!(out, b"answer\n");
            let mut err =
                AfterFrame::new(&b"motd\npushrun-frame-start-5e1f\n"[..]).counted(&noise, true);
            err.read_to_end(&mut Vec::new()).await.unwrap();
        }
        assert_eq!(noise.bytes(), 18 + 5);
        assert_eq!(
            noise.note().unwrap(),
            "login files printed 23 bytes before pushrun's output (not shown)"
        );
        let quiet = Arc::new(LoginNoise::default());
        let mut r = AfterFrame::new(&b"pushrun-frame-start-5e1f\nx"[..]).counted(&quiet, false);
        r.read_to_end(&mut Vec::new()).await.unwrap();
        assert_eq!(quiet.note(), None);
    }

    fn tokio_test_reader(a: Vec<u8>, b: Vec<u8>) -> impl AsyncRead + Unpin {
        use tokio::io::AsyncReadExt as _;
        std::io::Cursor::new(a).chain(std::io::Cursor::new(b))
    }
}
