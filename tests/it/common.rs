//! Test hosts for the integration tests: real `sshd` processes on loopback addresses,
//! started by `scripts/loopback-hosts` (the one implementation, shared with the demo),
//! plus helpers for hosts that refuse connections or never speak.
//!
//! Every test module uses a subset of this; what no module uses is deleted, not kept.

use std::hash::{BuildHasher, Hasher};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The port every loopback host listens on (the script's default). The fleet's
/// `ssh_config` maps every `127.*` address to it, so `unused_addr()` and
/// `BlackHole::addr()` can go into an inventory as plain addresses.
pub(crate) const HOST_PORT: u16 = 2022;

/// `scripts/loopback-hosts` of this repository.
pub(crate) fn loopback_hosts_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/loopback-hosts")
}

/// What is special about one test host; `HostOpts::default()` is a plain host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HostOpts {
    /// sshd refuses PTYs (`PermitTTY no`).
    pub(crate) pty_denied: bool,
    /// `AllowTcpForwarding no`, `AllowStreamLocalForwarding no`.
    pub(crate) no_forwarding: bool,
    /// `MaxSessions 1`: one session channel at a time on a connection.
    pub(crate) one_session: bool,
    /// The host's /tmp is a 2 MiB tmpfs (only when root; ignored otherwise).
    pub(crate) small_tmp: bool,
    /// sshd refuses public keys and takes passwords (`PubkeyAuthentication no`,
    /// `PasswordAuthentication yes`): only the test user can log in, with
    /// `TestHosts::test_password()` (only when root; ignored otherwise).
    pub(crate) password_only: bool,
    /// What sudo lets the test user do on this host (only when root and sudo is
    /// installed: see `TestHosts::can_test_users()`; ignored otherwise).
    pub(crate) sudo: Sudo,
    /// sshd logs at `LogLevel DEBUG1` into `TestHosts::log(i)` (e.g. a jump host logs
    /// `server_request_direct_tcpip: originator 127.0.0.1 port 65535, target ADDR port
    /// 2022` for each connection it forwards). Works as any user.
    pub(crate) debug_log: bool,
    /// The test user's login shell on this host (a name on PATH: "dash", "csh",
    /// "fish"...; only when root; ignored otherwise).
    pub(crate) login_shell: Option<&'static str>,
    /// The test user's login files print a banner to stdout and stderr and call stty
    /// (only when root).
    pub(crate) chatty_login: bool,
    /// A dropbear server instead of sshd; log in as the test user (only when root).
    pub(crate) dropbear: bool,
    /// The host's /tmp is mounted noexec; its /var/tmp is its own (only when root).
    pub(crate) noexec_tmp: bool,
    /// The host's /tmp is read-only; its /var/tmp is its own (only when root).
    pub(crate) readonly_tmp: bool,
    /// The test user's PATH lacks tar and gzip (sshd's `SetEnv PATH=`, a dir of links
    /// to every other program; only when root, not with `dropbear`).
    pub(crate) no_tar: bool,
}

/// The test user's sudo rights on one host. Every host has its own `/etc/sudoers` with
/// `root ALL=(ALL:ALL) ALL` and, for the test user, what this says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Sudo {
    /// Not in the sudoers file: `sudo -S` says "pushrun-test is not in the sudoers
    /// file." (after taking the password; `sudo -n` says "sudo: a password is required").
    #[default]
    None,
    /// `NOPASSWD: ALL`: `sudo -n` works.
    NoPasswd,
    /// `ALL`: sudo wants the test user's password (`sudo -n`: "sudo: a password is
    /// required"; `sudo -S` takes it from stdin).
    Password,
    /// `ALL` and `Defaults:pushrun-test requiretty`: without a tty sudo says "sudo:
    /// sorry, you must have a tty to run sudo"; with one (`ssh -tt`) it prompts for the
    /// password.
    RequireTty,
}

/// A fleet of real sshd hosts on loopback, one per entry, in a fresh temp directory.
/// Dropping it stops every process of the fleet and removes the directory.
pub(crate) struct TestHosts {
    dir: Option<tempfile::TempDir>,
    addrs: Vec<String>,
}

impl TestHosts {
    /// `n` plain hosts.
    pub(crate) fn start(n: usize) -> TestHosts {
        TestHosts::start_with(&vec![HostOpts::default(); n])
    }

    /// One host per entry of `opts`, host i configured by `opts[i]`.
    pub(crate) fn start_with(opts: &[HostOpts]) -> TestHosts {
        assert!(!opts.is_empty(), "TestHosts needs at least one host");
        let dir = tempfile::Builder::new()
            .prefix("lh")
            .tempdir_in(std::env::temp_dir())
            .expect("create the test hosts' directory");
        let list = |pick: fn(&HostOpts) -> bool| -> String {
            opts.iter()
                .enumerate()
                .filter(|(_, o)| pick(o))
                .map(|(i, _)| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut cmd = Command::new("bash");
        cmd.arg(loopback_hosts_script())
            .arg("up")
            .arg(dir.path())
            .arg(opts.len().to_string())
            // if this test process is killed before Drop runs, a watchdog stops the fleet
            .arg("--owner")
            .arg(std::process::id().to_string());
        for (flag, hosts) in [
            ("--pty-denied", list(|o| o.pty_denied)),
            ("--no-forwarding", list(|o| o.no_forwarding)),
            ("--one-session", list(|o| o.one_session)),
            ("--small-tmp", list(|o| o.small_tmp)),
            ("--password-only", list(|o| o.password_only)),
            ("--debug-log", list(|o| o.debug_log)),
            ("--sudo-nopasswd", list(|o| o.sudo == Sudo::NoPasswd)),
            ("--sudo-password", list(|o| o.sudo == Sudo::Password)),
            ("--sudo-requiretty", list(|o| o.sudo == Sudo::RequireTty)),
            ("--chatty-login", list(|o| o.chatty_login)),
            ("--dropbear", list(|o| o.dropbear)),
            ("--noexec-tmp", list(|o| o.noexec_tmp)),
            ("--readonly-tmp", list(|o| o.readonly_tmp)),
            ("--no-tar", list(|o| o.no_tar)),
            (
                "--login-shell",
                opts.iter()
                    .enumerate()
                    .filter_map(|(i, o)| o.login_shell.map(|sh| format!("{i}:{sh}")))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ] {
            if !hosts.is_empty() {
                cmd.arg(flag).arg(hosts);
            }
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/loopback-hosts");
        // from here on, Drop cleans up whatever was started, even on a panic below
        let mut hosts = TestHosts {
            dir: Some(dir),
            addrs: Vec::new(),
        };
        assert!(
            out.status.success(),
            "scripts/loopback-hosts up failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let listed =
            std::fs::read_to_string(hosts.dir().join("hosts.txt")).expect("read hosts.txt");
        hosts.addrs = listed.lines().map(str::to_string).collect();
        assert_eq!(hosts.addrs.len(), opts.len(), "hosts.txt: {listed:?}");
        hosts
    }

    /// The fleet's directory (keys, ssh_config, hosts.yaml, hN/ per host).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.as_ref().expect("fleet directory").path()
    }

    /// The client side's ssh config: Port, User, key, known_hosts, BatchMode.
    pub(crate) fn ssh_config(&self) -> PathBuf {
        self.dir().join("ssh_config")
    }

    /// The inventory of every host, in the `hosts:` list form.
    pub(crate) fn hosts_yaml(&self) -> PathBuf {
        self.dir().join("hosts.yaml")
    }

    pub(crate) fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Host i's address (no port: the ssh_config gives it).
    pub(crate) fn addr(&self, i: usize) -> String {
        self.addrs[i].clone()
    }

    pub(crate) fn addrs(&self) -> Vec<String> {
        self.addrs.clone()
    }

    /// Host i's name as the host itself reports it: `host00i` when root (each host has
    /// its own UTS namespace), else the machine's own name.
    pub(crate) fn hostname(&self, i: usize) -> String {
        assert!(i < self.len(), "no host {i}");
        if is_root() {
            format!("host{i:03}")
        } else {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .expect("read the hostname")
                .trim()
                .to_string()
        }
    }

    /// Host i's /tmp as seen from outside. It is that host's own /tmp only when root
    /// (and not for a `small_tmp` host, whose /tmp is a tmpfs inside its namespace).
    /// When root it holds the test user's home, `home-pushrun-test`.
    pub(crate) fn tmp_dir(&self, i: usize) -> PathBuf {
        self.dir().join(format!("h{i}")).join("tmp")
    }

    /// The pids of the fleet's listening sshd processes, in host order.
    pub(crate) fn listener_pids(&self) -> Vec<u32> {
        let text = std::fs::read_to_string(self.dir().join("pids")).expect("read the fleet's pids");
        let mut pids: Vec<(usize, u32)> = text
            .lines()
            .map(|l| {
                let mut it = l.split_whitespace();
                let i = it.next().and_then(|s| s.parse().ok()).expect("host index");
                let pid = it.next().and_then(|s| s.parse().ok()).expect("pid");
                (i, pid)
            })
            .collect();
        pids.sort();
        pids.into_iter().map(|(_, pid)| pid).collect()
    }

    /// `ssh -F ssh_config ADDR CMD` with no stdin, for checking a host's state in tests.
    pub(crate) fn ssh(&self, i: usize, cmd: &str) -> Output {
        self.ssh_with(i, &[], cmd)
    }

    /// As `ssh`, with extra ssh options before the address (e.g. `&["-tt"]`).
    pub(crate) fn ssh_with(&self, i: usize, opts: &[&str], cmd: &str) -> Output {
        Command::new("ssh")
            .arg("-F")
            .arg(self.ssh_config())
            .args(opts)
            .arg(self.addr(i))
            .arg(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("run ssh")
    }

    /// Whether the hosts have a test user and their own sudoers, i.e. whether
    /// `test_user()`, `password_only` and `sudo` work: only when the tests run as root
    /// and sudo is installed (scripts/setup.sh installs it). Tests of those skip with a
    /// message otherwise.
    pub(crate) fn can_test_users() -> bool {
        is_root() && in_path("sudo")
    }

    /// The test user every host has when root (`pushrun-test`): shell /bin/sh, home
    /// /tmp/home-pushrun-test, logs in with the fleet's key (e.g. `ssh_with(i, &["-l",
    /// &user], cmd)`) or, on a `password_only` host, with `test_password()`. Panics when
    /// there is none (not root).
    pub(crate) fn test_user(&self) -> String {
        self.fleet_env_nonempty("TEST_USER")
    }

    /// The test user's password (`pushrun-pass`), for its logins and for sudo.
    pub(crate) fn test_password(&self) -> String {
        self.fleet_env_nonempty("TEST_PASSWORD")
    }

    /// The text of host i's sshd log (start-up errors, and everything a `debug_log`
    /// host logs).
    pub(crate) fn log(&self, i: usize) -> String {
        assert!(i < self.len(), "no host {i}");
        let path = self.dir().join(format!("h{i}")).join("log");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A value from the fleet's `fleet.env` (empty if absent).
    pub(crate) fn fleet_env(&self, key: &str) -> String {
        let text = std::fs::read_to_string(self.dir().join("fleet.env")).expect("read fleet.env");
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or("")
            .to_string()
    }

    fn fleet_env_nonempty(&self, key: &str) -> String {
        let v = self.fleet_env(key);
        assert!(
            !v.is_empty(),
            "the hosts have no test user ({key} is empty): that needs root"
        );
        v
    }

    /// Write a custom inventory (or any file) into the fleet's directory.
    pub(crate) fn write_yaml(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let out = Command::new("bash")
            .arg(loopback_hosts_script())
            .arg("down")
            .arg(dir.path())
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "scripts/loopback-hosts down {} failed ({}): {}",
                dir.path().display(),
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("could not run scripts/loopback-hosts down: {e}"),
        }
        // TempDir's drop removes the directory
    }
}

/// `pushrun`, as built by cargo for this test run. Connections end with each
/// run (`PUSHRUN_PERSIST=0`) unless a test says otherwise.
pub(crate) fn pushrun() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pushrun"));
    cmd.env("PUSHRUN_PERSIST", "0");
    cmd
}

/// A random number, different on every call.
fn random_u64() -> u64 {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_usize(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

/// A random loopback address 127.<200-254>.<0-255>.<1-254>, outside the range the test
/// fleets draw their bases from (127.100-199).
fn random_spare_ip() -> Ipv4Addr {
    let r = random_u64();
    Ipv4Addr::new(
        127,
        200 + (r % 55) as u8,
        (r >> 8) as u8,
        1 + ((r >> 16) % 254) as u8,
    )
}

/// A random 127.x.y.z where nothing listens on `HOST_PORT` (connecting is refused).
pub(crate) fn unused_addr() -> String {
    for _ in 0..100 {
        let ip = random_spare_ip();
        match TcpStream::connect_timeout(
            &SocketAddrV4::new(ip, HOST_PORT).into(),
            Duration::from_secs(1),
        ) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return ip.to_string(),
            _ => continue,
        }
    }
    panic!("found no loopback address with nothing listening on port {HOST_PORT}");
}

/// A TCP listener that accepts connections and never says anything (a hung host). It
/// listens on a random 127.x.y.z at `HOST_PORT` (so the fleet's ssh_config reaches it by
/// address alone), or on a random port if that can't be had. It holds the accepted
/// sockets until it is dropped.
pub(crate) struct BlackHole {
    addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl BlackHole {
    pub(crate) fn start() -> BlackHole {
        let mut listener = None;
        for attempt in 0..100 {
            let port = if attempt < 50 { HOST_PORT } else { 0 };
            if let Ok(l) = TcpListener::bind(SocketAddrV4::new(random_spare_ip(), port)) {
                listener = Some(l);
                break;
            }
        }
        let listener = listener.expect("bind a black hole on loopback");
        let addr = match listener.local_addr().expect("black hole address") {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("unexpected address {other}"),
        };
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        held.push(sock);
                        accepted2.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            drop(held);
        });
        BlackHole {
            addr,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// The address (no port).
    pub(crate) fn addr(&self) -> String {
        self.addr.ip().to_string()
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many connections it has accepted so far.
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether an executable `name` is on PATH (as the script's `command -v` sees it).
fn in_path(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| {
        std::fs::metadata(d.join(name))
            .map(|m| m.is_file() && m.mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Whether this process runs as root (then each test host has its own hostname and /tmp).
pub(crate) fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Whether process `pid` is still running (a zombie counts as gone).
pub(crate) fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Pids and command lines of live processes whose command line contains `marker`
/// (the test hosts share the tests' pid namespace, so this sees their processes).
pub(crate) fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || !pid_alive(name.parse().unwrap()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) {
                found.push(format!("{name}: {cmdline}"));
            }
        }
    }
    found
}

/// Waits until `done` holds, failing the test after `limit`.
pub(crate) fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bytes that neither repeat nor compress (xorshift), deterministic for a seed.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The lines of `host` in pushrun's default output (`host : text`), without the prefix.
pub(crate) fn lines_of<'a>(stdout: &'a str, host: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .filter_map(|l| {
            l.split_once(": ")
                .filter(|(h, _)| h.trim_end() == host)
                .map(|(_, t)| t)
        })
        .collect()
}

/// A results dir's `latest/summary.json`.
pub(crate) fn summary(results: &Path) -> serde_json::Value {
    let path = results.join("latest/summary.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// One host's entry of a summary.json.
pub(crate) fn host_summary<'a>(
    summary: &'a serde_json::Value,
    name: &str,
) -> &'a serde_json::Value {
    summary["hosts"]
        .as_array()
        .expect("hosts in summary.json")
        .iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {summary:#}"))
}

/// What a finished pushrun said.
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// stdout and stderr, for assertion messages.
    pub(crate) fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// The stdout lines of `host`, without the prefix (see [`lines_of`]).
    pub(crate) fn lines_of(&self, host: &str) -> Vec<&str> {
        lines_of(&self.stdout, host)
    }
}

pub(crate) fn to_run(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `pushrun exec --hosts INVENTORY --ssh-config CONFIG ARGS`, stdin closed.
pub(crate) fn exec_command(inventory: &Path, config: &Path, args: &[&str]) -> Command {
    let mut cmd = pushrun();
    cmd.arg("exec")
        .arg("--hosts")
        .arg(inventory)
        .arg("--ssh-config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// `pushrun exec` on `inventory` with the fleet's ssh config, run to its end.
pub(crate) fn exec(hosts: &TestHosts, inventory: &Path, args: &[&str]) -> Run {
    let out = exec_command(inventory, &hosts.ssh_config(), args)
        .output()
        .expect("run pushrun");
    to_run(out)
}

/// `pushrun exec` as in [`exec`], started with stdout and stderr piped.
pub(crate) fn spawn_exec(
    hosts: &TestHosts,
    inventory: &Path,
    args: &[&str],
) -> std::process::Child {
    exec_command(inventory, &hosts.ssh_config(), args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pushrun")
}

/// Two addresses `p.N` and `p.M` folded as pushrun folds them: `p.[N-M]`.
pub(crate) fn common_fold(a: &str, b: &str) -> String {
    let (prefix, first) = a.rsplit_once('.').unwrap();
    let (_, second) = b.rsplit_once('.').unwrap();
    format!("{prefix}.[{first}-{second}]")
}

/// A host that is down at first, then up: after `delay`, a listener on
/// `from` (`addr:port`) forwards every connection to `to`. It lives as long
/// as the test process.
pub(crate) fn late_forwarder(
    from: String,
    to: String,
    delay: Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let listener = std::net::TcpListener::bind(&from).expect("bind the late host");
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(&to) else {
                continue;
            };
            let (mut c, mut s) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c, &mut s);
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
            let (mut c, mut s) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s, &mut c);
                let _ = c.shutdown(std::net::Shutdown::Write);
            });
        }
    })
}

/// Writes a payload dir: (path, content, executable).
pub(crate) fn make_payload(dir: &Path, files: &[(&str, &[u8], bool)]) {
    for (path, content, exec) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        let mode = if *exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
}

/// A payload dir `name` under `dir` whose entry point `run` is `script`.
pub(crate) fn payload(dir: &Path, name: &str, script: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let payload = dir.join(name);
    std::fs::create_dir_all(&payload).unwrap();
    let run = payload.join("run");
    std::fs::write(&run, script).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    payload
}

/// The fleet's ssh_config with `DIR/NAME.known_hosts` (holding `known`) as
/// its known_hosts file, and `extra` lines right after that setting (for
/// ssh the first value wins). Returns the config and the known_hosts file.
pub(crate) fn config_with_known_hosts(
    hosts: &TestHosts,
    name: &str,
    known: &str,
    extra: &str,
) -> (PathBuf, PathBuf) {
    let kh = hosts.dir().join(format!("{name}.known_hosts"));
    std::fs::write(&kh, known).unwrap();
    let cfg = std::fs::read_to_string(hosts.ssh_config()).unwrap();
    let cfg: String = cfg
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("UserKnownHostsFile") {
                format!("  UserKnownHostsFile {}\n{extra}", kh.display())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let path = hosts.dir().join(format!("{name}.ssh_config"));
    std::fs::write(&path, cfg).unwrap();
    (path, kh)
}

/// The names in `dir`, sorted (it must be there and readable).
pub(crate) fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
