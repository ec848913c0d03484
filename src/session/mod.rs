//! One connected host: a master ssh connection that everything else is
//! multiplexed on.
//!
//! pushrun starts the master `ssh -M -N` itself, as its own child, rather
//! than through `openssh::SessionBuilder`: the builder always puts
//! `StrictHostKeyChecking` and `BatchMode` on the command line (beating the
//! user's ssh_config) and has no generic `-o`. Owning the process also means
//! its CPU time is ours (it is not a daemon reparented to init), it dies with
//! us (`PR_SET_PDEATHSIG`) unless it is to outlive the run (`--persist`),
//! and it is in its own process group, so the
//! terminal's Ctrl-C reaches pushrun, which then stops remote commands in
//! order, not the connections underneath them. Commands then go over the
//! master with `openssh`'s native mux client (no ssh process per command).

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::auth::{self, Secret};
use crate::inventory::Host;

mod budget;
mod control;
mod exec;
mod failure;
mod linger;
mod mux;
pub mod persist;
mod spawn;

pub use exec::{ANSWER_MARGIN, Fed, Feeder, ScriptOutput, exit_code, is_refusal};
pub use linger::{Continued, Lingering};

pub use control::{ControlDir, write_ssh_config};
pub use failure::{ConnectError, ConnectFailure};
use failure::{changed_key_error, classify_ssh_failure, with_fingerprint};
pub use persist::PersistDir;

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
    /// Put the cheap exchanges first: mlkem768x25519-sha256 where the local
    /// ssh offers it (post-quantum and cheap), then curve25519-sha256 (about
    /// a tenth of the CPU of OpenSSH 9's sntrup761x25519 default, but not
    /// post-quantum). Ignored when ssh_config sets KexAlgorithms.
    Fast,
    /// ssh's own default order, as the user's ssh would pick.
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
    /// How long masters stay up, idle, after the run (`--persist`); zero
    /// ends them with the run. Never sent to relays: their masters end
    /// with the run, so the hosts keep no trace of it.
    #[serde(skip)]
    pub persist: Duration,
}

/// One connected host.
#[derive(Debug)]
pub struct Session {
    master: Master,
    ctl: PathBuf,
    log: PathBuf,
    destination: String,
    config_file: PathBuf,
    /// The master outlives the run: closing leaves it up.
    persisted: bool,
    mux: openssh::Session,
    /// This host's share of the open files, given back when it closes.
    _share: budget::Share,
    /// What the login files printed ahead of pushrun's frames, on any channel.
    login_noise: std::sync::Arc<crate::remote::LoginNoise>,
    /// The server refused a session while another was open (`MaxSessions
    /// 1`): a check does not wait beside the run on this connection.
    one_session: std::sync::atomic::AtomicBool,
}

/// Where a new master's socket, log and password file go, and whether it
/// is to outlive the run (for how long idle).
#[derive(Debug)]
struct MasterSpec {
    ctl: PathBuf,
    log: PathBuf,
    pass_file: PathBuf,
    persist: Option<Duration>,
}

impl MasterSpec {
    /// A master of this run only, in its control dir (`slot` names it).
    fn private(dir: &ControlDir, slot: usize) -> MasterSpec {
        MasterSpec {
            ctl: dir.path().join(slot.to_string()),
            log: dir.path().join(format!("{slot}.log")),
            pass_file: dir.path().join(format!("{slot}.pass")),
            persist: None,
        }
    }
}

/// The persisted socket for `host`, when masters are to outlive the run
/// and the per-user directory is usable.
fn persisted_socket(host: &Host, config_file: &Path, opts: &SshOptions) -> Option<PathBuf> {
    if opts.persist.is_zero() {
        return None;
    }
    let dir = PersistDir::open().ok()?;
    let config = std::fs::read_to_string(config_file).ok()?;
    // The config file's own path is the run's, and those it includes may
    // be anywhere: what counts is their text.
    let config = control::identity(&config);
    let mut args = host_args(host, Path::new("-"), opts);
    args.push(host.address().into());
    Some(dir.socket_for(&args, &config))
}

impl Session {
    /// Opens the master connection to `host`; `slot` names its socket in `dir`.
    ///
    /// With `opts.persist`, a live master that a run with the same settings
    /// left is used instead, and a new master outlives the run (see
    /// [`persist`]).
    pub async fn connect(
        dir: &ControlDir,
        config_file: &Path,
        slot: usize,
        host: &Host,
        opts: &SshOptions,
        password: Option<&Secret>,
    ) -> Result<Session, ConnectError> {
        let share = budget::take()
            .await
            .map_err(|why| ConnectError::new(ConnectFailure::Other, why))?;
        let Some(ctl) = persisted_socket(host, config_file, opts) else {
            let master = MasterSpec::private(dir, slot);
            return Self::open(master, config_file, host, opts, password, share).await;
        };
        let limit = opts.connect_timeout + Duration::from_secs(5);
        let lock = persist::ConnectLock::take(&ctl, limit)
            .await
            .map_err(|e| ConnectError::new(ConnectFailure::Other, e.to_string()))?;
        let log = ctl.with_extension("log");
        match persist::look(&ctl).await {
            persist::Found::Live => {
                let mux = openssh::Session::resume_mux(
                    ctl.clone().into_boxed_path(),
                    Some(log.clone().into_boxed_path()),
                );
                return Ok(Session {
                    master: Master(None),
                    ctl,
                    log,
                    destination: host.address().to_string(),
                    config_file: config_file.to_path_buf(),
                    persisted: true,
                    mux,
                    _share: share,
                    login_noise: std::sync::Arc::default(),
                    one_session: std::sync::atomic::AtomicBool::new(false),
                });
            }
            persist::Found::Silent => {
                // Another master holds the socket and does not answer: this
                // run neither waits for it nor takes its place.
                drop(lock);
                let master = MasterSpec::private(dir, slot);
                return Self::open(master, config_file, host, opts, password, share).await;
            }
            persist::Found::Cleared => {}
        }
        let master = MasterSpec {
            log,
            pass_file: dir.path().join(format!("{slot}.pass")),
            persist: Some(opts.persist),
            ctl: ctl.clone(),
        };
        let session = Self::open(master, config_file, host, opts, password, share).await?;
        if persist::describe(&ctl, &host.name, host.address()).is_err() {
            // Unlisted, it could not be found by `disconnect`: end it now.
            return Ok(session.unpersisted());
        }
        Ok(session)
    }

    /// Starts a master as `spec` says and waits for it to log in.
    async fn open(
        spec: MasterSpec,
        config_file: &Path,
        host: &Host,
        opts: &SshOptions,
        password: Option<&Secret>,
        share: budget::Share,
    ) -> Result<Session, ConnectError> {
        let mut cmd = Command::new("ssh");
        cmd.arg("-M")
            .arg("-N")
            .arg("-S")
            .arg(&spec.ctl)
            .arg("-E")
            .arg(&spec.log);
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
            auth::remove_askpass_file(&spec.pass_file);
            auth::write_askpass_file(&spec.pass_file, password).map_err(|e| {
                ConnectError::new(
                    ConnectFailure::Other,
                    format!("cannot write the password file: {e}"),
                )
            })?;
            cmd.env("SSH_ASKPASS", exe)
                .env("SSH_ASKPASS_REQUIRE", "force")
                .env(auth::ASKPASS_ENV, &spec.pass_file)
                .args(["-o", "BatchMode=no", "-o", "NumberOfPasswordPrompts=1"]);
        }
        match spec.persist {
            // ssh goes to the background once logged in (-f), and ends by
            // itself after being idle that long.
            Some(idle) => cmd
                .arg("-f")
                .arg("-o")
                .arg(format!("ControlPersist={}", idle.as_secs().max(1))),
            None => cmd.args(["-o", "ControlPersist=no"]),
        };
        cmd.args(["-o", "BatchMode=yes"])
            .args(["-o", "ServerAliveInterval=10"])
            .args(["-o", "ServerAliveCountMax=3"])
            .arg("--")
            .arg(host.address());
        // ssh says some things only on stderr, before -E takes over (a user
        // or host name it refuses): stderr appends to the same log, so the
        // reason is there for `classify_ssh_failure` either way
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&spec.log)
            .map_or_else(|_| Stdio::null(), Stdio::from);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        cmd.process_group(0);
        // A master that is to outlive the run goes to the background by
        // itself (-f) and ends when idle, so it needs no tie to us: without
        // a pre_exec hook std starts it with posix_spawn (vfork: pushrun's
        // pages are not copied for each of a thousand masters). One that
        // lives only as long as the run dies with us.
        if spec.persist.is_none() {
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
        }
        let pass_file = spec.pass_file.clone();
        // off the runtime's thread (see spawn.rs)
        let spawned = spawn::spawn(cmd).await;
        let result = match spawned {
            Ok(master) => {
                let started = Master(Some(master));
                Self::finish_connect(started, spec, host, config_file, opts, share).await
            }
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => Err(ConnectError::new(
                ConnectFailure::Other,
                format!(
                    "cannot start ssh: too many open files (ulimit -n is {}): lower --forks or raise the limit",
                    control::open_files_limit()
                ),
            )),
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
                    session.unpersisted().close().await;
                    return Err(changed_key_error(&log));
                }
                Ok(session)
            }
            other => other,
        }
    }

    /// Waits for the master to log in (its control socket appears) or fail.
    async fn finish_connect(
        mut master: Master,
        spec: MasterSpec,
        host: &Host,
        config_file: &Path,
        opts: &SshOptions,
        share: budget::Share,
    ) -> Result<Session, ConnectError> {
        let MasterSpec { ctl, log, .. } = spec;
        let secs = opts.connect_timeout.as_secs().max(1);

        // The master creates its control socket only once authenticated.
        // ConnectTimeout bounds TCP connect and the banner; the margin bounds
        // the key exchange and authentication of a host that hangs later.
        let deadline = tokio::time::Instant::now() + opts.connect_timeout + Duration::from_secs(5);
        let mut poll = Duration::from_millis(2);
        loop {
            tokio::select! {
                status = master.wait() => {
                    // A persisted master's first process exits 0 once the
                    // master, in the background, has logged in.
                    if spec.persist.is_some() && status.is_some_and(|s| s.success()) && ctl.exists() {
                        break;
                    }
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let _ = std::fs::remove_file(&log);
                    return Err(classify_ssh_failure(&text));
                }
                _ = tokio::time::sleep(poll) => {
                    if ctl.exists() && spec.persist.is_none() {
                        break;
                    }
                    poll = (poll * 2).min(Duration::from_millis(20));
                }
                _ = tokio::time::sleep_until(deadline) => {
                    master.kill().await;
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
            destination: host.address().to_string(),
            config_file: config_file.to_path_buf(),
            persisted: spec.persist.is_some(),
            mux,
            _share: share,
            login_noise: std::sync::Arc::default(),
            one_session: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// This session, to be ended on close even when it was persisted.
    fn unpersisted(mut self) -> Session {
        self.persisted = false;
        self
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

    /// Why the connection is gone, if it is: the master no longer answers
    /// (the host or its sshd went away mid-run), in ssh's own words from its
    /// log. `None` while the connection stands. A command the mux reports
    /// ended without a status may have died with its connection or by a
    /// signal; this tells the two apart. The master may still be closing
    /// when the command's end arrives, so it is asked a few times.
    pub async fn lost(&self) -> Option<String> {
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if self.mux.check().await.is_err() {
                // ssh writes its last word as it exits, maybe just after
                // the control socket stopped answering: wait for it a little
                let mut log = String::new();
                for _ in 0..50 {
                    log = std::fs::read_to_string(&self.log).unwrap_or_default();
                    if failure::lost_reason(&log).is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                return Some(failure::lost_reason(&log).unwrap_or_else(|| {
                    "the connection ended without a word from ssh".to_string()
                }));
            }
        }
        None
    }

    /// Whether the master outlives the run.
    pub fn is_persisted(&self) -> bool {
        self.persisted
    }

    /// Closes the connection: a persisted master stays up (ssh ends it once
    /// idle for the persist time); any other is asked to exit through its control
    /// socket (as `ssh -O exit` does) and lets it end in the background, so
    /// closing adds nothing to the host's time. The returned [`Closing`]
    /// tells how the master ended, for whoever wants to wait.
    pub async fn close(mut self) -> Closing {
        drop(self.mux);
        if self.persisted {
            // Its first process has exited already; the master is ssh's.
            self.master.0.take();
            return Closing {
                pid: None,
                ended: None,
            };
        }
        let asked = mux::request_exit(&self.ctl).await;
        let _ = std::fs::remove_file(&self.ctl);
        let log = std::mem::take(&mut self.log);
        let Some(mut master) = self.master.0.take() else {
            let _ = std::fs::remove_file(&log);
            return Closing {
                pid: None,
                ended: None,
            };
        };
        let pid = master.id();
        let ended = tokio::spawn(async move {
            let status = reap(&mut master, asked.is_ok()).await;
            let _ = std::fs::remove_file(&log);
            status
        });
        Closing {
            pid,
            ended: Some(ended),
        }
    }
}

/// Waits for a master to end: one asked to exit gets 3 s before SIGTERM,
/// then every master 3 s more before SIGKILL.
async fn reap(master: &mut Child, asked: bool) -> Ended {
    let grace = Duration::from_secs(3);
    if asked && let Ok(status) = tokio::time::timeout(grace, master.wait()).await {
        return Ended {
            status: status.ok(),
            signalled: false,
        };
    }
    if let Some(pid) = master.id() {
        // SAFETY: plain kill(2) on our own child, which has not been reaped.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let status = match tokio::time::timeout(grace, master.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = master.kill().await;
            master.wait().await.ok()
        }
    };
    Ended {
        status,
        signalled: true,
    }
}

/// How a master ended.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    /// Its exit status, if pushrun reaped it.
    pub status: Option<std::process::ExitStatus>,
    /// Whether it took a signal from pushrun (it did not act on the exit
    /// request in time, or none could be made).
    pub signalled: bool,
}

/// The master ssh process, killed if its [`Session`] goes without being
/// closed (a cancelled connect, a dropped task).
#[derive(Debug)]
struct Master(Option<Child>);

impl Master {
    /// Waits for the process to end (forever, once it has been reaped).
    async fn wait(&mut self) -> Option<std::process::ExitStatus> {
        match self.0.as_mut() {
            Some(child) => child.wait().await.ok(),
            None => std::future::pending().await,
        }
    }

    /// Kills the process and reaps it.
    async fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// A master on its way out; see [`Session::close`].
#[derive(Debug)]
pub struct Closing {
    /// The master's process id, when pushrun started it and it was running.
    pub pid: Option<u32>,
    ended: Option<tokio::task::JoinHandle<Ended>>,
}

impl Closing {
    /// Waits for the master to end; how it did, when pushrun started it.
    pub async fn ended(self) -> Option<Ended> {
        self.ended?.await.ok()
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
