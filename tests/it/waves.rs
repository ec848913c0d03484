//! Rolling runs (`--batch`, `--max-fail`), completions and the man page.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::{HostOpts, TestHosts, exec, pushrun, summary};

#[test]
fn a_failing_host_in_the_second_wave_skips_every_later_wave_uncontacted() {
    let n = 20;
    let hosts = TestHosts::start_with(&vec![
        HostOpts {
            debug_log: true,
            ..HostOpts::default()
        };
        n
    ]);
    // host 7 (second wave of 5) fails
    let mut yaml = String::from("hosts:\n");
    for i in 0..n {
        let code = if i == 7 { 3 } else { 0 };
        yaml.push_str(&format!(
            "  {}:\n    vars: {{CODE: {code}}}\n",
            hosts.addr(i)
        ));
    }
    let inv = hosts.write_yaml("waves.yaml", &yaml);
    let results = tempfile::tempdir().unwrap();
    let marker = format!("waves-{}", std::process::id());
    let run = exec(
        &hosts,
        &inv,
        &[
            "--batch",
            "5",
            "--max-fail",
            "0",
            "--results",
            results.path().to_str().unwrap(),
            "--",
            &format!("echo {marker}; exit $CODE"),
        ],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr.contains("9 ok, 1 failed, 10 skipped"),
        "{}",
        run.stderr
    );
    let doc = summary(results.path());
    assert_eq!(doc["counts"]["skipped"], 10, "{doc:#}");
    for i in 0..n {
        let said = run.lines_of(&hosts.addr(i));
        let host = &doc["hosts"][i];
        if i < 10 {
            assert_eq!(said, vec![marker.as_str()], "host {i}");
            assert_ne!(host["status"], "skipped", "host {i}");
            assert!(hosts.log(i).contains("Accepted publickey"), "host {i}");
        } else {
            assert!(said.is_empty(), "host {i}: {said:?}");
            assert_eq!(host["status"], "skipped", "host {i}");
            // never contacted: no login in its sshd's log
            let log = hosts.log(i);
            assert!(!log.contains("Accepted"), "host {i}: {log}");
        }
    }
}

#[test]
fn waves_go_on_while_failures_stay_within_max_fail_and_json_says_skipped() {
    let hosts = TestHosts::start(4);
    let mut yaml = String::from("hosts:\n");
    for i in 0..4 {
        let code = if i < 2 { 1 } else { 0 };
        yaml.push_str(&format!(
            "  {}:\n    vars: {{CODE: {code}}}\n",
            hosts.addr(i)
        ));
    }
    let inv = hosts.write_yaml("codes.yaml", &yaml);
    // waves of 1: two failures are within --max-fail 50% (2 of 4): all run
    let run = exec(
        &hosts,
        &inv,
        &["--batch", "25%", "--max-fail", "50%", "--", "exit $CODE"],
    );
    assert!(run.stderr.contains("2 ok, 2 failed"), "{}", run.stderr);
    // one failure allowed: the third wave does not start
    let run = exec(
        &hosts,
        &inv,
        &[
            "--batch",
            "1",
            "--max-fail",
            "1",
            "--json",
            "--",
            "exit $CODE",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    let last = run.stdout.lines().last().unwrap();
    let summary: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(summary["skipped"], 2, "{last}");
    assert_eq!(summary["failed"], 2, "{last}");
}

#[test]
fn bad_wave_flags_are_usage_errors() {
    let run = |args: &[&str]| {
        pushrun()
            .args(["exec", "-w", "127.0.0.1"])
            .args(args)
            .args(["--", "true"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&["--batch", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--batch must be at least 1"));
    let out = run(&["--max-fail", "1"]);
    assert_eq!(out.status.code(), Some(2), "--max-fail needs --batch");
    let out = run(&["--batch", "120%"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bash_sources_the_completions_and_man_renders_the_page() {
    let out = pushrun().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), &out.stdout).unwrap();
    let check = Command::new("bash")
        .arg("-c")
        .arg("set -e; source \"$1\"; complete -p pushrun")
        .arg("bash")
        .arg(script.path())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        check.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("pushrun"));
    for shell in ["zsh", "fish"] {
        let out = pushrun().args(["completions", shell]).output().unwrap();
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }

    let page = pushrun().arg("man").output().unwrap();
    assert!(page.status.success());
    let roff = String::from_utf8_lossy(&page.stdout);
    assert!(
        roff.starts_with(".ie") || roff.contains(".TH pushrun"),
        "{roff}"
    );
    let mut man = Command::new("man")
        .args(["-l", "-"])
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run man (scripts/setup.sh installs man-db)");
    man.stdin.take().unwrap().write_all(&page.stdout).unwrap();
    let shown = man.wait_with_output().unwrap();
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("NAME") && text.contains("pushrun"), "{text}");
}

#[test]
fn diff_shows_how_the_odd_host_differs_from_the_rest() {
    let hosts = TestHosts::start(3);
    let mut yaml = String::from("hosts:\n");
    for i in 0..3 {
        let word = if i == 1 { "odd" } else { "same" };
        yaml.push_str(&format!(
            "  {}:\n    vars: {{WORD: {word}}}\n",
            hosts.addr(i)
        ));
    }
    let inv = hosts.write_yaml("words.yaml", &yaml);
    let run = exec(
        &hosts,
        &inv,
        &["--diff", "--", "echo first; echo $WORD; echo last"],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    let (a, b, c) = (hosts.addr(0), hosts.addr(1), hosts.addr(2));
    let common = crate::common::common_fold(&a, &c).replace('-', ",");
    let want =
        format!("--- {common} (2)\n+++ {b} (1)\n@@ -1,3 +1,3 @@\n first\n-same\n+odd\n last\n");
    assert_eq!(run.stdout, want, "{}", run.all());
}
