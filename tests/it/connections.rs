//! Connections: how masters end (item 0 of the connection work: closing never
//! waits on a signal), and what a run leaves behind.

use std::os::unix::process::ExitStatusExt;
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
        let status = status.expect("pushrun reaped the master");
        // Asked through its control socket, the master ends by itself: no
        // SIGTERM, no SIGKILL.
        assert_eq!(status.signal(), None, "round {round}: {status:?}");
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
