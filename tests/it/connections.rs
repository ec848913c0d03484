//! Connections: how masters end (item 0 of the connection work: closing never
//! waits on a signal), and what a run leaves behind.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use pushrun::inventory::Inventory;
use pushrun::session::{ControlDir, Kex, Session, SshOptions, write_ssh_config};

use crate::common::{TestHosts, exec_command, pid_alive, processes_with, wait_until};

/// The run's ssh options against a test fleet.
fn options(hosts: &TestHosts) -> SshOptions {
    SshOptions {
        config_file: Some(hosts.ssh_config()),
        kex: Kex::Default,
        connect_timeout: Duration::from_secs(10),
        host_key_checking: None,
        persist: Duration::ZERO,
    }
}

#[test]
fn closing_asks_the_master_to_exit_and_needs_no_signal() {
    let hosts = TestHosts::start(1);
    let host = Inventory::ad_hoc(&hosts.addr(0)).unwrap().hosts()[0].clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = ControlDir::create().unwrap();
    let opts = options(&hosts);
    let config = write_ssh_config(&dir, &opts).unwrap();
    for round in 0..5 {
        let (pid, status) = runtime.block_on(async {
            let session = Session::connect(&dir, &config, round, &host, &opts, None)
                .await
                .expect("connect");
            let out = session
                .run_script("exit 0", "true", &[], b"")
                .await
                .unwrap();
            assert_eq!(out.code, Some(0));
            let closing = session.close().await;
            let pid = closing.pid.expect("the master was running");
            (pid, closing.ended().await)
        });
        let ended = status.expect("pushrun reaped the master");
        // Asked through its control socket, the master ends by itself: no
        // SIGTERM, no SIGKILL.
        assert!(!ended.signalled, "round {round}: {ended:?}");
        assert!(ended.status.is_some(), "round {round}: {ended:?}");
        assert_eq!(ended.status.unwrap().signal(), None, "round {round}");
        assert!(!pid_alive(pid), "round {round}: master {pid} still runs");
        assert!(!dir.path().join(round.to_string()).exists());
    }
}

#[test]
fn a_run_leaves_no_master_behind() {
    let hosts = TestHosts::start(3);
    let inventory = hosts.hosts_yaml();
    for _ in 0..3 {
        let child = exec_command(&inventory, &hosts.ssh_config(), &["--", "true"])
            .env("PUSHRUN_PERSIST", "0")
            .spawn()
            .unwrap();
        let marker = format!("pushrun-{}-", child.id());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        // Masters were asked to exit as each host finished; the last one
        // may still be on its way out when pushrun exits.
        wait_until(Duration::from_secs(3), "no master left", || {
            processes_with(&marker).is_empty()
        });
    }
}

/// A per-test directory for persisted masters (`XDG_RUNTIME_DIR`), whose
/// masters are all ended when the test ends, passed or not.
struct Persisting {
    runtime: tempfile::TempDir,
}

impl Persisting {
    fn new() -> Persisting {
        Persisting {
            runtime: tempfile::Builder::new()
                .prefix("pr")
                .tempdir_in("/tmp")
                .unwrap(),
        }
    }

    /// `pushrun ARGS` using this directory.
    fn pushrun(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = crate::common::pushrun();
        cmd.args(args)
            .env("XDG_RUNTIME_DIR", self.runtime.path())
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// `pushrun exec` on every host of the fleet, keeping masters for `persist`.
    fn exec(&self, hosts: &TestHosts, persist: &str, args: &[&str]) -> crate::common::Run {
        let out = self
            .pushrun(&["exec", "--hosts"])
            .arg(hosts.hosts_yaml())
            .arg("--ssh-config")
            .arg(hosts.ssh_config())
            .env("PUSHRUN_PERSIST", persist)
            .args(args)
            .output()
            .unwrap();
        crate::common::to_run(out)
    }

    /// A first run of `hostname` on every host, whose masters persist for
    /// a minute: its result, and the pids of the masters (one per host).
    fn first_run(&self, hosts: &TestHosts) -> (crate::common::Run, Vec<String>) {
        let first = self.exec(hosts, "60", &["--", "hostname"]);
        assert_eq!(first.code, 0, "{}", first.all());
        let masters = self.masters();
        assert_eq!(
            masters.len(),
            hosts.len(),
            "one master per host: {masters:?}"
        );
        (first, masters)
    }

    /// The pids of the masters living in this directory.
    fn masters(&self) -> Vec<String> {
        let marker = format!("-S {}/", self.runtime.path().display());
        let mut pids: Vec<String> = processes_with(&marker)
            .into_iter()
            .filter(|p| p.contains(" -M "))
            .map(|p| p.split(':').next().unwrap().to_string())
            .collect();
        pids.sort();
        pids
    }
}

impl Drop for Persisting {
    fn drop(&mut self) {
        let _ = self.pushrun(&["disconnect"]).output();
    }
}

#[test]
fn a_second_run_attaches_to_the_masters_the_first_left() {
    let hosts = TestHosts::start(3);
    let p = Persisting::new();
    let (first, masters) = p.first_run(&hosts);
    let listed = p
        .pushrun(&["hosts", "--hosts"])
        .arg(hosts.hosts_yaml())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert_eq!(listed.matches(" connected").count(), 3, "{listed}");

    let second = p.exec(&hosts, "60", &["--", "hostname"]);
    assert_eq!(second.code, 0, "{}", second.all());
    assert_eq!(
        sorted(&second.stdout),
        sorted(&first.stdout),
        "same results as cold"
    );
    assert_eq!(
        p.masters(),
        masters,
        "the second run made no connection of its own"
    );

    let out = p
        .pushrun(&["disconnect", "-w"])
        .arg(hosts.addr(0))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("disconnected 1 hosts"));
    wait_until(Duration::from_secs(3), "one master ended", || {
        p.masters().len() == 2
    });
    let out = p.pushrun(&["disconnect"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("disconnected 2 hosts"));
    wait_until(Duration::from_secs(3), "no master left", || {
        p.masters().is_empty()
    });
    let listed = p
        .pushrun(&["hosts", "--hosts"])
        .arg(hosts.hosts_yaml())
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("connected"));
}

#[test]
fn a_dead_master_is_replaced_and_other_settings_get_their_own() {
    let hosts = TestHosts::start(2);
    let p = Persisting::new();
    let (first, masters) = p.first_run(&hosts);
    // A master killed outright leaves its socket behind.
    for pid in &masters {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", pid])
            .status();
    }
    wait_until(Duration::from_secs(3), "masters killed", || {
        p.masters().is_empty()
    });
    let again = p.exec(&hosts, "60", &["--", "hostname"]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_eq!(sorted(&again.stdout), sorted(&first.stdout));
    let fresh = p.masters();
    assert_eq!(fresh.len(), 2, "{fresh:?}");
    assert!(fresh.iter().all(|pid| !masters.contains(pid)));
    // Another setting that shapes the connection: another master.
    let other = p.exec(&hosts, "60", &["--connect-timeout", "7", "--", "hostname"]);
    assert_eq!(other.code, 0, "{}", other.all());
    assert_eq!(p.masters().len(), 4);
}

#[test]
fn the_same_config_under_another_path_shares_the_masters_and_a_changed_include_does_not() {
    let hosts = TestHosts::start(2);
    let p = Persisting::new();
    let dir = tempfile::tempdir().unwrap();
    // A wrapper's configs: the fleet's settings, and a file they include
    // that includes another.
    let base = std::fs::read_to_string(hosts.ssh_config()).unwrap();
    let deeper = dir.path().join("deeper.conf");
    std::fs::write(&deeper, "# one\n").unwrap();
    std::fs::write(
        dir.path().join("extra.conf"),
        format!("Include {}\n", deeper.display()),
    )
    .unwrap();
    let text = format!("Include {}/extra.conf\n{base}", dir.path().display());
    let (a, b) = (dir.path().join("a.conf"), dir.path().join("b.conf"));
    std::fs::write(&a, &text).unwrap();
    std::fs::write(&b, &text).unwrap();
    let exec = |config: &Path| {
        let out = p
            .pushrun(&["exec", "--hosts"])
            .arg(hosts.hosts_yaml())
            .arg("--ssh-config")
            .arg(config)
            .args(["--persist", "60", "--", "hostname"])
            .output()
            .unwrap();
        let run = crate::common::to_run(out);
        assert_eq!(run.code, 0, "{}", run.all());
    };
    exec(&a);
    let masters = p.masters();
    assert_eq!(masters.len(), 2, "{masters:?}");
    exec(&b);
    assert_eq!(p.masters(), masters, "the same text under another path");
    // A change two includes down is another configuration.
    std::fs::write(&deeper, "# two\n").unwrap();
    exec(&a);
    let after = p.masters();
    assert_eq!(after.len(), 4, "{after:?}");
    exec(&b);
    assert_eq!(p.masters(), after);
}

/// Sends SIGKILL to a pid when dropped (a stopped master must not outlive
/// a failed test).
struct KillOnDrop(String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0])
            .status();
    }
}

#[test]
fn a_master_that_does_not_answer_is_left_alone_and_disconnect_ends_it() {
    let hosts = TestHosts::start(1);
    let p = Persisting::new();
    let (first, masters) = p.first_run(&hosts);
    let _kill = KillOnDrop(masters[0].clone());
    let status = std::process::Command::new("kill")
        .args(["-STOP", &masters[0]])
        .status()
        .unwrap();
    assert!(status.success());
    // The stopped master still holds its socket: a run neither hangs on it
    // nor starts a second persisted master beside it.
    let second = p.exec(&hosts, "60", &["--", "hostname"]);
    assert_eq!(second.code, 0, "{}", second.all());
    assert_eq!(sorted(&second.stdout), sorted(&first.stdout));
    assert_eq!(p.masters(), masters, "no second master for the host");
    let out = p.pushrun(&["disconnect"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(said.contains("disconnected 1 hosts"), "{said}");
    wait_until(Duration::from_secs(5), "the stopped master ended", || {
        p.masters().is_empty()
    });
}

#[test]
fn persisted_masters_end_once_idle_for_the_persist_time() {
    let hosts = TestHosts::start(2);
    let p = Persisting::new();
    let run = p.exec(&hosts, "1s", &["--", "true"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(p.masters().len(), 2);
    wait_until(Duration::from_secs(5), "masters expired", || {
        p.masters().is_empty()
    });
}

/// Output lines in order (hosts answer in any order).
fn sorted(out: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    lines
}

#[test]
fn more_forks_than_open_files_allow_still_reach_every_host() {
    let hosts = TestHosts::start(8);
    // 60 descriptors hold one host at a time; 8 at once would run out.
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 60 && exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_pushrun"))
        .args(["exec", "--forks", "8", "--hosts"])
        .arg(hosts.hosts_yaml())
        .arg("--ssh-config")
        .arg(hosts.ssh_config())
        .args(["--", "sleep 0.5; echo done"])
        .env("PUSHRUN_PERSIST", "0")
        .stdin(std::process::Stdio::null());
    let run = crate::common::to_run(cmd.output().unwrap());
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(run.stdout.matches(": done").count(), 8, "{}", run.all());
}

/// `pushrun exec` on every host of `hosts` with `ulimit -n` at `limit`,
/// masters ending with the run.
fn exec_under_open_files_limit(hosts: &TestHosts, limit: u32, args: &[&str]) -> crate::common::Run {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$@\""))
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_pushrun"))
        .args(["exec", "--hosts"])
        .arg(hosts.hosts_yaml())
        .arg("--ssh-config")
        .arg(hosts.ssh_config())
        .args(args)
        .env("PUSHRUN_PERSIST", "0")
        .stdin(std::process::Stdio::null());
    crate::common::to_run(cmd.output().unwrap())
}

#[test]
fn an_open_files_limit_too_low_for_one_host_is_named_for_every_host() {
    let hosts = TestHosts::start(3);
    let run = exec_under_open_files_limit(&hosts, 16, &["--", "echo done"]);
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(!run.stdout.contains("done"), "{}", run.all());
    let named = "too many open files: ulimit -n is 16, pushrun needs at least 24";
    assert_eq!(run.stderr.matches(named).count(), 1, "{}", run.all());
    assert!(run.stderr.contains("3 unreachable"), "{}", run.all());
}

#[test]
fn hosts_waiting_for_open_files_wait_as_long_as_others_close() {
    // 60 descriptors hold one host at a time: the last of 7 hosts waits
    // for six 11 s commands, more than the 60 s a host waits with no
    // other host closing, and still runs.
    let hosts = TestHosts::start(7);
    let run =
        exec_under_open_files_limit(&hosts, 60, &["--forks", "7", "--", "sleep 11; echo done"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(run.stdout.matches(": done").count(), 7, "{}", run.all());
}
