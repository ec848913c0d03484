//! Proves the test-host harness itself (tests/it/common.rs, scripts/loopback-hosts) works,
//! with plain `ssh`: pushrun's own tests rely on every property checked here.

use crate::common::{
    BlackHole, HOST_PORT, HostOpts, Sudo, TestHosts, is_root, loopback_hosts_script, pid_alive,
    unused_addr,
};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn assert_ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn three_hosts_answer_with_their_own_hostname() {
    let hosts = TestHosts::start(3);
    let addrs = hosts.addrs();
    assert_eq!(addrs.len(), 3);
    // host i listens on <base>.<i+1>
    let base = addrs[0].rsplit_once('.').unwrap().0.to_string();
    for (i, a) in addrs.iter().enumerate() {
        assert_eq!(a, &format!("{base}.{}", i + 1));
        assert_eq!(hosts.addr(i), *a);
    }
    if is_root() {
        assert_eq!(hosts.hostname(0), "host000");
        assert_eq!(hosts.hostname(2), "host002");
    }
    for i in 0..3 {
        let out = hosts.ssh(i, "hostname");
        assert_ok(&out, &format!("ssh host {i} hostname"));
        assert_eq!(text(&out.stdout), format!("{}\n", hosts.hostname(i)));
        assert_eq!(text(&out.stderr), "", "host {i} stderr");
    }
}

#[test]
fn inventory_and_config_files_are_written() {
    let hosts = TestHosts::start(2);
    let yaml = std::fs::read_to_string(hosts.hosts_yaml()).unwrap();
    assert_eq!(
        yaml,
        format!("hosts:\n  - {}\n  - {}\n", hosts.addr(0), hosts.addr(1))
    );
    let cfg = std::fs::read_to_string(hosts.ssh_config()).unwrap();
    for line in [
        format!("Port {HOST_PORT}"),
        "StrictHostKeyChecking yes".to_string(),
        "BatchMode yes".to_string(),
        "IdentitiesOnly yes".to_string(),
        format!(
            "UserKnownHostsFile {}",
            hosts.dir().join("known_hosts").display()
        ),
    ] {
        assert!(
            cfg.lines().any(|l| l.trim() == line),
            "ssh_config lacks {line:?}:\n{cfg}"
        );
    }
    let known = std::fs::read_to_string(hosts.dir().join("known_hosts")).unwrap();
    assert_eq!(known.lines().count(), 2);
    assert!(
        known.starts_with(&format!("[{}]:{HOST_PORT} ssh-ed25519 ", hosts.addr(0))),
        "{known}"
    );
    let custom = hosts.write_yaml("one.yaml", &format!("hosts:\n  - {}\n", hosts.addr(1)));
    assert_eq!(custom, hosts.dir().join("one.yaml"));
    assert_eq!(
        std::fs::read_to_string(&custom).unwrap(),
        format!("hosts:\n  - {}\n", hosts.addr(1))
    );
}

#[test]
fn each_host_has_its_own_tmp_when_root() {
    if !is_root() {
        eprintln!("skipped: hosts share /tmp unless the tests run as root");
        return;
    }
    let hosts = TestHosts::start(2);
    // a name of its own, so that a stray file on the machine can't pass for it
    let probe = format!(
        "probe-{}",
        hosts.dir().file_name().unwrap().to_string_lossy()
    );
    // (besides the test user's home)
    let ls = "ls -A /tmp | grep -vx home-pushrun-test";
    let out = hosts.ssh(0, &format!("echo from-0 > /tmp/{probe} && {ls}"));
    assert_ok(&out, "write on host 0");
    assert_eq!(text(&out.stdout), format!("{probe}\n"));
    let out = hosts.ssh(1, &format!("{ls}; test -e /tmp/{probe}; echo $?"));
    assert_ok(&out, "look on host 1");
    assert_eq!(text(&out.stdout), "1\n", "host 1's /tmp must be empty");
    // seen from outside
    assert_eq!(
        std::fs::read_to_string(hosts.tmp_dir(0).join(&probe)).unwrap(),
        "from-0\n"
    );
    assert!(!hosts.tmp_dir(1).join(&probe).exists());
    // the file is the host's own, not the machine's
    assert!(!std::path::Path::new("/tmp").join(&probe).exists());
}

#[test]
fn small_tmp_host_runs_out_of_space_when_root() {
    if !is_root() {
        eprintln!("skipped: small_tmp needs root");
        return;
    }
    let hosts = TestHosts::start_with(&[
        HostOpts {
            small_tmp: true,
            ..Default::default()
        },
        HostOpts::default(),
    ]);
    let out = hosts.ssh(0, "df -k /tmp | tail -n 1 | awk '{print $2}'");
    assert_ok(&out, "df on host 0");
    assert_eq!(text(&out.stdout), "2048\n");
    let out = hosts.ssh(0, "head -c 3000000 /dev/zero > /tmp/big");
    assert!(
        !out.status.success(),
        "writing 3 MB into a 2 MiB /tmp must fail"
    );
    assert!(
        text(&out.stderr).contains("No space left on device"),
        "{}",
        text(&out.stderr)
    );
    let out = hosts.ssh(
        1,
        "head -c 3000000 /dev/zero > /tmp/big && wc -c < /tmp/big",
    );
    assert_ok(&out, "write 3 MB on host 1");
    assert_eq!(text(&out.stdout).trim(), "3000000");
}

#[test]
fn pty_denied_host_refuses_a_tty_but_runs_commands() {
    let hosts = TestHosts::start_with(&[
        HostOpts {
            pty_denied: true,
            ..Default::default()
        },
        HostOpts::default(),
    ]);
    let out = hosts.ssh_with(0, &["-tt"], "tty");
    assert!(
        !out.status.success(),
        "ssh -tt to a PTY-denied host must fail: {}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("PTY"),
        "stderr: {}",
        text(&out.stderr)
    );
    let out = hosts.ssh(0, "echo plain exec");
    assert_ok(&out, "plain exec on the PTY-denied host");
    assert_eq!(text(&out.stdout), "plain exec\n");
    // the other host gives a PTY; an sshd that doesn't run as root never can (it can't
    // hand the pty over to the user), so then no host does
    let out = hosts.ssh_with(1, &["-tt"], "tty");
    if is_root() {
        assert_ok(&out, "ssh -tt to a normal host");
        assert!(
            text(&out.stdout).starts_with("/dev/pts/"),
            "{}",
            text(&out.stdout)
        );
    } else {
        assert!(
            !out.status.success(),
            "non-root sshd gave a PTY: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn no_forwarding_host_refuses_port_forwards() {
    let hosts = TestHosts::start_with(&[
        HostOpts {
            no_forwarding: true,
            ..Default::default()
        },
        HostOpts::default(),
    ]);
    let fwd = [
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        "127.0.0.1:0:127.0.0.1:9",
    ];
    let out = hosts.ssh_with(0, &fwd, "echo forwarded");
    assert!(
        !out.status.success(),
        "a remote forward must be refused: {}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("forwarding failed"),
        "stderr: {}",
        text(&out.stderr)
    );
    let out = hosts.ssh_with(1, &fwd, "echo forwarded");
    assert_ok(&out, "a remote forward on a normal host");
    assert_eq!(text(&out.stdout), "forwarded\n");
}

#[test]
fn sftp_subsystem_works() {
    let hosts = TestHosts::start(1);
    let mut child = Command::new("sftp")
        .arg("-F")
        .arg(hosts.ssh_config())
        .arg("-b")
        .arg("-")
        .arg(hosts.addr(0))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sftp");
    // a name of its own: without root, the hosts share the machine's /tmp
    let made = format!(
        "/tmp/sftp-{}",
        hosts.dir().file_name().unwrap().to_string_lossy()
    );
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("mkdir {made}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_ok(&out, "sftp mkdir");
    let out = hosts.ssh(0, &format!("test -d {made} && rmdir {made} && echo yes"));
    assert_eq!(text(&out.stdout), "yes\n");
}

#[test]
fn unused_addr_refuses_connections() {
    let a = unused_addr();
    assert!(a.starts_with("127."), "{a}");
    let err = TcpStream::connect((a.as_str(), HOST_PORT)).expect_err("nothing may listen there");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert_ne!(
        unused_addr(),
        a,
        "two calls should give different addresses"
    );
}

#[test]
fn black_hole_accepts_and_never_speaks() {
    let hole = BlackHole::start();
    assert!(hole.addr().starts_with("127."), "{}", hole.addr());
    let mut s =
        TcpStream::connect((hole.addr().as_str(), hole.port())).expect("the black hole accepts");
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) => panic!("the black hole must not speak nor close, read returned {n} bytes"),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "unexpected error {e}"
        ),
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    let deadline = Instant::now() + Duration::from_secs(2);
    while hole.accepted() < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(hole.accepted(), 1);
    let (addr, port) = (hole.addr(), hole.port());
    drop(hole);
    // stopped: the held socket is closed and the port refuses
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the held socket must be closed");
    let err = TcpStream::connect((addr.as_str(), port)).expect_err("a stopped black hole refuses");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}

#[test]
fn drop_stops_every_process_of_the_fleet() {
    let hosts = TestHosts::start(2);
    let pids = hosts.listener_pids();
    assert_eq!(pids.len(), 2);
    for &pid in &pids {
        assert!(pid_alive(pid), "listener {pid} should run");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(
            text(&cmdline).contains("sshd"),
            "pid {pid} is not an sshd: {}",
            text(&cmdline)
        );
    }
    // a session still running on host 0 when the fleet is dropped
    let mut session = Command::new("ssh")
        .arg("-F")
        .arg(hosts.ssh_config())
        .arg(hosts.addr(0))
        .arg("echo started; exec sleep 300")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run ssh");
    let mut first = [0u8; 8];
    session
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    assert_eq!(&first, b"started\n");
    let dir = hosts.dir().to_path_buf();
    drop(hosts);
    for &pid in &pids {
        assert!(!pid_alive(pid), "listener {pid} still runs after drop");
    }
    assert!(!dir.exists(), "{} should be removed", dir.display());
    // the session's server side was stopped too, so the client ends
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = session.try_wait().unwrap() {
            assert!(!status.success(), "the session cannot have ended normally");
            break;
        }
        if Instant::now() > deadline {
            let _ = session.kill();
            panic!("the session on the dropped fleet is still running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn fleet_stops_when_its_owner_dies_without_dropping_it() {
    // what TestHosts relies on when a test process is killed before Drop runs
    let dir = tempfile::Builder::new().prefix("lh").tempdir().unwrap();
    let mut owner = Command::new("sleep").arg("60").spawn().expect("run sleep");
    let out = Command::new("bash")
        .arg(loopback_hosts_script())
        .args([
            "up",
            dir.path().to_str().unwrap(),
            "1",
            "--owner",
            &owner.id().to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ok(&out, "loopback-hosts up --owner");
    let pids = std::fs::read_to_string(dir.path().join("pids")).unwrap();
    let pid: u32 = pids.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(pid_alive(pid));
    owner.kill().unwrap();
    owner.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = !pid_alive(pid);
    let watchdog = std::fs::read_to_string(dir.path().join("watchdog.pid")).unwrap_or_default();
    let watchdog_stat =
        std::fs::read_to_string(format!("/proc/{}/stat", watchdog.trim())).unwrap_or_default();
    // clean up in any case before asserting
    let _ = Command::new("bash")
        .arg(loopback_hosts_script())
        .args(["down", dir.path().to_str().unwrap()])
        .output();
    assert!(
        stopped,
        "the fleet outlived its owner; watchdog {watchdog:?}: {watchdog_stat:?}"
    );
}

fn skip_unless_users() -> bool {
    if TestHosts::can_test_users() {
        return false;
    }
    eprintln!("skipped: the test user and the hosts' own sudoers need root and sudo");
    true
}

/// `ssh` to host i as the test user with a password and no key: an SSH_ASKPASS script
/// that prints `password` answers ssh's one password prompt.
fn ssh_with_password(hosts: &TestHosts, i: usize, password: &str, cmd: &str) -> Output {
    let scratch = tempfile::tempdir().unwrap();
    let askpass = scratch.path().join("askpass");
    std::fs::write(
        &askpass,
        format!("#!/bin/sh\nprintf '%s\\n' '{password}'\n"),
    )
    .unwrap();
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
    Command::new("ssh")
        .arg("-F")
        .arg(hosts.ssh_config())
        .args(["-o", "BatchMode=no", "-o", "PubkeyAuthentication=no"])
        .args(["-o", "NumberOfPasswordPrompts=1", "-l", &hosts.test_user()])
        .arg(hosts.addr(i))
        .arg(cmd)
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env_remove("DISPLAY")
        .stdin(Stdio::null())
        .output()
        .expect("run ssh")
}

/// As `TestHosts::ssh_with`, logged in as the test user (with the fleet's key).
fn ssh_as_user(hosts: &TestHosts, i: usize, opts: &[&str], cmd: &str) -> Output {
    let user = hosts.test_user();
    let mut all = vec!["-l", user.as_str()];
    all.extend_from_slice(opts);
    hosts.ssh_with(i, &all, cmd)
}

#[test]
fn every_host_has_the_test_user_when_root() {
    if !is_root() {
        eprintln!("skipped: the test user needs root");
        return;
    }
    let hosts = TestHosts::start_with(&[
        HostOpts::default(),
        HostOpts {
            small_tmp: true,
            ..Default::default()
        },
    ]);
    assert_eq!(hosts.test_user(), "pushrun-test");
    assert_eq!(hosts.test_password(), "pushrun-pass");
    let uid = hosts.fleet_env("TEST_UID");
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u >= 4242),
        "TEST_UID={uid}"
    );
    for i in 0..2 {
        let out = ssh_as_user(
            &hosts,
            i,
            &[],
            "id -u; id -g; id -un; echo $HOME; pwd; hostname; \
             getent passwd pushrun-test | cut -d: -f7; \
             stat -c '%a %u' $HOME $HOME/.ssh $HOME/.ssh/authorized_keys",
        );
        assert_ok(&out, &format!("test user's key login on host {i}"));
        assert_eq!(
            text(&out.stdout),
            format!(
                "{uid}\n{uid}\npushrun-test\n/tmp/home-pushrun-test\n/tmp/home-pushrun-test\n\
                 {}\n/bin/sh\n700 {uid}\n700 {uid}\n600 {uid}\n",
                hosts.hostname(i)
            ),
            "host {i}"
        );
        assert_eq!(text(&out.stderr), "", "host {i} stderr");
        // root still logs in as before, and sees the same user
        let out = hosts.ssh(i, "id -un; getent passwd pushrun-test | cut -d: -f3,6");
        assert_ok(&out, &format!("root on host {i}"));
        assert_eq!(
            text(&out.stdout),
            format!("root\n{uid}:/tmp/home-pushrun-test\n")
        );
    }
    // the home of the bind-mounted /tmp is seen from outside; the machine has no such user
    assert_eq!(
        std::fs::metadata(hosts.tmp_dir(0).join("home-pushrun-test"))
            .unwrap()
            .uid()
            .to_string(),
        uid
    );
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(
        !passwd.contains("loopback-hosts test user"),
        "the machine's /etc/passwd was changed"
    );
    let shadow = std::fs::read_to_string("/etc/shadow").unwrap();
    assert!(
        !shadow.contains("$loopbackhosts$"),
        "the machine's /etc/shadow was changed"
    );
}

#[test]
fn password_only_host_refuses_keys_and_takes_the_password() {
    if !is_root() {
        eprintln!("skipped: password logins need root");
        return;
    }
    let hosts = TestHosts::start_with(&[
        HostOpts {
            password_only: true,
            ..Default::default()
        },
        HostOpts::default(),
    ]);
    let password = hosts.test_password();
    // host 0: no key works, neither root's nor the test user's
    let out = hosts.ssh(0, "true");
    assert!(!out.status.success(), "root's key login must be refused");
    assert!(
        text(&out.stderr).contains("Permission denied (password)"),
        "{}",
        text(&out.stderr)
    );
    let out = ssh_as_user(&hosts, 0, &[], "true");
    assert!(
        !out.status.success(),
        "the test user's key login must be refused"
    );
    assert!(
        text(&out.stderr).contains("Permission denied (password)"),
        "{}",
        text(&out.stderr)
    );
    // the password does, a wrong one doesn't
    let out = ssh_with_password(&hosts, 0, &password, "id -un; hostname");
    assert_ok(&out, "password login on host 0");
    assert_eq!(
        text(&out.stdout),
        format!("pushrun-test\n{}\n", hosts.hostname(0))
    );
    let out = ssh_with_password(&hosts, 0, "not-the-password", "id -un");
    assert!(!out.status.success(), "a wrong password must be refused");
    assert_eq!(text(&out.stdout), "");
    // host 1 takes keys and no passwords
    let out = ssh_with_password(&hosts, 1, &password, "id -un");
    assert!(!out.status.success(), "host 1 must refuse passwords");
    assert!(
        text(&out.stderr).contains("Permission denied (publickey)"),
        "{}",
        text(&out.stderr)
    );
    let out = ssh_as_user(&hosts, 1, &[], "id -un");
    assert_ok(&out, "key login on host 1");
    assert_eq!(text(&out.stdout), "pushrun-test\n");
}

#[test]
fn sudo_rights_follow_the_host_flags() {
    if skip_unless_users() {
        return;
    }
    let sudo = |s| HostOpts {
        sudo: s,
        ..Default::default()
    };
    let hosts = TestHosts::start_with(&[
        sudo(Sudo::NoPasswd),
        sudo(Sudo::Password),
        sudo(Sudo::RequireTty),
        sudo(Sudo::None),
    ]);
    let pw = hosts.test_password();
    let with_pw = format!("echo {pw} | sudo -S -p '' id -un");
    // each host's own sudoers, as sudo wants it
    for i in 0..4 {
        let meta = std::fs::metadata(hosts.dir().join(format!("h{i}/sudoers"))).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o440), "host {i}");
    }

    // NOPASSWD: no password, and no complaint (e.g. "unable to resolve host")
    let out = ssh_as_user(&hosts, 0, &[], "sudo -n id -un");
    assert_ok(&out, "sudo -n on the NOPASSWD host");
    assert_eq!(text(&out.stdout), "root\n");
    assert_eq!(text(&out.stderr), "");

    // a password is required, and taken on stdin; a wrong one is refused
    let out = ssh_as_user(&hosts, 1, &[], "sudo -n true");
    assert!(
        !out.status.success(),
        "sudo -n must fail on the password host"
    );
    assert_eq!(text(&out.stderr), "sudo: a password is required\n");
    let out = ssh_as_user(&hosts, 1, &[], &with_pw);
    assert_ok(&out, "sudo -S on the password host");
    assert_eq!(text(&out.stdout), "root\n");
    assert_eq!(text(&out.stderr), "");
    let out = ssh_as_user(&hosts, 1, &[], "echo wrong | sudo -S -p '' id -un");
    assert!(!out.status.success(), "a wrong password must be refused");
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr).contains("sudo: 1 incorrect password attempt"),
        "{}",
        text(&out.stderr)
    );

    // requiretty: nothing works without a tty
    for cmd in ["sudo -n true", with_pw.as_str()] {
        let out = ssh_as_user(&hosts, 2, &[], cmd);
        assert!(!out.status.success(), "{cmd} without a tty must fail");
        assert_eq!(
            text(&out.stderr),
            "sudo: sorry, you must have a tty to run sudo\n",
            "{cmd}"
        );
    }

    // not in the sudoers file (sudo takes the password before it says so)
    let out = ssh_as_user(&hosts, 3, &[], &with_pw);
    assert!(
        !out.status.success(),
        "the test user may not sudo on host 3"
    );
    assert_eq!(
        text(&out.stderr),
        "pushrun-test is not in the sudoers file.\n"
    );
    let out = ssh_as_user(&hosts, 3, &[], "sudo -n true");
    assert!(!out.status.success());
    assert_eq!(text(&out.stderr), "sudo: a password is required\n");

    // root may sudo everywhere
    for i in 0..4 {
        let out = hosts.ssh(i, "sudo -n id -un");
        assert_ok(&out, &format!("root's sudo on host {i}"));
        assert_eq!(text(&out.stdout), "root\n");
        assert_eq!(text(&out.stderr), "", "host {i}");
    }
}

#[test]
fn requiretty_sudo_prompts_on_a_tty() {
    if skip_unless_users() {
        return;
    }
    let hosts = TestHosts::start_with(&[HostOpts {
        sudo: Sudo::RequireTty,
        ..Default::default()
    }]);
    let with_pw = format!("echo {} | sudo -S -p '' true", hosts.test_password());
    let out = ssh_as_user(&hosts, 0, &[], &with_pw);
    assert!(!out.status.success(), "sudo without a tty must fail");
    assert_eq!(
        text(&out.stderr),
        "sudo: sorry, you must have a tty to run sudo\n"
    );
    let mut child = Command::new("ssh")
        .arg("-F")
        .arg(hosts.ssh_config())
        .args(["-tt", "-l", &hosts.test_user()])
        .arg(hosts.addr(0))
        .arg("sudo -p 'PROMPT:' id -un")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ssh -tt");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut answered = false;
    let mut stdin = child.stdin.take().unwrap();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.extend(chunk),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("ssh -tt sudo hangs; output so far: {:?}", text(&seen));
            }
        }
        // the password only once the prompt is there (sudo has turned echo off then)
        if !answered && text(&seen).contains("PROMPT:") {
            stdin
                .write_all(format!("{}\n", hosts.test_password()).as_bytes())
                .unwrap();
            answered = true;
        }
    }
    let status = child.wait().unwrap();
    drop(stdin);
    reader.join().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(answered, "sudo never prompted: {:?} {stderr}", text(&seen));
    assert!(status.success(), "{status}: {:?} {stderr}", text(&seen));
    // the tty turns \n into \r\n; the password is not echoed
    assert_eq!(text(&seen), "PROMPT:\r\nroot\r\n");
}

#[test]
fn debug_log_shows_a_jump_through_the_host() {
    let hosts = TestHosts::start_with(&[
        HostOpts {
            debug_log: true,
            ..Default::default()
        },
        HostOpts::default(),
    ]);
    let target = format!("target {} port {HOST_PORT}", hosts.addr(1));
    let out = hosts.ssh(1, "hostname");
    assert_ok(&out, "direct ssh to host 1");
    assert!(!hosts.log(0).contains(&target), "{}", hosts.log(0));
    // through host 0
    let out = hosts.ssh_with(1, &["-J", &hosts.addr(0)], "hostname");
    assert_ok(&out, "ssh -J host 0 host 1");
    assert_eq!(text(&out.stdout), format!("{}\n", hosts.hostname(1)));
    let log = hosts.log(0);
    assert!(
        log.lines().any(
            |l| l.starts_with("debug1: server_request_direct_tcpip: originator ")
                && l.ends_with(&target)
        ),
        "host 0's log shows no direct-tcpip channel to host 1:\n{log}"
    );
    // host 1 logs at the usual level: no debug lines
    assert!(!hosts.log(1).contains("debug1:"), "{}", hosts.log(1));
}

#[test]
fn drop_stops_a_dropbear_host_too() {
    if !is_root() {
        eprintln!("skipped: dropbear hosts need root");
        return;
    }
    // dropbear forks into the background like sshd, but its command line
    // names its pid file, not an sshd_config: it was once left running
    let hosts = TestHosts::start_with(&[
        HostOpts::default(),
        HostOpts {
            dropbear: true,
            ..HostOpts::default()
        },
    ]);
    let pids = hosts.listener_pids();
    assert_eq!(pids.len(), 2);
    for &pid in &pids {
        assert!(pid_alive(pid), "listener {pid} should run");
    }
    drop(hosts);
    for &pid in &pids {
        assert!(!pid_alive(pid), "listener {pid} still runs after drop");
    }
}
