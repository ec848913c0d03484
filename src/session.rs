//! One connected host: a master ssh connection that everything else is
//! multiplexed on.
//!
//! pushrun starts the master `ssh -M -N` itself, as its own child, rather
//! than through `openssh::SessionBuilder`: the builder always puts
//! `StrictHostKeyChecking` and `BatchMode` on the command line (beating the
//! user's ssh_config) and has no generic `-o`. Owning the process also means
//! its CPU time is ours (it is not a daemon reparented to init), it dies with
//! us (`PR_SET_PDEATHSIG`), and it is in its own process group, so the
//! terminal's Ctrl-C reaches pushrun, which then stops remote commands in
//! order, not the connections underneath them. Commands then go over the
//! master with `openssh`'s native mux client (no ssh process per command).

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::{Child, Command};

use crate::auth::{self, Secret};
use crate::events::{Event, HostId, Stream};
use crate::inventory::Host;
use tokio::sync::mpsc;

/// Exit code `remote/pty.sh` uses when the session has no terminal.
pub const NO_PTY_EXIT: i32 = 254;

/// How ssh should treat host keys; `None` in [`SshOptions`] leaves it to ssh_config.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyChecking {
    /// Only known keys are accepted (`StrictHostKeyChecking=yes`).
    Strict,
    /// Unknown keys are added to known_hosts, changed keys refused.
    AcceptNew,
    /// No checking at all (known_hosts is not read or written).
    Off,
}

/// Which key exchange ssh should prefer.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Kex {
    /// Put curve25519-sha256 first: about a tenth of the CPU of OpenSSH 9's
    /// default post-quantum hybrid (sntrup761x25519), which dominates the
    /// initiator's cost per host. Ignored when ssh_config sets KexAlgorithms.
    Fast,
    /// ssh's own default order.
    Default,
}

/// The ssh settings that apply to every host of a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SshOptions {
    /// The user's ssh configuration file (`--ssh-config`), else ~/.ssh/config
    /// and /etc/ssh/ssh_config as ssh reads them.
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// Key exchange preference.
    pub kex: Kex,
    /// TCP connect and banner exchange limit (`ConnectTimeout`).
    #[serde(rename = "connect_timeout_ms", with = "crate::relay::wire::millis")]
    pub connect_timeout: Duration,
    /// Host key policy; `None` = whatever ssh_config says (never a prompt: BatchMode).
    pub host_key_checking: Option<HostKeyChecking>,
}

/// Why a host could not be connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Nothing listens there.
    Refused,
    /// No answer within the connect timeout.
    TimedOut,
    /// The server refused our credentials.
    Authentication,
    /// The host key is unknown (under strict checking).
    HostKey,
    /// The host key differs from the one in known_hosts.
    HostKeyChanged,
    /// The name does not resolve.
    Resolve,
    /// Anything else ssh reported.
    Other,
}

/// A failed connection, with ssh's own words.
#[derive(Debug, Error)]
#[error("{message}")]
pub struct ConnectError {
    /// The kind of failure.
    pub kind: ConnectFailure,
    /// One line for the user.
    pub message: String,
}

impl ConnectError {
    fn new(kind: ConnectFailure, message: impl Into<String>) -> Self {
        ConnectError {
            kind,
            message: message.into(),
        }
    }
}

/// A private directory for control sockets and ssh logs, removed on drop.
///
/// Kept short (`/tmp/pushrun-PID-N/`): Unix socket paths are limited to 108
/// bytes. The pid in the name lets a later run remove directories left by a
/// pushrun that was killed.
#[derive(Debug)]
pub struct ControlDir {
    path: PathBuf,
}

/// Writes the run's ssh config into `dir` and returns its path.
///
/// It includes the user's configuration first (for ssh the first value
/// wins, so everything the user set stands), then adds pushrun's defaults.
/// One file for all hosts; each master is started with `-F` on it.
pub fn write_ssh_config(dir: &ControlDir, opts: &SshOptions) -> io::Result<PathBuf> {
    let mut text = String::from("# written by pushrun for one run\n");
    match &opts.config_file {
        Some(file) => {
            let file = std::fs::canonicalize(file)?;
            text.push_str(&format!("Include \"{}\"\n", file.display()));
        }
        None => {
            if let Some(home) = std::env::var_os("HOME") {
                let user = Path::new(&home).join(".ssh/config");
                text.push_str(&format!("Include \"{}\"\n", user.display()));
            }
            text.push_str("Include /etc/ssh/ssh_config\n");
        }
    }
    let base = text.clone();
    if opts.kex == Kex::Fast {
        text.push_str("Host *\n  KexAlgorithms ^curve25519-sha256\n");
    }
    let path = dir.path().join("ssh_config");
    std::fs::write(&path, &text)?;
    // Older clients (before OpenSSH 8.7) do not know the `^` prefix: then
    // leave the order to ssh rather than fail every host.
    if opts.kex == Kex::Fast {
        let check = std::process::Command::new("ssh")
            .arg("-G")
            .arg("-F")
            .arg(&path)
            .arg("pushrun-config-check")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !check.is_ok_and(|s| s.success()) {
            std::fs::write(&path, &base)?;
        }
    }
    Ok(path)
}

impl ControlDir {
    /// Creates a new 0700 directory, first removing stale ones of dead pushruns.
    pub fn create() -> io::Result<ControlDir> {
        let base = control_base();
        sweep_stale(&base);
        let pid = std::process::id();
        for n in 0..1000u32 {
            let path = base.join(format!("pushrun-{pid}-{n}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(ControlDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("no free control directory name"))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory now (also done on drop).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl Drop for ControlDir {
    fn drop(&mut self) {
        self.remove();
    }
}

fn control_base() -> PathBuf {
    match std::env::var_os("TMPDIR") {
        Some(t) if !t.is_empty() && t.len() < 48 => PathBuf::from(t),
        _ => PathBuf::from("/tmp"),
    }
}

/// Removes `pushrun-PID-N` directories of ours whose process is gone.
fn sweep_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let uid = unsafe { libc::getuid() };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("pushrun-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if meta.is_dir() && meta.uid() == uid && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// One connected host.
#[derive(Debug)]
pub struct Session {
    master: Child,
    ctl: PathBuf,
    log: PathBuf,
    destination: String,
    config_file: PathBuf,
    mux: openssh::Session,
}

impl Session {
    /// Opens the master connection to `host`; `slot` names its socket in `dir`.
    pub async fn connect(
        dir: &ControlDir,
        config_file: &Path,
        slot: usize,
        host: &Host,
        opts: &SshOptions,
        password: Option<&Secret>,
    ) -> Result<Session, ConnectError> {
        let ctl = dir.path().join(slot.to_string());
        let log = dir.path().join(format!("{slot}.log"));
        let pass_file = dir.path().join(format!("{slot}.pass"));
        let destination = host.address().to_string();
        let mut cmd = Command::new("ssh");
        cmd.arg("-M")
            .arg("-N")
            .arg("-S")
            .arg(&ctl)
            .arg("-E")
            .arg(&log);
        cmd.args(host_args(host, config_file, opts));
        if let Some(password) = password {
            // ssh asks pushrun itself (askpass mode), which reads the 0600
            // file in our private directory: the password is never on a
            // command line nor in an environment. One try per ssh process.
            let exe = std::env::current_exe().map_err(|e| {
                ConnectError::new(
                    ConnectFailure::Other,
                    format!("cannot find pushrun itself: {e}"),
                )
            })?;
            auth::remove_askpass_file(&pass_file);
            auth::write_askpass_file(&pass_file, password).map_err(|e| {
                ConnectError::new(
                    ConnectFailure::Other,
                    format!("cannot write the password file: {e}"),
                )
            })?;
            cmd.env("SSH_ASKPASS", exe)
                .env("SSH_ASKPASS_REQUIRE", "force")
                .env(auth::ASKPASS_ENV, &pass_file)
                .args(["-o", "BatchMode=no", "-o", "NumberOfPasswordPrompts=1"]);
        }
        cmd.args(["-o", "BatchMode=yes", "-o", "ControlPersist=no"])
            .args([
                "-o",
                "ServerAliveInterval=10",
                "-o",
                "ServerAliveCountMax=3",
            ])
            .arg("--")
            .arg(&destination);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.process_group(0).kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let spawned = cmd.spawn();
        let result = match spawned {
            Ok(master) => {
                Self::finish_connect(master, ctl, log, destination, config_file, opts).await
            }
            Err(e) => Err(ConnectError::new(
                ConnectFailure::Other,
                format!("cannot start ssh: {e}"),
            )),
        };
        if password.is_some() {
            auth::remove_askpass_file(&pass_file);
        }
        match result {
            Err(e) if e.kind == ConnectFailure::HostKey => {
                Err(with_fingerprint(e, host, config_file, opts).await)
            }
            // ssh_config may say StrictHostKeyChecking=no: ssh then logs in
            // despite a changed key. pushrun refuses anyway.
            Ok(session) => {
                let log = std::fs::read_to_string(&session.log).unwrap_or_default();
                if log.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
                    session.close().await;
                    return Err(changed_key_error(&log));
                }
                Ok(session)
            }
            other => other,
        }
    }

    /// Waits for the master to log in (its control socket appears) or fail.
    async fn finish_connect(
        mut master: Child,
        ctl: PathBuf,
        log: PathBuf,
        destination: String,
        config_file: &Path,
        opts: &SshOptions,
    ) -> Result<Session, ConnectError> {
        let secs = opts.connect_timeout.as_secs().max(1);

        // The master creates its control socket only once authenticated.
        // ConnectTimeout bounds TCP connect and the banner; the margin bounds
        // the key exchange and authentication of a host that hangs later.
        let deadline = tokio::time::Instant::now() + opts.connect_timeout + Duration::from_secs(5);
        let mut poll = Duration::from_millis(2);
        loop {
            tokio::select! {
                status = master.wait() => {
                    let _ = status;
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let _ = std::fs::remove_file(&log);
                    return Err(classify_ssh_failure(&text));
                }
                _ = tokio::time::sleep(poll) => {
                    if ctl.exists() {
                        break;
                    }
                    poll = (poll * 2).min(Duration::from_millis(20));
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = master.kill().await;
                    let _ = std::fs::remove_file(&log);
                    return Err(ConnectError::new(
                        ConnectFailure::TimedOut,
                        format!("connection timed out (no login within {}s)", secs + 5),
                    ));
                }
            }
        }
        let mux = openssh::Session::resume_mux(
            ctl.clone().into_boxed_path(),
            Some(log.clone().into_boxed_path()),
        );
        Ok(Session {
            master,
            ctl,
            log,
            destination,
            config_file: config_file.to_path_buf(),
            mux,
        })
    }

    /// Starts one of pushrun's remote scripts as `sh -c SCRIPT NAME ARGS...`,
    /// with `vars` exported and all three streams piped.
    ///
    /// The wrappers (exec.sh, run.sh) keep the command alive while the
    /// child's stdin stays open: drop it to end the command's whole process
    /// group on the host.
    pub async fn spawn_script(
        &self,
        script: &str,
        name: &str,
        args: &[&str],
        vars: &[(String, String)],
    ) -> Result<openssh::Child<&openssh::Session>, openssh::Error> {
        self.spawn_line(remote_line(script, name, args, vars)).await
    }

    /// Starts a remote command line (see [`remote_line`]) with all three streams piped.
    pub async fn spawn_line(
        &self,
        line: String,
    ) -> Result<openssh::Child<&openssh::Session>, openssh::Error> {
        self.mux
            .raw_command(line)
            .stdin(openssh::Stdio::piped())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped())
            .spawn()
            .await
    }

    /// Runs a remote script to its end, feeding it `input`; returns its
    /// exit code (None if killed), stdout and stderr.
    pub async fn run_script(
        &self,
        script: &str,
        name: &str,
        args: &[&str],
        input: &[u8],
    ) -> Result<ScriptOutput, openssh::Error> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let started = tokio::time::Instant::now();
        let mut child = self.spawn_script(script, name, args, &[]).await?;
        let mut stdin = child.stdin().take();
        let mut stdout = child.stdout().take();
        let mut stderr = child.stderr().take();
        let write = async {
            if let Some(w) = stdin.as_mut() {
                // A script that stops reading early (an error) is reported by its output.
                let _ = w.write_all(input).await;
                let _ = w.shutdown().await;
            }
            drop(stdin.take());
        };
        let read_out = async {
            let mut buf = Vec::new();
            if let Some(r) = stdout.as_mut() {
                let _ = r.read_to_end(&mut buf).await;
            }
            (buf, started.elapsed())
        };
        let read_err = async {
            let mut buf = Vec::new();
            if let Some(r) = stderr.as_mut() {
                let _ = r.read_to_end(&mut buf).await;
            }
            buf
        };
        let ((), (stdout, stdout_done), stderr) = tokio::join!(write, read_out, read_err);
        let code = exit_code(child.wait().await)?;
        Ok(ScriptOutput {
            code,
            stdout,
            stdout_done,
            stderr,
        })
    }

    /// Starts a remote command line (see [`remote_line`]) with a PTY, through
    /// the master (`ssh -S ctl -tt`).
    ///
    /// stdout and stderr arrive merged on the child's stdout, as on any
    /// terminal. Run under `remote/pty.sh`, a command does not run where the
    /// server refuses the PTY: the child exits [`NO_PTY_EXIT`].
    pub fn spawn_pty_line(&self, remote: String) -> io::Result<Child> {
        self.spawn_through_master(&["-tt"], remote)
    }

    /// Starts one of pushrun's remote scripts through the master with a
    /// plain `ssh -S` client, for what the mux client cannot ask for (agent
    /// forwarding: `opts` = `["-o", "ForwardAgent=yes"]`).
    pub fn spawn_client(
        &self,
        opts: &[&str],
        script: &str,
        name: &str,
        args: &[&str],
    ) -> io::Result<Child> {
        let mut all = vec!["-T"];
        all.extend_from_slice(opts);
        self.spawn_through_master(&all, remote_line(script, name, args, &[]))
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

    /// Forwards the Unix socket `remote` on the host to a fresh socket of
    /// ours, over this connection (the payload's `$PUSHRUN_TUNNEL`). Fails
    /// with a reason where the server refuses forwarding.
    pub async fn open_tunnel(&self, remote: &str) -> Result<Tunnel, String> {
        if remote.len() >= 100 {
            return Err(format!("the socket path would be too long ({remote})"));
        }
        let local = self.ctl.with_extension("tun");
        let _ = std::fs::remove_file(&local);
        let listener = tokio::net::UnixListener::bind(&local)
            .map_err(|e| format!("cannot listen on {}: {e}", local.display()))?;
        let forwarded = self
            .mux
            .request_port_forward(
                openssh::ForwardType::Remote,
                Path::new(remote),
                local.as_path(),
            )
            .await;
        if let Err(e) = forwarded {
            let _ = std::fs::remove_file(&local);
            return Err(format!(
                "the server refused to forward a socket (AllowStreamLocalForwarding no?): {e}"
            ));
        }
        Ok(Tunnel {
            listener,
            local,
            remote: remote.to_string(),
        })
    }

    /// Closes the connection and waits for the master to end.
    pub async fn close(mut self) {
        drop(self.mux);
        if let Some(pid) = self.master.id() {
            // SAFETY: plain kill(2) on our own child, which has not been reaped.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(3), self.master.wait())
            .await
            .is_err()
        {
            let _ = self.master.kill().await;
        }
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.ctl);
    }
}

/// The ssh arguments for `host` (everything but the mode and the
/// destination): its own options first, since for ssh the first value
/// given wins, then the run's.
fn host_args(host: &Host, config_file: &Path, opts: &SshOptions) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut o = |k: &str, v: String| {
        args.push(k.into());
        args.push(v.into());
    };
    for opt in &host.settings.ssh_options {
        o("-o", opt.clone());
    }
    if let Some(user) = &host.settings.user {
        o("-l", user.clone());
    }
    if let Some(port) = host.settings.port {
        o("-p", port.to_string());
    }
    if let Some(key) = &host.settings.identity_file {
        o("-i", key.display().to_string());
        o("-o", "IdentitiesOnly=yes".into());
    }
    if let Some(jump) = &host.settings.jump {
        o("-o", format!("ProxyJump={jump}"));
    }
    o("-F", config_file.display().to_string());
    match opts.host_key_checking {
        Some(HostKeyChecking::Strict) => o("-o", "StrictHostKeyChecking=yes".into()),
        Some(HostKeyChecking::AcceptNew) => o("-o", "StrictHostKeyChecking=accept-new".into()),
        Some(HostKeyChecking::Off) => {
            o("-o", "StrictHostKeyChecking=no".into());
            o("-o", "UserKnownHostsFile=/dev/null".into());
            o("-o", "GlobalKnownHostsFile=/dev/null".into());
        }
        None => {}
    }
    let secs = opts.connect_timeout.as_secs().max(1);
    o("-o", format!("ConnectTimeout={secs}"));
    args
}

/// The remote command line: exports, then `exec sh -c SCRIPT NAME ARGS...`.
///
/// `exec` makes the script the session's process group leader (see exec.sh).
pub fn remote_line(script: &str, name: &str, args: &[&str], vars: &[(String, String)]) -> String {
    let mut s = String::new();
    for (k, v) in vars {
        s.push_str(&format!("export {k}={}; ", sh_quote(v)));
    }
    s.push_str(&format!("exec sh -c {} {name}", sh_quote(script)));
    for a in args {
        s.push(' ');
        s.push_str(&sh_quote(a));
    }
    s
}

/// A socket on the host forwarded to one of ours; see [`Session::open_tunnel`].
#[derive(Debug)]
pub struct Tunnel {
    listener: tokio::net::UnixListener,
    local: PathBuf,
    remote: String,
}

/// A tunnel whose records are being read.
#[derive(Debug)]
pub struct ServedTunnel {
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
    local: PathBuf,
    remote: String,
}

/// The longest record taken; a longer line is cut there.
const MAX_RECORD: usize = 1 << 20;

impl Tunnel {
    /// Reads every line written to the tunnel, by any number of
    /// connections, as [`Event::Record`]s of `host`.
    pub fn serve(self, host: HostId, events: mpsc::Sender<Event>) -> ServedTunnel {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let listener = self.listener;
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
        ServedTunnel {
            task,
            stop,
            local: self.local,
            remote: self.remote,
        }
    }
}

impl ServedTunnel {
    /// After the payload's end: takes what is still arriving, then closes the forwarding.
    pub async fn finish(self, session: &Session) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        let _ = session
            .mux
            .close_port_forward(
                openssh::ForwardType::Remote,
                Path::new(&self.remote),
                self.local.as_path(),
            )
            .await;
        let _ = std::fs::remove_file(&self.local);
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

/// What a remote script left behind.
#[derive(Debug)]
pub struct ScriptOutput {
    /// Its exit code; None when it was killed.
    pub code: Option<i32>,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// How long after it was started its stdout ended.
    pub stdout_done: Duration,
    /// Everything it wrote to stderr.
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

/// Quotes `s` for a POSIX shell: one single-quoted word.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Turns the master's log into one line for the user.
fn classify_ssh_failure(log: &str) -> ConnectError {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
        .collect();
    let all = lines.join(" ");
    let last = lines
        .last()
        .copied()
        .unwrap_or("ssh exited without a message");
    let last = last.strip_prefix("ssh: ").unwrap_or(last);
    use ConnectFailure::*;
    let (kind, message) = if all.contains("Connection refused") {
        (Refused, "connection refused".to_string())
    } else if all.contains("timed out") {
        (TimedOut, "connection timed out".to_string())
    } else if all.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        return changed_key_error(log);
    } else if all.contains("Host key verification failed") {
        (
            HostKey,
            "unknown host key, and host key checking is strict: if it is the host's, \
             run with --host-key-checking accept-new"
                .to_string(),
        )
    } else if all.contains("Permission denied") || all.contains("Too many authentication failures")
    {
        (Authentication, format!("authentication failed: {last}"))
    } else if all.contains("Could not resolve hostname") {
        (Resolve, format!("cannot resolve host name: {last}"))
    } else {
        (Other, last.to_string())
    };
    ConnectError::new(kind, message)
}

/// A changed host key, with ssh's warning: the key it got and where the
/// one it expected is.
fn changed_key_error(log: &str) -> ConnectError {
    let lines: Vec<&str> = log.lines().map(str::trim).collect();
    let got = lines
        .iter()
        .position(|l| l.starts_with("The fingerprint for the"))
        .and_then(|i| {
            let kind = lines[i]
                .strip_prefix("The fingerprint for the ")
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or("");
            lines.get(i + 1).map(|f| format!("{kind} {f}"))
        });
    let offending = lines
        .iter()
        .find_map(|l| l.strip_prefix("Offending "))
        .map(|l| l.to_string());
    let mut message = String::from(
        "WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED (someone may be intercepting the \
         connection, or the host was reinstalled): refused",
    );
    if let Some(got) = got {
        message.push_str(&format!("; key sent: {got}"));
    }
    if let Some(offending) = offending {
        message.push_str(&format!("; expected: {offending}"));
    }
    message.push_str("; if the change is expected, remove the old key (ssh-keygen -R)");
    ConnectError::new(ConnectFailure::HostKeyChanged, message)
}

/// An unknown host key under strict checking, with the key's fingerprint:
/// ssh only shows it when debugging, so connect once more that way (the
/// same options, so the same route) and read it from there. Without it,
/// `e` as it was.
async fn with_fingerprint(
    e: ConnectError,
    host: &Host,
    config_file: &Path,
    opts: &SshOptions,
) -> ConnectError {
    let mut cmd = Command::new("ssh");
    cmd.args(["-o", "LogLevel=DEBUG1", "-o", "BatchMode=yes"])
        .args(host_args(host, config_file, opts))
        .arg("-N")
        .arg("--")
        .arg(host.address());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let limit = opts.connect_timeout + Duration::from_secs(5);
    let text = match tokio::time::timeout(limit, cmd.output()).await {
        Ok(Ok(out)) => String::from_utf8_lossy(&out.stderr).into_owned(),
        _ => String::new(),
    };
    let key = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("debug1: Server host key: "))
        .map(|k| k.trim().to_string());
    match key {
        Some(key) => ConnectError::new(
            ConnectFailure::HostKey,
            format!(
                "unknown host key {key}, and host key checking is strict: if that is the \
                 host's key, run with --host-key-checking accept-new (or add it to known_hosts)"
            ),
        ),
        None => e,
    }
}

/// Cuts a byte stream into [`Event::Output`] lines.
///
/// Lines longer than 64 KiB are passed on in pieces (`complete` false), as
/// is a last line without a newline. With `strip_cr`, a `\r` before the
/// newline is dropped (a PTY sends `\r\n`).
pub struct LineSplitter<'a> {
    host: HostId,
    stream: Stream,
    strip_cr: bool,
    events: &'a mpsc::Sender<Event>,
    pending: Vec<u8>,
}

impl<'a> LineSplitter<'a> {
    const MAX_PIECE: usize = 64 * 1024;

    /// A splitter sending `host`'s `stream` lines on `events`.
    pub fn new(
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
    pub async fn push(&mut self, mut chunk: &[u8]) {
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
    pub async fn finish(mut self) {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.emit(rest, false).await;
        }
    }
}

/// Reads `reader` to its end, sending one [`Event::Output`] per line (see
/// [`LineSplitter`]).
pub async fn read_lines<R>(
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

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn classifies_common_ssh_failures() {
        let c = |s: &str| classify_ssh_failure(s).kind;
        assert_eq!(
            c("ssh: connect to host 127.0.0.9 port 22: Connection refused\n"),
            ConnectFailure::Refused
        );
        assert_eq!(
            c(
                "Connection timed out during banner exchange\nConnection to 1.2.3.4 port 22 timed out\n"
            ),
            ConnectFailure::TimedOut
        );
        assert_eq!(
            c("fleet@127.0.0.1: Permission denied (publickey).\n"),
            ConnectFailure::Authentication
        );
        assert_eq!(
            c(
                "No ED25519 host key is known for x and you have requested strict checking.\nHost key verification failed.\n"
            ),
            ConnectFailure::HostKey
        );
        let changed = classify_ssh_failure(
            "@@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
             The fingerprint for the ED25519 key sent by the remote host is\n\
             SHA256:abc.\nOffending ED25519 key in /k/known_hosts:3\n\
             Host key verification failed.\n",
        );
        assert_eq!(changed.kind, ConnectFailure::HostKeyChanged);
        assert!(
            changed.message.contains("key sent: ED25519 SHA256:abc.")
                && changed
                    .message
                    .contains("expected: ED25519 key in /k/known_hosts:3"),
            "{}",
            changed.message
        );
        assert_eq!(
            c(
                "Warning: Permanently added 'x' (ED25519) to the list of known hosts.\nsomething odd\n"
            ),
            ConnectFailure::Other
        );
        assert_eq!(
            classify_ssh_failure("Warning: Permanently added 'x'.\nsomething odd\n").message,
            "something odd"
        );
    }

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
