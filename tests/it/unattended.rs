//! Unattended runs: --converged-timeout, --repeat, the results tunnel and
//! --watch, against real sshd hosts on loopback.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    HOST_PORT, HostOpts, Run, TestHosts, exec_command, host_summary, late_forwarder, lines_of,
    payload, processes_with, summary, to_run, unused_addr, wait_until,
};
use serde_json::Value;

/// Where `exec` keeps results.
fn results(hosts: &TestHosts) -> PathBuf {
    hosts.dir().join("results")
}

/// `pushrun exec --hosts INVENTORY --results results(hosts) ARGS`, and how long it took.
fn exec(hosts: &TestHosts, inventory: &Path, args: &[&str]) -> (Run, Duration) {
    let started = Instant::now();
    let dir = results(hosts);
    let mut all = vec!["--results", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = exec_command(inventory, &hosts.ssh_config(), &all)
        .output()
        .expect("run pushrun");
    (to_run(out), started.elapsed())
}

#[test]
fn a_payload_that_goes_quiet_is_stopped_at_convergence_and_its_process_is_gone() {
    let hosts = TestHosts::start(2);
    let marker = format!("quiet-{}", std::process::id());
    // prints for 3 s, then sleeps on (marked, to find it on the host)
    let dir = payload(
        hosts.dir(),
        "quiet",
        &format!(
            "#!/bin/sh\nfor i in 1 2 3; do echo tick $i; sleep 1; done\necho tick 4\n\
             echo partial > \"$PUSHRUN_OUT/partial\"\nexec sh -c 'sleep 1000' {marker}\n"
        ),
    );
    let results = hosts.dir().join("results");
    let args = [
        "--payload",
        dir.to_str().unwrap(),
        "--converged-timeout",
        "2",
    ];
    let (run, took) = exec(&hosts, &hosts.hosts_yaml(), &args);
    assert_eq!(run.code, 4, "{}", run.all());
    for addr in hosts.addrs() {
        assert_eq!(
            lines_of(&run.stdout, &addr),
            ["tick 1", "tick 2", "tick 3", "tick 4"],
            "{}",
            run.all()
        );
    }
    // quiet for 2 s after the last tick (3 s in): not before
    assert!(
        took >= Duration::from_millis(4500),
        "ended after {:?}",
        took
    );
    assert!(
        run.stderr.contains("2 stopped at convergence"),
        "{}",
        run.all()
    );
    let s = summary(&results);
    for addr in hosts.addrs() {
        assert_eq!(host_summary(&s, &addr)["status"], "stopped", "{s:#}");
        let partial = results.join("latest").join(&addr).join("out/partial");
        assert_eq!(std::fs::read_to_string(partial).unwrap(), "partial\n");
    }
    assert_eq!(s["exit_status"], 4);
    let log = std::fs::read_to_string(results.join("latest/run.log")).unwrap();
    assert!(
        log.contains("tick 4") && log.contains("stopped at convergence"),
        "{log}"
    );
    wait_until(
        Duration::from_secs(5),
        "the payload's processes to go",
        || processes_with(&marker).is_empty(),
    );
    for i in 0..hosts.len() {
        let left = hosts.ssh(i, "ls /tmp/.pushrun-*/runs/ 2>/dev/null");
        assert_eq!(
            String::from_utf8_lossy(&left.stdout),
            "",
            "host {i} kept a run dir"
        );
    }
}

#[test]
fn a_payload_that_never_goes_quiet_runs_until_its_timeout() {
    let hosts = TestHosts::start(1);
    let dir = payload(
        hosts.dir(),
        "chatty",
        "#!/bin/sh\nwhile :; do echo still here; sleep 0.3; done\n",
    );
    let results = results(&hosts);
    let (run, took) = exec(
        &hosts,
        &hosts.hosts_yaml(),
        &[
            "--payload",
            dir.to_str().unwrap(),
            "--converged-timeout",
            "1.5",
            "--timeout",
            "4",
        ],
    );
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(took >= Duration::from_secs(4), "ended after {:?}", took);
    assert!(run.stderr.contains("1 timed out"), "{}", run.all());
    let s = summary(&results);
    assert_eq!(host_summary(&s, &hosts.addr(0))["status"], "timed_out");
}

#[test]
fn a_host_down_at_the_start_is_tried_again_and_runs_once_it_is_up() {
    let hosts = TestHosts::start(1);
    let late = unused_addr();
    let port = HOST_PORT;
    // the late address leads to host 0, whose key known_hosts has under its own name
    let text = format!(
        "hosts:\n  late:\n    address: {late}\n    ssh_options: [\"HostKeyAlias=[{}]:{port}\"]\n",
        hosts.addr(0)
    );
    let inv = hosts.write_yaml("late.yaml", &text);
    let forwarder = late_forwarder(
        format!("{late}:{port}"),
        format!("{}:{port}", hosts.addr(0)),
        Duration::from_secs(3),
    );
    let (run, _) = exec(
        &hosts,
        &inv,
        &["--converged-timeout", "5", "--", "hostname"],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(
        lines_of(&run.stdout, "late"),
        [hosts.hostname(0)],
        "{}",
        run.all()
    );
    assert!(
        run.stderr
            .contains("late~ connection refused: trying again in 1s"),
        "{}",
        run.all()
    );
    drop(forwarder);
}

#[test]
fn a_host_never_reached_is_named_so_when_the_run_converges() {
    let hosts = TestHosts::start(1);
    let text = format!(
        "hosts:\n  up: {{address: {}}}\n  down: {{address: {}}}\n",
        hosts.addr(0),
        unused_addr()
    );
    let inv = hosts.write_yaml("down.yaml", &text);
    let (run, _) = exec(&hosts, &inv, &["--converged-timeout", "2.5", "--", "true"]);
    assert_eq!(run.code, 3, "{}", run.all());
    // tries at 0, 1, 3 s (then 7 s: after convergence)
    assert!(
        run.stderr
            .contains("unreachable: down: never reached (3 tries): connection refused"),
        "{}",
        run.all()
    );
}

#[test]
fn repeat_converges_once_the_output_settles() {
    let hosts = TestHosts::start(2);
    let counter = format!("/tmp/pushrun-repeat-{}", std::process::id());
    let dir = payload(
        hosts.dir(),
        "settle",
        &format!(
            "#!/bin/sh\nn=$(cat {counter} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {counter}\n\
             [ $n -gt 3 ] && n=3\necho state $n\necho $n > \"$PUSHRUN_OUT/state\"\n"
        ),
    );
    let results = results(&hosts);
    let (run, _) = exec(
        &hosts,
        &hosts.hosts_yaml(),
        &[
            "--payload",
            dir.to_str().unwrap(),
            "--repeat",
            "0.5",
            "--converged-timeout",
            "2",
            "--json",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    for addr in hosts.addrs() {
        let runs: Vec<Value> = run
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["event"] == "repeated" && e["host"] == addr.as_str())
            .collect();
        let changed: Vec<bool> = runs
            .iter()
            .map(|e| e["changed"].as_bool().unwrap())
            .collect();
        // three changing runs, then the same result until 2 s of quiet
        assert!(changed.len() >= 5, "{addr}: {changed:?}");
        assert_eq!(&changed[..3], [true, true, true], "{addr}");
        assert!(changed[3..].iter().all(|c| !c), "{addr}: {changed:?}");
        let state = results.join("latest").join(&addr).join("out/state");
        assert_eq!(std::fs::read_to_string(state).unwrap(), "3\n");
    }
}

const RECORDS: &str = r#"#!/bin/sh
# one connection, three records; then another connection, two more
perl -MIO::Socket::UNIX -e '$s = IO::Socket::UNIX->new(Peer => $ENV{PUSHRUN_TUNNEL}) or die "tunnel: $!\n"; for (1..3) { print $s "{\"n\":$_}\n" }'
perl -MIO::Socket::UNIX -e '$s = IO::Socket::UNIX->new(Peer => $ENV{PUSHRUN_TUNNEL}) or die "tunnel: $!\n"; for (4..5) { print $s "{\"n\":$_}\n" }'
echo "tunnel=${PUSHRUN_TUNNEL:-unset}"
"#;

#[test]
fn tunnel_records_arrive_in_order_before_the_end_and_are_saved() {
    let hosts = TestHosts::start(2);
    let dir = payload(hosts.dir(), "records", RECORDS);
    let results = results(&hosts);
    let (run, _) = exec(
        &hosts,
        &hosts.hosts_yaml(),
        &["--payload", dir.to_str().unwrap(), "--json"],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    for addr in hosts.addrs() {
        let events: Vec<Value> = run
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["host"] == addr.as_str())
            .collect();
        let records: Vec<i64> = events
            .iter()
            .filter(|e| e["event"] == "record")
            .map(|e| e["record"]["n"].as_i64().unwrap())
            .collect();
        assert_eq!(records, [1, 2, 3, 4, 5], "{addr}: {}", run.all());
        let last_record = events.iter().rposition(|e| e["event"] == "record").unwrap();
        let end = events.iter().position(|e| e["event"] == "end").unwrap();
        assert!(last_record < end, "{addr}: a record came after the end");
        let saved =
            std::fs::read_to_string(results.join("latest").join(&addr).join("records.jsonl"))
                .unwrap();
        assert_eq!(
            saved,
            "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n{\"n\":4}\n{\"n\":5}\n"
        );
    }
}

#[test]
fn a_server_refusing_forwarding_gives_a_note_and_a_good_run() {
    let hosts = TestHosts::start_with(&[HostOpts {
        no_forwarding: true,
        ..HostOpts::default()
    }]);
    let dir = payload(hosts.dir(), "records", RECORDS);
    let (run, _) = exec(
        &hosts,
        &hosts.hosts_yaml(),
        &["--payload", dir.to_str().unwrap()],
    );
    // the perl lines fail (no tunnel); the payload goes on and says so
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(
        lines_of(&run.stdout, &hosts.addr(0)),
        ["tunnel=unset"],
        "{}",
        run.all()
    );
    assert!(
        run.stderr
            .contains("note: no tunnel: the server refused to forward a socket"),
        "{}",
        run.all()
    );
}

/// Reads pushrun's JSON events as they come, until `pred` holds for one.
fn wait_for_event(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    for line in lines.by_ref() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if pred(&v) {
            return v;
        }
    }
    panic!("pushrun ended before the event came");
}

#[test]
fn watch_sends_only_the_changed_file_and_runs_again() {
    let hosts = TestHosts::start(2);
    let dir = payload(
        hosts.dir(),
        "watched",
        "#!/bin/sh\necho \"v=$(cat \"$PUSHRUN_PAYLOAD/data\")\"\n",
    );
    std::fs::write(dir.join("data"), "one\n").unwrap();
    for i in 0..20 {
        std::fs::write(dir.join(format!("file{i}")), format!("filler {i}\n")).unwrap();
    }
    let results = hosts.dir().join("results");
    let mut child: Child = exec_command(
        &hosts.hosts_yaml(),
        &hosts.ssh_config(),
        &[
            "--payload",
            dir.to_str().unwrap(),
            "--watch",
            "--results",
            results.to_str().unwrap(),
            "--converged-timeout",
            "3",
            "--json",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in hosts.addrs() {
        wait_for_event(&mut lines, |e| e["event"] == "repeated" && e["run"] == 1);
    }
    std::fs::write(dir.join("data"), "two\n").unwrap();
    let mut outputs = Vec::new();
    for line in lines {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["event"] == "output" {
            outputs.push(v["text"].as_str().unwrap().to_string());
        }
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(outputs, ["v=two", "v=two"], "{stderr}");
    let s = summary(&results);
    for addr in hosts.addrs() {
        let h = host_summary(&s, &addr);
        assert_eq!(h["files_sent"], 1, "{h:#}");
        assert_eq!(h["notes"][0], "2 runs", "{h:#}");
    }
}
