//! Real fleets: passwords, sudo, requiretty, PTY-refusing servers, jump
//! hosts and host keys, each against an sshd configured that way.
//!
//! The test user, password logins and sudoers need root (each test host
//! then has its own /etc/passwd, /etc/shadow and /etc/sudoers); as another
//! user these tests say so and pass without running.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    HOST_PORT, HostOpts, Run, Sudo, TestHosts, config_with_known_hosts, exec_command, payload,
    pushrun, to_run, wait_until,
};

/// `pushrun exec --hosts INVENTORY ARGS`, with `input` on its stdin.
fn exec(hosts: &TestHosts, inventory: &Path, args: &[&str], input: &str) -> Run {
    let child = start(hosts, inventory, args, &[], input);
    to_run(child.wait_with_output().expect("wait for pushrun"))
}

fn start(
    hosts: &TestHosts,
    inventory: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    input: &str,
) -> Child {
    let mut child = exec_command(inventory, &hosts.ssh_config(), args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pushrun");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin);
    child
}

fn skip() -> bool {
    if TestHosts::can_test_users() {
        return false;
    }
    eprintln!("skipped: needs root and sudo (each test host gets its own users and sudoers)");
    true
}

/// A payload whose entry point `run` is `script`, and a results dir for it.
fn payload_and_results(hosts: &TestHosts, script: &str) -> (String, String) {
    let dir = payload(hosts.dir(), "pl", script);
    let results = hosts.dir().join("results");
    (dir.display().to_string(), results.display().to_string())
}

/// An inventory of hosts `name: address` logging in as the test user, each with `extra` lines.
fn inventory(
    hosts: &TestHosts,
    file: &str,
    entries: &[(&str, usize, &[&str])],
) -> std::path::PathBuf {
    let mut text = format!("defaults:\n  user: {}\nhosts:\n", hosts.test_user());
    for (name, i, extra) in entries {
        text.push_str(&format!("  {name}:\n    address: {}\n", hosts.addr(*i)));
        for line in *extra {
            text.push_str(&format!("    {line}\n"));
        }
    }
    hosts.write_yaml(file, &text)
}

/// Every process on this machine (initiator and hosts alike: the test
/// hosts are namespaces of it) whose arguments or environment hold `secret`,
/// except `except`.
fn processes_holding(secret: &str, except: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        if pid == except || pid == std::process::id() {
            continue;
        }
        for what in ["cmdline", "environ"] {
            let Ok(bytes) = std::fs::read(entry.path().join(what)) else {
                continue;
            };
            if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                found.push(format!("{pid} ({what}): {cmd}"));
            }
        }
    }
    found
}

/// Watches every process while `child` runs; returns what it saw and the run.
fn watch_for_secret(child: Child, secret: &str, except: u32) -> (Vec<String>, Run) {
    let mut seen = Vec::new();
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut samples = 0;
    while child.try_wait().expect("try_wait").is_none() && Instant::now() < deadline {
        seen.extend(processes_holding(secret, except));
        samples += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        samples >= 5,
        "the run was too short to watch ({samples} samples)"
    );
    (
        seen,
        to_run(child.wait_with_output().expect("wait for pushrun")),
    )
}

#[test]
fn a_password_only_host_logs_in_and_no_process_ever_holds_the_password() {
    if skip() {
        return;
    }
    let hosts = TestHosts::start_with(&[HostOpts {
        password_only: true,
        ..HostOpts::default()
    }]);
    let password = hosts.test_password();
    // the key is refused there: ssh itself says so
    let by_key = hosts.ssh_with(0, &["-l", &hosts.test_user()], "true");
    assert!(
        !by_key.status.success(),
        "the key was accepted on a password-only host"
    );

    // --ask-pass, the password on stdin (no terminal here)
    let inv = inventory(&hosts, "pw.yaml", &[("pw", 0, &[])]);
    let child = start(
        &hosts,
        &inv,
        &["--ask-pass", "--", "sleep 1.5; id -un"],
        &[],
        &format!("{password}\n"),
    );
    let (seen, run) = watch_for_secret(child, &password, 0);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(run.lines_of("pw"), [hosts.test_user()], "{}", run.all());
    assert!(seen.is_empty(), "processes held the password: {seen:#?}");

    // password_env: only pushrun itself has the variable (the user put it
    // there); neither ssh nor anything on the host gets it
    let inv = inventory(
        &hosts,
        "pwenv.yaml",
        &[("pw", 0, &["password_env: PUSHRUN_TEST_PW"])],
    );
    let child = start(
        &hosts,
        &inv,
        &["--", "sleep 1.5; id -un"],
        &[("PUSHRUN_TEST_PW", &password)],
        "",
    );
    let pid = child.id();
    let (seen, run) = watch_for_secret(child, &password, pid);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(seen.is_empty(), "processes held the password: {seen:#?}");
    assert!(!run.all().contains(&password), "{}", run.all());
}

#[test]
fn a_wrong_password_fails_that_host_once_without_retries() {
    if skip() {
        return;
    }
    let hosts = TestHosts::start_with(&[
        HostOpts {
            password_only: true,
            // sshd logs each failed password
            debug_log: true,
            ..HostOpts::default()
        },
        HostOpts::default(),
    ]);
    let inv = inventory(
        &hosts,
        "pw.yaml",
        &[
            ("locked", 0, &["password_env: PUSHRUN_TEST_PW"]),
            ("keyed", 1, &[]),
        ],
    );
    let child = start(
        &hosts,
        &inv,
        &["--", "id -un"],
        &[("PUSHRUN_TEST_PW", "not-the-password")],
        "",
    );
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert_eq!(
        stdout.trim_end(),
        format!("keyed : {}", hosts.test_user()),
        "{stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.contains("unreachable: locked"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("authentication failed"), "{line}");
    let tries = hosts.log(0).matches("Failed password").count();
    assert_eq!(
        tries,
        1,
        "sshd saw {tries} password attempts:\n{}",
        hosts.log(0)
    );
}

/// Through sudo the run has a channel of its own beside the check that
/// waits to collect; a server that allows one session at a time
/// (`MaxSessions 1`) refuses it: the check steps aside, the run's channel
/// is opened again and the collect gets its own. Cold (the upload went
/// through the check) and warm; the results come back and no run dir stays.
#[test]
fn sudo_payloads_run_on_a_server_that_allows_one_session_at_a_time() {
    if skip() {
        return;
    }
    let hosts = TestHosts::start_with(&[HostOpts {
        sudo: Sudo::NoPasswd,
        one_session: true,
        ..HostOpts::default()
    }]);
    let inv = inventory(&hosts, "one.yaml", &[("one", 0, &[])]);
    let (payload, results) = payload_and_results(
        &hosts,
        "#!/bin/sh\nid -u > \"$PUSHRUN_OUT/uid\"\necho ran\n",
    );
    for round in ["cold", "warm"] {
        let run = exec(
            &hosts,
            &inv,
            &[
                "--persist",
                "0",
                "--become",
                "--payload",
                &payload,
                "--results",
                &results,
            ],
            "",
        );
        assert_eq!(run.code, 0, "{round}: {}", run.all());
        assert_eq!(run.lines_of("one"), ["ran"], "{round}: {}", run.all());
        let uid = std::fs::read_to_string(Path::new(&results).join("latest/one/out/uid")).unwrap();
        assert_eq!(uid, "0\n", "{round}");
        let user = hosts.test_user();
        let left = hosts.ssh_with(0, &["-l", &user], &format!("ls /tmp/.pushrun-{user}/runs"));
        assert_eq!(
            String::from_utf8_lossy(&left.stdout),
            "",
            "{round}: run dirs left"
        );
    }
    // the run's channel was refused beside the waiting check, each round
    let refused = hosts
        .log(0)
        .lines()
        .filter(|l| l.contains("no more sessions"))
        .count();
    assert!(refused >= 2, "{}", hosts.log(0));
}

#[test]
fn sudo_without_a_password_runs_commands_and_payloads_as_root() {
    if skip() {
        return;
    }
    let hosts = TestHosts::start_with(&[
        HostOpts {
            sudo: Sudo::NoPasswd,
            ..HostOpts::default()
        },
        // a hardened server: no PTY ever; payloads and commands need none
        HostOpts {
            sudo: Sudo::NoPasswd,
            pty_denied: true,
            ..HostOpts::default()
        },
    ]);
    let inv = inventory(&hosts, "np.yaml", &[("np", 0, &[]), ("nopty", 1, &[])]);
    let run = exec(
        &hosts,
        &inv,
        &["--become", "--", "id -un; echo $SUDO_USER"],
        "",
    );
    assert_eq!(run.code, 0, "{}", run.all());
    let user = hosts.test_user();
    for h in ["np", "nopty"] {
        assert_eq!(run.lines_of(h), ["root", user.as_str()], "{}", run.all());
    }

    // a payload through sudo: it runs as root, its files come back, nothing stays behind
    let (payload, results) =
        payload_and_results(&hosts, "#!/bin/sh\nid -u > \"$PUSHRUN_OUT/uid\"\nid -un\n");
    let run = exec(
        &hosts,
        &inv,
        &["--become", "--payload", &payload, "--results", &results],
        "",
    );
    assert_eq!(run.code, 0, "{}", run.all());
    for h in ["np", "nopty"] {
        let uid =
            std::fs::read_to_string(Path::new(&results).join("latest").join(h).join("out/uid"))
                .unwrap();
        assert_eq!(uid, "0\n");
    }
    for i in 0..2 {
        let left = hosts.ssh_with(i, &["-l", &user], &format!("ls /tmp/.pushrun-{user}/runs"));
        assert_eq!(
            String::from_utf8_lossy(&left.stdout),
            "",
            "run dirs left on host {i}"
        );
    }

    // --pty on the server that refuses PTYs fails fast, and says why
    let run = exec(
        &hosts,
        &inv,
        &["--limit", "nopty", "--become", "--pty", "--", "id -un"],
        "",
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("refused a PTY"), "{}", run.all());
}

#[test]
fn sudo_with_a_password_takes_it_on_stdin_and_never_shows_it() {
    if skip() {
        return;
    }
    let hosts = TestHosts::start_with(&[
        HostOpts {
            sudo: Sudo::Password,
            ..HostOpts::default()
        },
        // not in the sudoers file
        HostOpts::default(),
    ]);
    let password = hosts.test_password();
    let inv = inventory(&hosts, "sp.yaml", &[("sp", 0, &[]), ("nosudo", 1, &[])]);
    let run = exec(
        &hosts,
        &inv,
        &["--become", "--ask-become-pass", "--", "id -un"],
        &format!("{password}\n"),
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert_eq!(run.lines_of("sp"), ["root"], "{}", run.all());
    assert!(!run.all().contains(&password), "{}", run.all());
    assert!(
        run.stderr.contains("failed: nosudo: sudo:")
            && run.stderr.contains("is not in the sudoers file"),
        "{}",
        run.all()
    );

    // none given: sudo's refusal, named
    let run = exec(
        &hosts,
        &inv,
        &["--limit", "sp", "--become", "--", "id -un"],
        "",
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr.contains("sp: sudo: a password is required"),
        "{}",
        run.all()
    );
    // a wrong one
    let run = exec(
        &hosts,
        &inv,
        &["--limit", "sp", "--become", "-K", "--", "id -un"],
        "wrong\n",
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr.contains("sp: sudo: incorrect sudo password"),
        "{}",
        run.all()
    );
}

#[test]
fn requiretty_is_named_and_pty_auto_answers_the_prompt() {
    if skip() {
        return;
    }
    let hosts = TestHosts::start_with(&[
        HostOpts {
            sudo: Sudo::RequireTty,
            ..HostOpts::default()
        },
        HostOpts {
            sudo: Sudo::RequireTty,
            pty_denied: true,
            ..HostOpts::default()
        },
    ]);
    let password = hosts.test_password();
    let inv = inventory(
        &hosts,
        "tty.yaml",
        &[
            ("tty", 0, &["become: true"]),
            ("notty", 1, &["become: true"]),
        ],
    );
    let input = format!("{password}\n");
    let run = exec(&hosts, &inv, &["-K", "--", "id -un"], &input);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr
            .contains("tty: sudo requires a terminal on this host (Defaults requiretty)"),
        "{}",
        run.all()
    );

    let run = exec(
        &hosts,
        &inv,
        &["-K", "--pty", "auto", "--", "id -un; echo on-stderr >&2"],
        &input,
    );
    assert_eq!(run.code, 1, "{}", run.all());
    // a PTY merges stderr into stdout; the prompt and the password are gone
    assert_eq!(run.lines_of("tty"), ["root", "on-stderr"], "{}", run.all());
    assert!(
        !run.all().contains(&password) && !run.all().contains("pushrun-sudo"),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.contains(
            "notty: sudo requires a terminal on this host (requiretty), and the server refuses one"
        ),
        "{}",
        run.all()
    );

    // pty: auto in the inventory does the same, for a payload too
    let inv = inventory(
        &hosts,
        "tty2.yaml",
        &[("tty", 0, &["become: true", "pty: auto"])],
    );
    let (payload, results) = payload_and_results(
        &hosts,
        "#!/bin/sh\nid -un > \"$PUSHRUN_OUT/who\"\necho done\n",
    );
    let run = exec(
        &hosts,
        &inv,
        &["-K", "--payload", &payload, "--results", &results],
        &input,
    );
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(run.lines_of("tty"), ["done"], "{}", run.all());
    let who = std::fs::read_to_string(Path::new(&results).join("latest/tty/out/who")).unwrap();
    assert_eq!(who, "root\n");
}

#[test]
fn a_jump_host_carries_the_connection() {
    if skip() {
        return;
    }
    let hosts = TestHosts::start_with(&[
        HostOpts {
            debug_log: true,
            ..HostOpts::default()
        },
        HostOpts::default(),
    ]);
    let text = format!(
        "hosts:\n  inner:\n    address: {}\n    jump: {}\n",
        hosts.addr(1),
        hosts.addr(0)
    );
    let inv = hosts.write_yaml("jump.yaml", &text);
    let run = exec(&hosts, &inv, &["--", "hostname"], "");
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(run.lines_of("inner"), [hosts.hostname(1)], "{}", run.all());
    // the jump host's sshd opened the channel to the target
    let wanted = format!("target {} port", hosts.addr(1));
    wait_until(Duration::from_secs(5), "the jump host's log", || {
        hosts.log(0).contains(&wanted)
    });
    assert!(hosts.log(0).contains("direct-tcpip"), "{}", hosts.log(0));

    // `pushrun hosts` shows the route
    let listed = pushrun()
        .args(["hosts", "--hosts"])
        .arg(&inv)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        format!("inner address={} jump={}\n", hosts.addr(1), hosts.addr(0))
    );

    // a bad jump value is an inventory error, with its line
    let bad = hosts.write_yaml("badjump.yaml", "hosts:\n  x:\n    jump: 'a b'\n");
    let run = exec(&hosts, &bad, &["--", "true"], "");
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr.contains("badjump.yaml:3: bad jump host"),
        "{}",
        run.all()
    );
}

#[test]
fn an_unknown_host_key_is_refused_with_its_fingerprint_and_the_way_to_accept_it() {
    let hosts = TestHosts::start(1);
    let cfg = config_with_known_hosts(&hosts, "empty", "", "").0;
    let out = pushrun()
        .args(["exec", "-w", &hosts.addr(0), "--ssh-config"])
        .arg(&cfg)
        .args(["--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let fingerprint = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(hosts.dir().join("host_ed25519.pub"))
        .output()
        .unwrap();
    let fingerprint = String::from_utf8_lossy(&fingerprint.stdout);
    let fingerprint = fingerprint.split_whitespace().nth(1).unwrap();
    assert!(
        stderr.contains(&format!("unknown host key ssh-ed25519 {fingerprint}"))
            && stderr.contains("--host-key-checking accept-new"),
        "{stderr}"
    );
    // and accept-new does accept it
    let out = pushrun()
        .args([
            "exec",
            "-w",
            &hosts.addr(0),
            "--host-key-checking",
            "accept-new",
            "--ssh-config",
        ])
        .arg(&cfg)
        .args(["--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let known = std::fs::read_to_string(hosts.dir().join("empty.known_hosts")).unwrap();
    assert!(known.contains(&hosts.addr(0)), "{known}");
}

#[test]
fn a_changed_host_key_is_always_refused() {
    let hosts = TestHosts::start(1);
    let other = hosts.dir().join("other_key");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-f")
        .arg(&other)
        .status()
        .unwrap();
    assert!(made.success());
    let key = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let known = format!("[{}]:{} {key}", hosts.addr(0), HOST_PORT);
    // even when ssh_config says not to check
    for (name, extra, flag) in [
        ("strict", "", None),
        ("accept", "", Some("accept-new")),
        ("lax", "  StrictHostKeyChecking no\n", None),
    ] {
        let (cfg, _) = config_with_known_hosts(&hosts, name, &known, extra);
        let mut cmd = pushrun();
        cmd.args(["exec", "-w", &hosts.addr(0), "--ssh-config"])
            .arg(&cfg);
        if let Some(flag) = flag {
            cmd.args(["--host-key-checking", flag]);
        }
        let out = cmd
            .args(["--", "echo ran"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(3), "{name}: {stdout}{stderr}");
        assert!(!stdout.contains("ran"), "{name}: {stdout}");
        assert!(
            stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
                && stderr.contains("key sent: ED25519 SHA256:"),
            "{name}: {stderr}"
        );
    }
}

/// A payload run through a PTY (sudo's requiretty, `pty: auto`) on hosts
/// whose login shell is dash or csh: the script reaches the host over the
/// terminal, not in the command line, so no process between sshd and the
/// payload has a command line of 1 KB or more; the results come back whole.
#[test]
fn a_pty_run_keeps_the_script_out_of_the_command_line_on_dash_and_csh() {
    if skip() {
        return;
    }
    let hosts = TestHosts::start_with(&[
        HostOpts {
            sudo: Sudo::RequireTty,
            login_shell: Some("dash"),
            ..HostOpts::default()
        },
        HostOpts {
            sudo: Sudo::RequireTty,
            login_shell: Some("csh"),
            ..HostOpts::default()
        },
    ]);
    let input = format!("{}\n", hosts.test_password());
    let inv = inventory(
        &hosts,
        "ptyrun.yaml",
        &[
            ("dash", 0, &["become: true", "pty: auto"]),
            ("csh", 1, &["become: true", "pty: auto"]),
        ],
    );
    // every process from the payload up to sshd: the longest command line,
    // and whether the bootstrap line (it names the frame marker) was among them
    let (payload, results) = payload_and_results(
        &hosts,
        "#!/bin/sh
max=0 boot=no p=$$
while [ \"$p\" -gt 1 ]; do
    case $(cat /proc/$p/comm) in sshd*) break ;; esac
    n=$(wc -c < /proc/$p/cmdline)
    [ \"$n\" -gt \"$max\" ] && max=$n
    grep -q pushrun-frame-start /proc/$p/cmdline && boot=yes
    p=$(awk '{ print $4 }' /proc/$p/stat)
done
echo \"longest $max boot $boot\"
id -un > \"$PUSHRUN_OUT/who\"
printf 'a\\000b' > \"$PUSHRUN_OUT/bin\"
",
    );
    let run = exec(
        &hosts,
        &inv,
        &["-K", "--payload", &payload, "--results", &results],
        &input,
    );
    assert_eq!(run.code, 0, "{}", run.all());
    for name in ["dash", "csh"] {
        let lines = run.lines_of(name);
        assert_eq!(lines.len(), 1, "{name}: {}", run.all());
        let (longest, boot) = lines[0]
            .strip_prefix("longest ")
            .and_then(|l| l.split_once(" boot "))
            .unwrap_or_else(|| panic!("{name}: {}", run.all()));
        assert_eq!(boot, "yes", "{name}: {}", run.all());
        let longest: usize = longest.parse().unwrap();
        assert!(longest < 1024, "{name}: {longest} bytes\n{}", run.all());
        let out = Path::new(&results).join("latest").join(name).join("out");
        assert_eq!(std::fs::read_to_string(out.join("who")).unwrap(), "root\n");
        assert_eq!(std::fs::read(out.join("bin")).unwrap(), b"a\0b");
    }

    // a command through the PTY: sudo's command line is the short fixed one too
    let walk = "sh -c 'max=0 boot=no p=$$; while [ \"$p\" -gt 1 ]; do \
        case $(cat /proc/$p/comm) in sshd*) break ;; esac; n=$(wc -c < /proc/$p/cmdline); \
        [ \"$n\" -gt \"$max\" ] && max=$n; \
        grep -q pushrun-frame-start /proc/$p/cmdline && boot=yes; \
        p=$(awk \"{ print \\$4 }\" /proc/$p/stat); done; echo \"longest $max boot $boot\"'";
    let run = exec(&hosts, &inv, &["-K", "--", walk], &input);
    assert_eq!(run.code, 0, "{}", run.all());
    for name in ["dash", "csh"] {
        let lines = run.lines_of(name);
        let line = lines
            .first()
            .unwrap_or_else(|| panic!("{name}: {}", run.all()));
        let (longest, boot) = line
            .strip_prefix("longest ")
            .and_then(|l| l.split_once(" boot "))
            .unwrap_or_else(|| panic!("{name}: {}", run.all()));
        assert_eq!(boot, "yes", "{name}: {}", run.all());
        let longest: usize = longest.parse().unwrap();
        assert!(longest < 1024, "{name}: {longest} bytes\n{}", run.all());
    }
}
