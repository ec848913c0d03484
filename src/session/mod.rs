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
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::auth::{self, Secret};
use crate::inventory::Host;
use crate::remote;

mod control;
mod failure;

pub use control::{ControlDir, write_ssh_config};
pub use failure::{ConnectError, ConnectFailure};
use failure::{changed_key_error, classify_ssh_failure, with_fingerprint};

/// Exit code `remote/pty.sh` uses when the session has no terminal.
pub const NO_PTY_EXIT: i32 = 254;

/// How ssh should treat host keys; `None` in [`SshOptions`] leaves it to ssh_config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    #[serde(rename = "connect_timeout_ms", with = "crate::encoding::millis")]
    pub connect_timeout: Duration,
    /// Host key policy; `None` = whatever ssh_config says (never a prompt: BatchMode).
    pub host_key_checking: Option<HostKeyChecking>,
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

    /// Starts one of pushrun's remote scripts as `NAME ARGS...` with `vars`
    /// exported and all three streams piped: the fixed bootstrap line (see
    /// `remote::start`), the script written to stdin first. What the script
    /// reads from stdin is written after it.
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
        let start = remote::start(script, name, args, vars);
        let mut child = self.spawn_line(start.line()).await?;
        if let Some(w) = child.stdin().as_mut() {
            use tokio::io::AsyncWriteExt;
            // a script that cannot be sent shows in its output and exit code
            let _ = w.write_all(&start.preamble).await;
        }
        Ok(child)
    }

    /// Starts a remote command line (see `remote::start`) with all three streams piped.
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
    /// exit code (None if killed), stdout and stderr, without what the
    /// login files printed ahead of the script (`remote::AfterFrame`).
    pub async fn run_script(
        &self,
        script: &str,
        name: &str,
        args: &[&str],
        input: &[u8],
    ) -> Result<ScriptOutput, openssh::Error> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let started = tokio::time::Instant::now();
        // the input waits until the script has been read (its frame marker
        // on stdout), so the bootstrap reads the script in one go
        let start = remote::start_gated(script, name, args, &[]);
        let mut child = self.spawn_line(start.line()).await?;
        let mut stdin = child.stdin().take();
        let mut stdout = child.stdout().take().map(remote::AfterFrame::new);
        let mut stderr = child.stderr().take().map(remote::AfterFrame::new);
        let framed = stdout.as_mut().map(remote::AfterFrame::framed);
        let write = async {
            if let Some(w) = stdin.as_mut() {
                // A script that stops reading early (an error) is reported by its output.
                let _ = w.write_all(&start.preamble).await;
                let _ = w.flush().await;
                if let Some(mut framed) = framed {
                    let _ = framed.wait_for(|done| *done).await;
                }
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

    /// Starts a remote command line (see `remote::remote_line`) with a PTY, through
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
    /// forwarding: `opts` = `["-o", "ForwardAgent=yes"]`). The script is
    /// written to its stdin first, as in [`Session::spawn_script`]; its
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
            ends: TunnelEnds {
                local,
                remote: remote.to_string(),
            },
        })
    }

    /// Ends the forwarding of a tunnel (see [`Session::open_tunnel`]) and
    /// removes our socket.
    pub async fn close_tunnel(&self, ends: TunnelEnds) {
        let _ = self
            .mux
            .close_port_forward(
                openssh::ForwardType::Remote,
                Path::new(&ends.remote),
                ends.local.as_path(),
            )
            .await;
        let _ = std::fs::remove_file(&ends.local);
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

/// A socket on the host forwarded to one of ours; see [`Session::open_tunnel`].
#[derive(Debug)]
pub struct Tunnel {
    listener: tokio::net::UnixListener,
    ends: TunnelEnds,
}

/// The two ends of a forwarded socket, to close the forwarding with
/// [`Session::close_tunnel`].
#[derive(Debug)]
pub struct TunnelEnds {
    local: PathBuf,
    remote: String,
}

impl Tunnel {
    /// The listener that the host's connections arrive on, and the ends to
    /// close once they are done.
    pub fn split(self) -> (tokio::net::UnixListener, TunnelEnds) {
        (self.listener, self.ends)
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
