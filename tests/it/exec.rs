//! `pushrun exec` against real sshd hosts on loopback.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    BlackHole, HostOpts, TestHosts, common_fold, config_with_known_hosts, exec, lines_of,
    processes_with, pushrun, to_run, unused_addr, wait_until,
};

/// The control dirs of pushrun `pid`, wherever pushrun puts them (a tmpfs
/// /dev/shm, else /tmp; the tests set no `TMPDIR` or `XDG_RUNTIME_DIR`).
fn control_dirs_of(pid: u32) -> Vec<String> {
    ["/dev/shm", "/tmp"]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|d| d.flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("pushrun-{pid}-")))
        .collect()
}

#[test]
fn runs_on_every_host_and_prefixes_each_line_with_the_host() {
    let hosts = TestHosts::start(3);
    let child = pushrun()
        .args(["exec", "--hosts"])
        .arg(hosts.hosts_yaml())
        .arg("--ssh-config")
        .arg(hosts.ssh_config())
        .args([
            "--",
            "echo hello; hostname; echo oops >&2; printf 'no newline'",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let run = to_run(child.wait_with_output().unwrap());
    assert_eq!(run.code, 0, "{}", run.stderr);
    for i in 0..3 {
        let addr = hosts.addr(i);
        let lines = lines_of(&run.stdout, &addr);
        assert_eq!(
            lines,
            vec!["hello", hosts.hostname(i).as_str(), "no newline"],
            "{}",
            run.stdout
        );
        assert!(
            run.stderr.contains(&format!("{addr}! oops")),
            "{}",
            run.stderr
        );
    }
    assert!(run.stderr.contains("3 hosts in"), "{}", run.stderr);
    assert!(run.stderr.contains("3 ok"), "{}", run.stderr);
    assert!(control_dirs_of(pid).is_empty(), "control dir left behind");
}

#[test]
fn a_failing_command_gives_exit_1_and_names_the_host_with_its_code() {
    let hosts = TestHosts::start(2);
    let yaml = format!(
        "hosts:\n  {}:\n    vars: {{CODE: 0}}\n  {}:\n    vars: {{CODE: 7}}\n",
        hosts.addr(0),
        hosts.addr(1)
    );
    let inv = hosts.write_yaml("codes.yaml", &yaml);
    let run = exec(&hosts, &inv, &["--", "echo code=$CODE; exit $CODE"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(lines_of(&run.stdout, &hosts.addr(1)), vec!["code=7"]);
    assert!(
        run.stderr
            .contains(&format!("failed: {}: exit 7", hosts.addr(1))),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("1 ok, 1 failed"), "{}", run.stderr);
}

#[test]
fn unreachable_and_hung_hosts_are_bounded_by_the_connect_timeout() {
    let hosts = TestHosts::start(1);
    let hole = BlackHole::start();
    let down = unused_addr();
    let yaml = format!(
        "hosts:\n  {}:\n  {}:\n  hole:\n    address: {}\n    port: {}\n",
        hosts.addr(0),
        down,
        hole.addr(),
        hole.port()
    );
    let inv = hosts.write_yaml("bad.yaml", &yaml);
    let started = Instant::now();
    let run = exec(&hosts, &inv, &["--connect-timeout", "2", "--", "echo up"]);
    // Generous: the point is that it ends at all, not how fast.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert_eq!(lines_of(&run.stdout, &hosts.addr(0)), vec!["up"]);
    assert!(
        run.stderr
            .contains(&format!("unreachable: {down}: connection refused")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("unreachable: hole: connection timed out"),
        "{}",
        run.stderr
    );
    assert!(hole.accepted() >= 1, "the black hole was never contacted");
}

#[test]
fn a_command_timeout_kills_every_process_it_started_on_the_host() {
    let hosts = TestHosts::start(1);
    let run = exec(
        &hosts,
        &hosts.hosts_yaml(),
        &[
            "--timeout",
            "1",
            "--",
            "sleep 31337 & echo started; sleep 31338",
        ],
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert_eq!(lines_of(&run.stdout, &hosts.addr(0)), vec!["started"]);
    assert!(run.stderr.contains("timed out"), "{}", run.stderr);
    assert!(
        run.stderr.contains("killed after the 1s timeout"),
        "{}",
        run.stderr
    );
    wait_until(
        Duration::from_secs(8),
        "the command's processes to go",
        || processes_with("sleep 3133").is_empty(),
    );
}

#[test]
fn a_server_that_refuses_ptys_fails_with_pty_and_falls_back_with_pty_auto() {
    let hosts = TestHosts::start_with(&[
        HostOpts::default(),
        HostOpts {
            pty_denied: true,
            ..HostOpts::default()
        },
    ]);
    let (ok, denied) = (hosts.addr(0), hosts.addr(1));

    let run = exec(
        &hosts,
        &hosts.hosts_yaml(),
        &["--pty", "--", "tty >/dev/null && echo has-tty"],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(lines_of(&run.stdout, &ok), vec!["has-tty"]);
    assert!(
        lines_of(&run.stdout, &denied).is_empty(),
        "ran without a pty: {}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains(&format!("failed: {denied}: the server refused a PTY"))
            && run.stderr.contains("without --pty"),
        "{}",
        run.stderr
    );

    let run = exec(
        &hosts,
        &hosts.hosts_yaml(),
        &[
            "--pty",
            "auto",
            "--",
            "tty >/dev/null && echo has-tty || echo no-tty",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(lines_of(&run.stdout, &ok), vec!["has-tty"]);
    assert_eq!(lines_of(&run.stdout, &denied), vec!["no-tty"]);
    assert!(
        run.stderr.contains(&format!(
            "{denied}: note: the server refused a PTY: ran without one"
        )),
        "{}",
        run.stderr
    );

    let run = exec(&hosts, &hosts.hosts_yaml(), &["--", "echo plain"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(lines_of(&run.stdout, &denied), vec!["plain"]);
}

#[test]
fn a_pty_merges_stderr_into_the_output() {
    let hosts = TestHosts::start(1);
    let run = exec(
        &hosts,
        &hosts.hosts_yaml(),
        &["--pty", "--", "echo to-err >&2"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(lines_of(&run.stdout, &hosts.addr(0)), vec!["to-err"]);
}

#[test]
fn a_mebibyte_of_output_arrives_whole_and_in_order() {
    let hosts = TestHosts::start(1);
    let run = exec(&hosts, &hosts.hosts_yaml(), &["--", "seq 1 200000"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines = lines_of(&run.stdout, &hosts.addr(0));
    assert_eq!(lines.len(), 200000);
    assert!(
        lines
            .iter()
            .enumerate()
            .all(|(i, l)| l.parse::<usize>() == Ok(i + 1)),
        "out of order"
    );
}

#[test]
fn gather_groups_identical_outputs_under_a_folded_host_list() {
    let hosts = TestHosts::start(3);
    let yaml = format!(
        "hosts:\n  {}:\n  {}:\n  {}:\n    vars: {{ODD: 1}}\n",
        hosts.addr(0),
        hosts.addr(1),
        hosts.addr(2)
    );
    let inv = hosts.write_yaml("g.yaml", &yaml);
    let run = exec(
        &hosts,
        &inv,
        &[
            "--gather",
            "--",
            "echo same; [ -z \"$ODD\" ] || { echo odd; exit 2; }",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let pair = common_fold(&hosts.addr(0), &hosts.addr(1));
    let expected = format!(
        "{rule}\n{pair} (2 hosts, exit 0)\n{rule}\nsame\n",
        rule = "-".repeat(format!("{pair} (2 hosts, exit 0)").len().max(16))
    );
    assert!(
        run.stdout.starts_with(&expected),
        "got:\n{}\nexpected start:\n{expected}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains(&format!("{} (1 host, exit 2)", hosts.addr(2))),
        "{}",
        run.stdout
    );
    assert_eq!(run.stdout.matches("same\n").count(), 2, "{}", run.stdout);
}

#[test]
fn json_events_keep_non_utf8_bytes_exact_and_end_with_a_summary() {
    use base64::Engine as _;
    let hosts = TestHosts::start(1);
    let run = exec(
        &hosts,
        &hosts.hosts_yaml(),
        &["--json", "--", "printf 'ok\\n\\377\\376\\n'; printf tail"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let events: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let outputs: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["event"] == "output").collect();
    assert_eq!(outputs.len(), 3, "{}", run.stdout);
    assert_eq!(outputs[0]["text"], "ok");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(outputs[1]["data_b64"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw, vec![0xff, 0xfe]);
    assert_eq!(outputs[2]["text"], "tail");
    assert_eq!(outputs[2]["partial"], true);
    let end = events.iter().find(|e| e["event"] == "end").unwrap();
    assert_eq!(end["status"], "ok");
    assert_eq!(end["exit_code"], 0);
    assert_eq!(end["host"], hosts.addr(0).as_str());
    let last = events.last().unwrap();
    assert_eq!(last["event"], "summary");
    assert_eq!(last["ok"], 1);
    assert_eq!(last["exit_status"], 0);
}

#[test]
fn non_utf8_output_is_escaped_on_the_terminal() {
    let hosts = TestHosts::start(1);
    let run = exec(&hosts, &hosts.hosts_yaml(), &["--", "printf 'a\\377b\\n'"]);
    assert_eq!(lines_of(&run.stdout, &hosts.addr(0)), vec!["a\\xffb"]);
}

#[test]
fn a_broken_inventory_is_one_line_naming_file_and_line_and_exit_2() {
    let hosts = TestHosts::start(1);
    let inv = hosts.write_yaml(
        "broken.yaml",
        &format!("hosts:\n  {}:\n    usr: root\n", hosts.addr(0)),
    );
    let run = exec(&hosts, &inv, &["--", "true"]);
    assert_eq!(run.code, 2);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("broken.yaml:3:") && run.stderr.contains("unknown key \"usr\""),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
}

#[test]
fn limit_and_w_select_hosts() {
    let hosts = TestHosts::start(3);
    let run = exec(
        &hosts,
        &hosts.hosts_yaml(),
        &["--limit", &format!("!{}", hosts.addr(1)), "--", "echo hi"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(lines_of(&run.stdout, &hosts.addr(0)), vec!["hi"]);
    assert!(lines_of(&run.stdout, &hosts.addr(1)).is_empty());
    assert_eq!(lines_of(&run.stdout, &hosts.addr(2)), vec!["hi"]);

    let out = pushrun()
        .args(["exec", "-w", &hosts.addr(2), "--ssh-config"])
        .arg(hosts.ssh_config())
        .args(["--", "echo adhoc"])
        .output()
        .unwrap();
    let run = to_run(out);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, format!("{}: adhoc\n", hosts.addr(2)));

    let run = exec(
        &hosts,
        &hosts.hosts_yaml(),
        &["--limit", "127.0.0.99", "--", "true"],
    );
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("unknown host 127.0.0.99"),
        "{}",
        run.stderr
    );
}

#[test]
fn unknown_host_keys_fail_under_strict_checking_and_accept_new_stays_quiet() {
    let hosts = TestHosts::start(1);
    let (cfg, known) = config_with_known_hosts(&hosts, "unknown", "", "");
    let run_with = |mode: &str| {
        to_run(
            pushrun()
                .args(["exec", "--hosts"])
                .arg(hosts.hosts_yaml())
                .arg("--ssh-config")
                .arg(&cfg)
                .args(["--host-key-checking", mode, "--", "echo in"])
                .output()
                .unwrap(),
        )
    };
    let run = run_with("strict");
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("unknown host key ssh-ed25519 SHA256:"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("--host-key-checking accept-new"),
        "{}",
        run.stderr
    );

    let run = run_with("accept-new");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, format!("{}: in\n", hosts.addr(0)));
    assert!(
        !run.stderr.contains("Permanently added"),
        "ssh chatter leaked: {}",
        run.stderr
    );
    assert!(
        std::fs::read_to_string(&known)
            .unwrap()
            .contains(&hosts.addr(0)),
        "key not recorded"
    );
}

fn wait_for_line(child: &mut Child, want: &str) {
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "pushrun ended before printing {want:?}");
        if line.contains(want) {
            break;
        }
    }
    // Keep draining so pushrun never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
}

#[test]
fn ctrl_c_stops_remote_commands_and_removes_the_control_dir() {
    let hosts = TestHosts::start(2);
    let mut child = pushrun()
        .args(["exec", "--hosts"])
        .arg(hosts.hosts_yaml())
        .arg("--ssh-config")
        .arg(hosts.ssh_config())
        .args(["--", "echo started; sleep 41414"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for_line(&mut child, "started");
    assert!(
        !processes_with("sleep 41414").is_empty(),
        "the remote command is not running"
    );
    // the check below is only worth something if it looks where pushrun is
    assert!(
        !control_dirs_of(pid).is_empty(),
        "no control dir of the running pushrun found"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(stderr.contains("2 cancelled"), "{stderr}");
    wait_until(
        Duration::from_secs(8),
        "the command's processes to go",
        || processes_with("sleep 41414").is_empty(),
    );
    assert!(control_dirs_of(pid).is_empty(), "control dir left behind");
}

#[test]
fn sigterm_and_sighup_stop_the_run_like_ctrl_c() {
    let hosts = TestHosts::start(2);
    for (signal, marker) in [
        (libc::SIGTERM, "sleep 41415"),
        (libc::SIGHUP, "sleep 41416"),
    ] {
        let mut child = pushrun()
            .args(["exec", "--hosts"])
            .arg(hosts.hosts_yaml())
            .arg("--ssh-config")
            .arg(hosts.ssh_config())
            .args(["--", &format!("echo started; {marker}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        wait_for_line(&mut child, "started");
        assert!(
            !processes_with(marker).is_empty(),
            "the remote command is not running"
        );
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, signal) };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "signal {signal}: {stderr}");
        assert!(stderr.contains("interrupted"), "signal {signal}: {stderr}");
        assert!(stderr.contains("2 cancelled"), "signal {signal}: {stderr}");
        wait_until(
            Duration::from_secs(8),
            "the command's processes to go",
            || processes_with(marker).is_empty(),
        );
        assert!(control_dirs_of(pid).is_empty(), "control dir left behind");
    }
}

#[test]
fn dash_l_sets_the_login_user_and_a_refused_login_is_an_authentication_failure() {
    let hosts = TestHosts::start(1);
    let run = exec(
        &hosts,
        &hosts.hosts_yaml(),
        &["-l", "pushrun-no-such-user", "--", "true"],
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "unreachable: {}: authentication failed: ",
            hosts.addr(0)
        )) && run.stderr.contains("Permission denied"),
        "{}",
        run.stderr
    );
    // The inventory's own user wins over -l.
    let me = String::from_utf8(
        std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let yaml = format!("hosts:\n  {}:\n    user: {}\n", hosts.addr(0), me.trim());
    let inv = hosts.write_yaml("user.yaml", &yaml);
    let run = exec(
        &hosts,
        &inv,
        &["-l", "pushrun-no-such-user", "--", "echo in"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
}
