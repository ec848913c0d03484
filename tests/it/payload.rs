//! Payload runs end to end: staging into the host's cache, repairs, results
//! coming back, and nothing left behind — against real sshd hosts.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use crate::common::{
    HostOpts, Run, TestHosts, host_summary, is_root, make_payload, noise, processes_with, pushrun,
    summary, wait_until,
};
use serde_json::Value;

const RUN_SCRIPT: &[u8] = b"#!/bin/sh
echo \"hello from $PUSHRUN_HOST\"
echo \"args: $*\"
printf 'spaced' > \"$PUSHRUN_OUT/with space.txt\"
printf 'unicode' > \"$PUSHRUN_OUT/\xc3\xbcn\xc3\xafc\xc3\xb6d\xc3\xa9.txt\"
printf '\\000\\001\\377binary' > \"$PUSHRUN_OUT/bin.dat\"
mkdir -p \"$PUSHRUN_OUT/sub\" && cat \"$PUSHRUN_PAYLOAD/lib/a.txt\" > \"$PUSHRUN_OUT/sub/a.txt\"
exit ${EXIT_WITH:-0}
";

/// An archive over 64 MiB is sent to each host from its file, not from
/// memory: every host still gets it whole, verified and cached.
#[test]
fn a_payload_over_the_in_memory_limit_is_sent_from_its_file_to_every_host() {
    let hosts = TestHosts::start(2);
    let scratch = Scratch::new();
    let (pl, res) = (scratch.path("pl"), scratch.path("res"));
    let big = noise(65 << 20, 41);
    make_payload(
        &pl,
        &[("run", RUN_SCRIPT, true), ("lib/big.bin", &big, false)],
    );
    let run = exec(&hosts, &["--payload", s(&pl), "--results", s(&res)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let digest = summary(&res)["job"]["digest"].as_str().unwrap().to_string();
    let want = sha256_hex(&big);
    for i in 0..2 {
        let h = host_summary(&summary(&res), &hosts.addr(i)).clone();
        assert_eq!(h["files_sent"], 2, "{h}");
        assert!(h["bytes_sent"].as_u64().unwrap() > 65 << 20, "{h}");
        let sum = on_host(
            &hosts,
            i,
            &format!("cd {BASE}/cache/{digest} && sha256sum lib/big.bin"),
        );
        assert!(sum.starts_with(&want), "host {i}: {sum}");
    }
}

fn standard_payload(dir: &Path) {
    make_payload(
        dir,
        &[
            ("run", RUN_SCRIPT, true),
            ("lib/a.txt", b"alpha\n", false),
            ("lib/b.bin", &noise(4096, 7), false),
            ("lib/tool.sh", b"#!/bin/sh\necho tool\n", true),
        ],
    );
}

fn exec(hosts: &TestHosts, args: &[&str]) -> Run {
    common::exec(hosts, &hosts.hosts_yaml(), args)
}

fn spawn(hosts: &TestHosts, args: &[&str]) -> Child {
    common::spawn_exec(hosts, &hosts.hosts_yaml(), args)
}

/// Runs `cmd` on host `i` with plain ssh, returning its trimmed stdout.
fn on_host(hosts: &TestHosts, i: usize, cmd: &str) -> String {
    let out = hosts.ssh(i, cmd);
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const BASE: &str = "/tmp/.pushrun-$(id -un)";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn a_cold_push_then_a_warm_run_that_sends_no_payload_and_results_come_back_byte_exact() {
    let hosts = TestHosts::start(2);
    let scratch = Scratch::new();
    let (pl, res) = (scratch.path("pl"), scratch.path("res"));
    standard_payload(&pl);

    let run = exec(
        &hosts,
        &[
            "--payload",
            s(&pl),
            "--results",
            s(&res),
            "--",
            "one",
            "two",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let sum = summary(&res);
    for i in 0..2 {
        let addr = hosts.addr(i);
        let h = host_summary(&sum, &addr);
        assert_eq!(h["status"], "ok");
        assert_eq!(h["cache_hit"], false);
        assert_eq!(h["files_sent"], 4);
        assert!(h["bytes_sent"].as_u64().unwrap() > 4096, "{h}");
        let dir = res.join("latest").join(&addr);
        assert_eq!(
            std::fs::read_to_string(dir.join("stdout")).unwrap(),
            format!("hello from {addr}\nargs: one two\n")
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("exit_status")).unwrap(),
            "0\n"
        );
        assert_eq!(
            std::fs::read(dir.join("out/with space.txt")).unwrap(),
            b"spaced"
        );
        assert_eq!(
            std::fs::read(dir.join("out/ünïcödé.txt")).unwrap(),
            b"unicode"
        );
        assert_eq!(
            std::fs::read(dir.join("out/bin.dat")).unwrap(),
            b"\x00\x01\xffbinary"
        );
        assert_eq!(
            std::fs::read(dir.join("out/sub/a.txt")).unwrap(),
            b"alpha\n"
        );
        assert_eq!(
            on_host(&hosts, i, &format!("ls -A {BASE}/runs | wc -l")),
            "0",
            "run dir left on the host"
        );
    }
    assert!(
        run.stdout
            .contains(&format!("{}: hello from {}", hosts.addr(0), hosts.addr(0))),
        "{}",
        run.stdout
    );

    let run = exec(&hosts, &["--payload", s(&pl), "--results", s(&res)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let sum = summary(&res);
    for addr in hosts.addrs() {
        let h = host_summary(&sum, &addr);
        assert_eq!(h["cache_hit"], true, "{h}");
        assert_eq!(h["files_sent"], 0);
        // Only the manifest went over: well under the payload's 4 KiB of noise.
        assert!(h["bytes_sent"].as_u64().unwrap() < 1024, "{h}");
    }
}

#[test]
fn a_damaged_cache_is_caught_file_by_file_and_only_the_bad_files_are_sent() {
    let hosts = TestHosts::start(1);
    let scratch = Scratch::new();
    let (pl, res) = (scratch.path("pl"), scratch.path("res"));
    standard_payload(&pl);
    let run = exec(&hosts, &["--payload", s(&pl), "--results", s(&res)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let digest = summary(&res)["job"]["digest"].as_str().unwrap().to_string();
    let cache = format!("{BASE}/cache/{digest}");

    // A tmp cleaner's work: one file deleted; one changed in place keeping
    // its size and mtime; an exec bit lost.
    on_host(
        &hosts,
        0,
        &format!(
            "cd {cache} && rm lib/a.txt && cp -p lib/b.bin /tmp/keep && printf 'X' | dd of=lib/b.bin bs=1 seek=100 conv=notrunc 2>/dev/null \
             && touch -r /tmp/keep lib/b.bin && rm /tmp/keep && chmod -x lib/tool.sh"
        ),
    );
    let run = exec(&hosts, &["--payload", s(&pl), "--results", s(&res)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let h = host_summary(&summary(&res), &hosts.addr(0)).clone();
    assert_eq!(h["cache_hit"], false);
    assert_eq!(h["files_sent"], 3, "{h}");
    let sums = on_host(
        &hosts,
        0,
        &format!("cd {cache} && sha256sum lib/a.txt lib/b.bin && test -x lib/tool.sh && echo x-ok"),
    );
    assert!(sums.ends_with("x-ok"), "{sums}");
    let local_b = sha256_hex(&std::fs::read(pl.join("lib/b.bin")).unwrap());
    assert!(sums.contains(&local_b), "b.bin not repaired: {sums}");

    // Every file gone, the directories (and anything marker-like) kept.
    on_host(
        &hosts,
        0,
        &format!("cd {cache} && find . -type f -exec rm {{}} + && touch .pushrun-ok"),
    );
    let run = exec(&hosts, &["--payload", s(&pl), "--results", s(&res)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let h = host_summary(&summary(&res), &hosts.addr(0)).clone();
    assert_eq!(h["files_sent"], 4, "{h}");
    assert_eq!(
        std::fs::read(res.join("latest").join(hosts.addr(0)).join("out/sub/a.txt")).unwrap(),
        b"alpha\n"
    );
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_full_remote_tmp_is_an_error_naming_host_and_path_and_leaves_nothing_half_done() {
    if !is_root() {
        eprintln!("skipped: a small /tmp needs root (mount namespaces)");
        return;
    }
    let hosts = TestHosts::start_with(&[HostOpts {
        small_tmp: true,
        ..HostOpts::default()
    }]);
    let scratch = Scratch::new();
    let (pl, res) = (scratch.path("pl"), scratch.path("res"));
    make_payload(
        &pl,
        &[
            ("run", b"#!/bin/sh\necho ran\n", true),
            ("big.bin", &noise(3 << 20, 3), false),
        ],
    );
    let run = exec(&hosts, &["--payload", s(&pl), "--results", s(&res)]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let addr = hosts.addr(0);
    assert!(
        run.stderr.contains(&format!(
            "failed: {addr}: stage: no space left on device under /tmp/.pushrun-"
        )),
        "{}",
        run.stderr
    );
    assert!(
        !run.stdout.contains("ran"),
        "the payload ran without its files"
    );
    let left = on_host(
        &hosts,
        0,
        &format!(
            "ls -A {BASE}/cache {BASE}/runs | grep -c stage || true; ls -A {BASE}/runs | wc -l"
        ),
    );
    let listing = on_host(&hosts, 0, &format!("ls -laR {BASE} 2>&1; df /tmp"));
    assert_eq!(left, "0\n0", "staging or run dirs left behind: {listing}");
    let h = host_summary(&summary(&res), &addr).clone();
    assert_eq!(h["status"], "failed");
}

#[test]
fn a_foreign_owned_or_symlinked_pushrun_dir_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to make a dir owned by someone else");
        return;
    }
    let hosts = TestHosts::start(2);
    let scratch = Scratch::new();
    let (pl, res) = (scratch.path("pl"), scratch.path("res"));
    standard_payload(&pl);
    on_host(
        &hosts,
        0,
        &format!("mkdir -m 700 {BASE} && chown 65534 {BASE}"),
    );
    on_host(
        &hosts,
        1,
        &format!("mkdir -m 700 /tmp/elsewhere && ln -s /tmp/elsewhere {BASE}"),
    );
    let run = exec(&hosts, &["--payload", s(&pl), "--results", s(&res)]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("{}: stage: ", hosts.addr(0)))
            && run.stderr.contains("owned by uid 65534"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!("{}: stage: ", hosts.addr(1)))
            && run.stderr.contains("is a symlink"),
        "{}",
        run.stderr
    );
    assert_eq!(
        on_host(&hosts, 1, "ls -A /tmp/elsewhere | wc -l"),
        "0",
        "wrote through the symlink"
    );
}

#[test]
fn two_runs_at_once_with_the_same_and_a_different_payload_do_not_corrupt_each_other() {
    let hosts = TestHosts::start(2);
    let scratch = Scratch::new();
    let (pl1, pl2) = (scratch.path("pl1"), scratch.path("pl2"));
    standard_payload(&pl1);
    make_payload(
        &pl2,
        &[
            (
                "run",
                b"#!/bin/sh\necho second; cat \"$PUSHRUN_PAYLOAD/data\" | wc -c\n",
                true,
            ),
            ("data", &noise(1 << 20, 9), false),
        ],
    );
    let (r1, r2, r3) = (scratch.path("r1"), scratch.path("r2"), scratch.path("r3"));
    let a = spawn(&hosts, &["--payload", s(&pl1), "--results", s(&r1)]);
    let b = spawn(&hosts, &["--payload", s(&pl1), "--results", s(&r2)]);
    let c = spawn(&hosts, &["--payload", s(&pl2), "--results", s(&r3)]);
    for (child, res) in [(a, &r1), (b, &r2), (c, &r3)] {
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(summary(res)["counts"]["ok"], 2);
    }
    for addr in hosts.addrs() {
        let out = std::fs::read_to_string(r3.join("latest").join(&addr).join("stdout")).unwrap();
        assert_eq!(out, "second\n1048576\n");
    }
    // Both caches are whole: the next runs are pure hits.
    for pl in [&pl1, &pl2] {
        let res = scratch.path("again");
        let run = exec(&hosts, &["--payload", s(pl), "--results", s(&res)]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        for addr in hosts.addrs() {
            assert_eq!(host_summary(&summary(&res), &addr)["cache_hit"], true);
        }
    }
}

/// Stops pushrun with `signal` while the payload runs, on the check's
/// channel: on a cold host (after the upload there) and, with `warm`, on a
/// warm one (the payload was run once before, cut short by a timeout).
fn stop_mid_run(signal: i32, warm: bool) {
    let hosts = TestHosts::start(1);
    let scratch = Scratch::new();
    let (pl, res) = (scratch.path("pl"), scratch.path("res"));
    let marker = format!("sleep 5{}", 2000 + signal);
    let script = format!("#!/bin/sh\n{marker} &\n{marker} &\necho started\nwait\n");
    make_payload(&pl, &[("run", script.as_bytes(), true)]);
    if warm {
        let run = exec(
            &hosts,
            &["--timeout", "1", "--payload", s(&pl), "--results", s(&res)],
        );
        assert_eq!(run.code, 3, "{}", run.all());
        wait_until(
            Duration::from_secs(10),
            "first run's processes gone",
            || processes_with(&marker).is_empty(),
        );
    }
    let mut child = spawn(&hosts, &["--payload", s(&pl), "--results", s(&res)]);
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let mut reader = std::io::BufReader::new(stdout);
    let mut line = String::new();
    while !line.contains("started") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut reader, &mut line).unwrap() > 0,
            "pushrun ended early"
        );
    }
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    // "started" can come before the shell's two forks have become `sleep`: wait for both
    wait_until(
        Duration::from_secs(10),
        "both payload processes running",
        || processes_with(&marker).len() >= 2,
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, signal) };
    let out = child.wait_with_output().unwrap();
    if signal == libc::SIGINT {
        assert_eq!(
            out.status.code(),
            Some(130),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_until(Duration::from_secs(10), "payload processes gone", || {
        processes_with(&marker).is_empty()
    });
    wait_until(Duration::from_secs(10), "run dir removed", || {
        on_host(&hosts, 0, &format!("ls -A {BASE}/runs | wc -l")) == "0"
    });
}

#[test]
fn ctrl_c_during_a_run_leaves_no_process_and_no_run_dir() {
    stop_mid_run(libc::SIGINT, false);
    stop_mid_run(libc::SIGINT, true);
}

#[test]
fn killing_the_initiator_during_a_run_leaves_no_process_and_no_run_dir() {
    stop_mid_run(libc::SIGKILL, false);
    stop_mid_run(libc::SIGKILL, true);
}

#[test]
fn an_upload_killed_midway_is_never_taken_for_valid_and_the_next_run_repairs_it() {
    if !is_root() {
        eprintln!("skipped: watches the host's own /tmp, which needs root");
        return;
    }
    let hosts = TestHosts::start(1);
    let scratch = Scratch::new();
    let (pl, res) = (scratch.path("pl"), scratch.path("res"));
    let mut files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("lib/part{i:02}.bin"), noise(1 << 20, i + 11)))
        .collect();
    files.push((
        "run".into(),
        b"#!/bin/sh\ncat \"$PUSHRUN_PAYLOAD\"/lib/* | wc -c\n".to_vec(),
    ));
    let refs: Vec<(&str, &[u8], bool)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice(), p == "run"))
        .collect();
    make_payload(&pl, &refs);
    let base = hosts.tmp_dir(0).join(".pushrun-root/cache");
    let mut child = spawn(&hosts, &["--payload", s(&pl), "--results", s(&res)]);
    let staging = || {
        std::fs::read_dir(&base)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(".stage-"))
            })
            .unwrap_or(false)
    };
    wait_until(Duration::from_secs(60), "the upload to start", staging);
    child.kill().unwrap();
    let _ = child.wait();
    wait_until(Duration::from_secs(10), "the stage dir to go", || {
        !staging()
    });

    let run = exec(&hosts, &["--payload", s(&pl), "--results", s(&res)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let h = host_summary(&summary(&res), &hosts.addr(0)).clone();
    assert_eq!(h["cache_hit"], false, "{h}");
    assert_eq!(
        std::fs::read_to_string(res.join("latest").join(hosts.addr(0)).join("stdout")).unwrap(),
        format!("{}\n", 40 << 20)
    );
}

#[test]
fn no_cache_leaves_nothing_and_clean_removes_the_cache() {
    let hosts = TestHosts::start(1);
    let scratch = Scratch::new();
    let (pl, res) = (scratch.path("pl"), scratch.path("res"));
    standard_payload(&pl);
    let run = exec(
        &hosts,
        &["--payload", s(&pl), "--results", s(&res), "--no-cache"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        on_host(
            &hosts,
            0,
            &format!("ls -A {BASE}/cache {BASE}/runs | grep -v : | grep -c . || true")
        ),
        "0"
    );
    assert_eq!(
        std::fs::read(res.join("latest").join(hosts.addr(0)).join("out/sub/a.txt")).unwrap(),
        b"alpha\n"
    );

    let run = exec(&hosts, &["--payload", s(&pl), "--results", s(&res)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = pushrun()
        .args(["clean", "--hosts"])
        .arg(hosts.hosts_yaml())
        .arg("--ssh-config")
        .arg(hosts.ssh_config())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed /tmp/.pushrun-"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        on_host(
            &hosts,
            0,
            &format!("test -e {BASE} && echo present || echo gone")
        ),
        "gone"
    );
}

#[test]
fn a_failing_or_timed_out_payload_still_reports_and_cleans() {
    let hosts = TestHosts::start(1);
    let scratch = Scratch::new();
    let (pl, res) = (scratch.path("pl"), scratch.path("res"));
    standard_payload(&pl);
    let yaml = format!("hosts:\n  {}:\n    vars: {{EXIT_WITH: 3}}\n", hosts.addr(0));
    let inv = hosts.write_yaml("exit3.yaml", &yaml);
    let out = pushrun()
        .args(["exec", "--hosts"])
        .arg(&inv)
        .arg("--ssh-config")
        .arg(hosts.ssh_config())
        .args(["--payload", s(&pl), "--results", s(&res)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let dir = res.join("latest").join(hosts.addr(0));
    assert_eq!(
        std::fs::read_to_string(dir.join("exit_status")).unwrap(),
        "3\n"
    );
    assert_eq!(
        std::fs::read(dir.join("out/with space.txt")).unwrap(),
        b"spaced",
        "results of a failed run not collected"
    );

    let (pl2, res2) = (scratch.path("pl2"), scratch.path("res2"));
    make_payload(
        &pl2,
        &[
            ("run", b"#!/bin/sh\necho partial > \"$PUSHRUN_OUT/partial.txt\"\necho started\nsleep 53535\n", true),
            ("pushrun.yaml", b"timeout: 1\n", false),
        ],
    );
    let run = exec(&hosts, &["--payload", s(&pl2), "--results", s(&res2)]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("killed after the 1s timeout"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(res2.join("latest").join(hosts.addr(0)).join("exit_status"))
            .unwrap(),
        "timed out: killed after the 1s timeout\n"
    );
    // What the payload wrote before it was stopped still comes back.
    assert_eq!(
        std::fs::read_to_string(
            res2.join("latest")
                .join(hosts.addr(0))
                .join("out/partial.txt")
        )
        .unwrap(),
        "partial\n"
    );
    wait_until(Duration::from_secs(10), "payload gone", || {
        processes_with("sleep 53535").is_empty()
    });
    wait_until(Duration::from_secs(10), "run dir removed", || {
        on_host(&hosts, 0, &format!("ls -A {BASE}/runs | wc -l")) == "0"
    });
}

#[test]
fn a_payload_without_an_entry_point_is_refused_before_any_host_is_contacted() {
    let scratch = Scratch::new();
    let pl = scratch.path("pl");
    make_payload(&pl, &[("lib/x", b"x", false)]);
    let out = pushrun()
        .args(["exec", "-w", "127.0.0.1", "--payload", s(&pl)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no entry point \"run\""), "{err}");
}

#[test]
fn with_no_command_and_no_payload_the_builtin_collector_gathers_facts() {
    let hosts = TestHosts::start(2);
    let scratch = Scratch::new();
    let res = scratch.path("res");
    let run = exec(&hosts, &["--results", s(&res)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for i in 0..2 {
        let facts = std::fs::read_to_string(
            res.join("latest")
                .join(hosts.addr(i))
                .join("out/facts.json"),
        )
        .unwrap();
        let facts: Value = serde_json::from_str(&facts).unwrap();
        assert_eq!(facts["hostname"], hosts.hostname(i).as_str());
        assert!(facts["cpu"]["count"].as_u64().unwrap() > 0);
        assert_eq!(
            run.stdout
                .lines()
                .filter(|l| l.starts_with(&hosts.addr(i)))
                .count(),
            1,
            "{}",
            run.stdout
        );
    }
}

#[test]
fn collect_time_and_clean_time_are_measured_apart() {
    let hosts = TestHosts::start(1);
    let scratch = Scratch::new();
    let (pl, res) = (scratch.path("pl"), scratch.path("res"));
    make_payload(
        &pl,
        &[(
            "run",
            b"#!/bin/sh\ncd \"$PUSHRUN_OUT\" && seq 1 3000 | xargs touch\n",
            true,
        )],
    );
    let run = exec(&hosts, &["--payload", s(&pl), "--results", s(&res)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = res.join("latest").join(hosts.addr(0)).join("out");
    assert_eq!(std::fs::read_dir(out).unwrap().count(), 3000);
    // Removing 3000 files takes time of its own: before collect.sh closed its
    // streams ahead of the removal, it was counted as collect time and clean
    // time always read 0.
    let h = host_summary(&summary(&res), &hosts.addr(0)).clone();
    assert!(h["timings"]["clean_ms"].as_u64().unwrap() >= 1, "{h}");
    assert_eq!(
        on_host(&hosts, 0, &format!("ls -A {BASE}/runs | wc -l")),
        "0"
    );
}

/// Runs the standard payload on `hosts`' one host, `--persist 0`, for each
/// of `rounds` (cold first): each round's results are whole and no run dir
/// or owner file stays; `after` is told each round's name once it is checked.
fn payload_rounds(hosts: &TestHosts, rounds: &[&str], mut after: impl FnMut(&str)) {
    let scratch = Scratch::new();
    let pl = scratch.path("pl");
    standard_payload(&pl);
    for round in rounds {
        let res = scratch.path(&round.replace(' ', "-"));
        let run = exec(
            hosts,
            &["--persist", "0", "--payload", s(&pl), "--results", s(&res)],
        );
        assert_eq!(run.code, 0, "{round}: {}", run.all());
        let dir = res.join("latest").join(hosts.addr(0));
        assert_eq!(
            std::fs::read(dir.join("out/bin.dat")).unwrap(),
            b"\x00\x01\xffbinary",
            "{round}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("out/sub/a.txt")).unwrap(),
            "alpha\n",
            "{round}"
        );
        after(round);
        let left = on_host(hosts, 0, &format!("ls -A {BASE}/runs {BASE}/owners"));
        assert!(
            left.lines().all(|l| l.is_empty() || l.ends_with(':')),
            "{round}: run dirs or owner files left: {left}"
        );
    }
}

/// A payload run opens one session channel, cold or warm: the check,
/// which stays, receives what it found missing (cold), runs the payload and
/// collects its results there. Counted in sshd's own log.
#[test]
fn a_run_checks_uploads_runs_and_collects_on_one_channel() {
    let hosts = TestHosts::start_with(&[HostOpts {
        debug_log: true,
        ..HostOpts::default()
    }]);
    let sessions = || {
        hosts
            .log(0)
            .lines()
            .filter(|l| l.contains("server_input_channel_open: ctype session"))
            .count()
    };
    let mut before = sessions();
    payload_rounds(&hosts, &["cold", "warm"], |round| {
        assert_eq!(sessions() - before, 1, "{round}: {}", hosts.log(0));
        // (the ssh command that looks for run dirs is a session too)
        before = sessions() + 1;
    });
}

/// A server that allows one session at a time (`MaxSessions 1`): the
/// check takes the upload, runs the payload and collects on its one
/// channel, cold and warm (through sudo, where the run needs a channel of
/// its own: access.rs).
#[test]
fn a_server_that_allows_one_session_at_a_time_still_runs_payloads() {
    let hosts = TestHosts::start_with(&[HostOpts {
        one_session: true,
        ..HostOpts::default()
    }]);
    payload_rounds(&hosts, &["cold", "warm", "warm again"], |_| {});
}

/// The check runs the payload on its own channel, cold or warm, which then
/// carries the results: output that looks like the end line (another
/// nonce), a last line without a newline, stderr, the exit status, and what
/// a process the payload left running prints after it has ended all come
/// through as they would on a channel of their own (but that a line the
/// payload left unfinished is ended at its end here); a timeout still brings
/// back what the payload wrote, and leaves no process or run dir.
#[test]
fn a_payload_run_by_its_check_keeps_every_byte_apart_from_its_results() {
    let hosts = TestHosts::start(1);
    let scratch = Scratch::new();
    let pl = scratch.path("pl");
    let script = b"#!/bin/sh
echo 'pushrun-end-00000000000000000000000000000000 0'
echo 'pushrun-done-00000000000000000000000000000000'
echo to-stderr >&2
(sleep 1; echo late-err >&2) &
printf '\\001bin' > \"$PUSHRUN_OUT/r.bin\"
printf 'no newline'
exit 6
";
    make_payload(&pl, &[("run", script, true)]);
    for round in ["cold", "warm"] {
        let res = scratch.path(round);
        let run = exec(&hosts, &["--payload", s(&pl), "--results", s(&res)]);
        assert_eq!(run.code, 1, "{round}: {}", run.all());
        let dir = res.join("latest").join(hosts.addr(0));
        assert_eq!(
            std::fs::read_to_string(dir.join("stdout")).unwrap(),
            "pushrun-end-00000000000000000000000000000000 0\n\
             pushrun-done-00000000000000000000000000000000\n\
             no newline",
            "{round}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("stderr")).unwrap(),
            "to-stderr\nlate-err\n",
            "{round}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("exit_status")).unwrap(),
            "6\n",
            "{round}"
        );
        assert_eq!(
            std::fs::read(dir.join("out/r.bin")).unwrap(),
            b"\x01bin",
            "{round}"
        );
    }
    assert_eq!(
        host_summary(&summary(&scratch.path("warm")), &hosts.addr(0))["cache_hit"],
        true
    );

    let pl2 = scratch.path("pl2");
    make_payload(
        &pl2,
        &[
            (
                "run",
                b"#!/bin/sh\necho partial > \"$PUSHRUN_OUT/partial.txt\"\nsleep 53536\n",
                true,
            ),
            ("pushrun.yaml", b"timeout: 1\n", false),
        ],
    );
    for round in ["cold", "warm"] {
        let res = scratch.path(&format!("t-{round}"));
        let run = exec(&hosts, &["--payload", s(&pl2), "--results", s(&res)]);
        assert_eq!(run.code, 3, "{round}: {}", run.all());
        let dir = res.join("latest").join(hosts.addr(0));
        assert_eq!(
            std::fs::read_to_string(dir.join("out/partial.txt")).unwrap(),
            "partial\n",
            "{round}"
        );
        wait_until(Duration::from_secs(10), "payload gone", || {
            processes_with("sleep 53536").is_empty()
        });
        wait_until(Duration::from_secs(10), "run dir removed", || {
            on_host(&hosts, 0, &format!("ls -A {BASE}/runs | wc -l")) == "0"
        });
    }
}
