//! The requests of OpenSSH's multiplexing protocol (PROTOCOL.mux) that the
//! `openssh` crate does not make: "exit" (`ssh -O exit`), and "check"
//! (`ssh -O check`) on a socket we have no `Session` for yet.
//!
//! `openssh::Session::close` sends "stop listening" (`ssh -O stop`), which
//! leaves a `-N` master running with no socket. Each request is one short
//! exchange on the control socket, far cheaper than starting `ssh -O exit`
//! (which reads every ssh config first), and unlike SIGTERM it is acted on
//! at once.

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const MUX_MSG_HELLO: u32 = 0x0000_0001;
const MUX_C_ALIVE_CHECK: u32 = 0x1000_0004;
const MUX_C_TERMINATE: u32 = 0x1000_0005;
const MUX_S_OK: u32 = 0x8000_0001;
const MUX_S_PERMISSION_DENIED: u32 = 0x8000_0002;
const MUX_S_FAILURE: u32 = 0x8000_0003;
const MUX_S_ALIVE: u32 = 0x8000_0005;
const MUX_VERSION: u32 = 4;

/// How long a master has to answer; a live one answers in microseconds.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Asks the master behind `ctl` to end its connection and exit.
pub(super) async fn request_exit(ctl: &Path) -> io::Result<()> {
    // A master often exits before its answer is sent: the socket closing
    // right after its hello is a yes (as `ssh -O exit` takes it).
    let (kind, body) = match exchange(ctl, MUX_C_TERMINATE).await {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
        other => other?,
    };
    match kind {
        MUX_S_OK => Ok(()),
        MUX_S_PERMISSION_DENIED | MUX_S_FAILURE => Err(io::Error::other(format!(
            "the master refused to exit: {}",
            reason(&body)
        ))),
        other => Err(unexpected(other)),
    }
}

/// The pid of the master behind `ctl`, if one answers there (`ssh -O check`).
pub(super) async fn alive(ctl: &Path) -> io::Result<u32> {
    let (kind, body) = exchange(ctl, MUX_C_ALIVE_CHECK).await?;
    match (kind, body.get(4..8)) {
        (MUX_S_ALIVE, Some(pid)) => Ok(u32::from_be_bytes([pid[0], pid[1], pid[2], pid[3]])),
        (other, _) => Err(unexpected(other)),
    }
}

/// Hello both ways, then one request (`kind` with request id 1) and its
/// answer: the answer's type and the rest of its body.
/// Ends the master behind `ctl` that took a connection but did not answer
/// (a stopped process keeps its socket listening): the `ssh` of this user
/// started with `-S CTL` (the socket cannot say: it was made before the
/// master went to the background) gets SIGTERM and SIGCONT (a stopped
/// process acts on nothing before it is continued). True when one was
/// signalled.
pub(super) fn end_silent(ctl: &Path) -> bool {
    let Some(pid) = master_pid(ctl) else {
        return false;
    };
    // SAFETY: kill(2) on a pid just found to be that master.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
        libc::kill(pid, libc::SIGCONT);
    }
    true
}

/// The pid of this user's `ssh -S CTL ...`, from /proc.
fn master_pid(ctl: &Path) -> Option<i32> {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let want = ctl.as_os_str().as_bytes();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if entry.metadata().map_or(true, |m| m.uid() != uid) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_ssh = args
            .first()
            .is_some_and(|a| *a == b"ssh" || a.ends_with(b"/ssh"));
        if is_ssh && args.windows(2).any(|w| w[0] == b"-S" && w[1] == want) {
            return Some(pid);
        }
    }
    None
}

async fn exchange(ctl: &Path, kind: u32) -> io::Result<(u32, Vec<u8>)> {
    let talk = async {
        let mut sock = UnixStream::connect(ctl).await?;
        let mut hello = Vec::new();
        put(&mut hello, &[MUX_MSG_HELLO, MUX_VERSION]);
        put(&mut hello, &[kind, 1]);
        sock.write_all(&hello).await?;
        let (their, _) = read_packet(&mut sock).await?;
        if their != MUX_MSG_HELLO {
            return Err(unexpected(their));
        }
        read_packet(&mut sock).await
    };
    tokio::time::timeout(ANSWER_WITHIN, talk)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the master did not answer"))?
}

/// Appends one packet: its length, then `words`.
fn put(buf: &mut Vec<u8>, words: &[u32]) {
    buf.extend_from_slice(&(4 * words.len() as u32).to_be_bytes());
    for w in words {
        buf.extend_from_slice(&w.to_be_bytes());
    }
}

/// One packet: its type and the bytes after it.
async fn read_packet(sock: &mut UnixStream) -> io::Result<(u32, Vec<u8>)> {
    let len = sock.read_u32().await? as usize;
    if !(4..=256 * 1024).contains(&len) {
        return Err(io::Error::other(format!("a mux packet of {len} bytes")));
    }
    let kind = sock.read_u32().await?;
    let mut body = vec![0; len - 4];
    sock.read_exact(&mut body).await?;
    Ok((kind, body))
}

/// The reason string after the request id of a refusal.
fn reason(body: &[u8]) -> String {
    body.get(8..)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_default()
}

fn unexpected(kind: u32) -> io::Error {
    io::Error::other(format!("unexpected mux answer {kind:#010x}"))
}
