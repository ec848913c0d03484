//! Hosts behind relays (`via:`), against real sshd hosts on loopback: the
//! relays and the leaves are all test hosts, and every relay runs the
//! pushrun under test, staged by the initiator.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::common::{
    HostOpts, Sudo, TestHosts, common_fold, exec, exec_command, is_root, late_forwarder, payload,
    pid_alive, processes_with, pushrun, spawn_exec, summary, unused_addr, wait_until,
};

fn me() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Where a host sees the fleet's directory (its /tmp is its own when root).
fn runtime_dir(hosts: &TestHosts) -> String {
    let env = std::fs::read_to_string(hosts.dir().join("fleet.env")).unwrap();
    env.lines()
        .find_map(|l| l.strip_prefix("RUNTIME_DIR="))
        .expect("RUNTIME_DIR in fleet.env")
        .to_string()
}

/// One inventory entry: a host, the relay it is behind, and more settings.
struct Node {
    name: String,
    via: Option<String>,
    extra: String,
}

fn node(name: String, via: Option<&str>) -> Node {
    Node {
        name,
        via: via.map(str::to_string),
        extra: String::new(),
    }
}

/// hosts.yaml for a tree. Hosts behind a relay log in with the fleet's key
/// as the relay sees it (keys already on the relay), unless `agent`.
fn write_tree(hosts: &TestHosts, file: &str, nodes: &[Node], agent: bool) -> PathBuf {
    let key = format!("{}/id_ed25519", runtime_dir(hosts));
    let mut yaml = format!("defaults:\n  port: 2022\n  user: {}\nhosts:\n", me());
    for n in nodes {
        let mut settings = Vec::new();
        if let Some(via) = &n.via {
            settings.push(format!("via: {via}"));
            if !agent {
                settings.push(format!("identity_file: {key}"));
            }
        }
        if !n.extra.is_empty() {
            settings.push(n.extra.clone());
        }
        yaml.push_str(&format!("  {}: {{{}}}\n", n.name, settings.join(", ")));
    }
    hosts.write_yaml(file, &yaml)
}

/// A payload that greets and leaves the host's name in its results.
fn greeting_payload(dir: &Path) -> PathBuf {
    let script = "#!/bin/sh\necho \"hello from $(hostname)\"\nhostname > \"$PUSHRUN_OUT/name\"\n";
    payload(dir, "greeting", script)
}

/// Host 0 a relay (a hop only, unless selected) with `leaves` behind it.
fn star(hosts: &TestHosts, leaves: &[String]) -> (String, PathBuf) {
    let relay = hosts.addr(0);
    let mut nodes = vec![node(relay.clone(), None)];
    nodes.extend(leaves.iter().map(|l| node(l.clone(), Some(&relay))));
    (relay, write_tree(hosts, "tree.yaml", &nodes, false))
}

/// r1 = host 0; r2 = host 1 behind r1; hosts 2 and 3 behind r2, host 4 behind r1.
fn depth_two(hosts: &TestHosts) -> (String, String, PathBuf) {
    let (r1, r2) = (hosts.addr(0), hosts.addr(1));
    let nodes = vec![
        node(r1.clone(), None),
        node(r2.clone(), Some(&r1)),
        node(hosts.addr(2), Some(&r2)),
        node(hosts.addr(3), Some(&r2)),
        node(hosts.addr(4), Some(&r1)),
    ];
    let inv = write_tree(hosts, "tree.yaml", &nodes, false);
    (r1, r2, inv)
}

/// `--limit LIMIT --payload PAYLOAD --results RESULTS`.
fn payload_args<'a>(limit: &'a str, payload: &'a Path, results: &'a Path) -> [&'a str; 6] {
    let path = |p: &'a Path| p.to_str().unwrap();
    let (payload, results) = (path(payload), path(results));
    ["--limit", limit, "--payload", payload, "--results", results]
}

/// The run dirs left under a host's pushrun dir.
fn run_dirs(hosts: &TestHosts, i: usize) -> Vec<String> {
    let runs = hosts
        .tmp_dir(i)
        .join(format!(".pushrun-{}", me()))
        .join("runs");
    match std::fs::read_dir(&runs) {
        Ok(d) => d
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Control dirs (`pushrun-PID-N`) left in a host's /tmp.
fn control_dirs(hosts: &TestHosts, i: usize) -> Vec<String> {
    match std::fs::read_dir(hosts.tmp_dir(i)) {
        Ok(d) => d
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("pushrun-"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Pids of `pushrun relay` processes started through test host `i`'s sshd.
fn relay_processes(hosts: &TestHosts, i: usize) -> Vec<u32> {
    let sshd = hosts.listener_pids()[i];
    processes_with(" relay")
        .iter()
        .filter_map(|line| {
            let (pid, cmd) = line.split_once(": ")?;
            let pid: u32 = pid.parse().ok()?;
            let cmd = cmd.trim_end();
            if !(cmd.ends_with("/pushrun relay") && cmd.contains("/.pushrun-")) {
                return None;
            }
            let mut up = parent_of(pid);
            while let Some(p) = up {
                if p == sshd {
                    return Some(pid);
                }
                if p <= 1 {
                    break;
                }
                up = parent_of(p);
            }
            None
        })
        .collect()
}

/// Starts pushrun with stdout piped, and waits for `count` lines containing `want`.
fn start_and_wait(
    hosts: &TestHosts,
    inventory: &Path,
    args: &[&str],
    want: &str,
    count: usize,
) -> Child {
    let mut child = spawn_exec(hosts, inventory, args);
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut seen = 0;
    let mut line = String::new();
    while seen < count {
        line.clear();
        let n = reader.read_line(&mut line).unwrap();
        assert!(
            n > 0,
            "pushrun ended before printing {want:?} {count} times"
        );
        if line.contains(want) {
            seen += 1;
        }
    }
    // Keep draining so pushrun never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    child
}

/// Two leaves behind relay host 0 running `echo started; SLEEP`, started:
/// the relay's name, the running pushrun, and the relay's `pushrun relay` pid.
fn two_leaves_sleeping(hosts: &TestHosts, sleep: &str) -> (String, Child, Vec<u32>) {
    let (relay, inv) = star(hosts, &[hosts.addr(1), hosts.addr(2)]);
    let limit = format!("!{relay}");
    let command = format!("echo started; {sleep}");
    let child = start_and_wait(
        hosts,
        &inv,
        &["--limit", &limit, "--", &command],
        "started",
        2,
    );
    let relays = relay_processes(hosts, 0);
    assert_eq!(relays.len(), 1, "pushrun relay on the relay: {relays:?}");
    (relay, child, relays)
}

fn stderr_of(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn one_relay_serves_twenty_leaves_as_if_they_were_direct() {
    let hosts = TestHosts::start(21);
    let leaves: Vec<String> = (1..21).map(|i| hosts.addr(i)).collect();
    let (relay, inv) = star(&hosts, &leaves);
    let payload = greeting_payload(hosts.dir());
    let results = hosts.dir().join("results");
    let limit = format!("!{relay}");
    let args = payload_args(&limit, &payload, &results);
    let out = exec(&hosts, &inv, &args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("20 hosts in"), "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 20, "{}", out.stdout);
    let lines: Vec<(&str, &str)> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(h, t)| (h.trim_end(), t)))
        .collect();
    for i in 1..21 {
        let want = format!("hello from {}", hosts.hostname(i));
        assert!(
            lines.contains(&(hosts.addr(i).as_str(), want.as_str())),
            "no {want:?} from {} in\n{}",
            hosts.addr(i),
            out.stdout
        );
    }
    assert!(
        lines.iter().all(|(h, _)| *h != relay),
        "the relay is a hop only"
    );
    let s = summary(&results);
    let leaves = s["hosts"].as_array().unwrap();
    assert_eq!(leaves.len(), 20);
    for (k, h) in leaves.iter().enumerate() {
        let addr = hosts.addr(k + 1);
        assert_eq!(h["status"], "ok", "{h}");
        assert_eq!(h["path"], format!("{relay}/{addr}"), "{h}");
        let name =
            std::fs::read_to_string(results.join("latest").join(&addr).join("out/name")).unwrap();
        assert_eq!(name.trim(), hosts.hostname(k + 1));
    }
    let relays = s["relays"].as_array().unwrap();
    assert_eq!(relays.len(), 1, "{s}");
    assert_eq!(relays[0]["path"], relay.as_str());
    assert_eq!(relays[0]["hosts"], 20);
    assert_eq!(relays[0]["binary"]["cache_hit"], false);
    assert_eq!(relays[0]["payload"]["files_sent"], 1);

    // Again: everything is cached on the relay; JSON events carry the path.
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let out = exec(&hosts, &inv, &json_args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let ends: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "end")
        .collect();
    assert_eq!(ends.len(), 20);
    assert!(ends.iter().all(|e| {
        e["path"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{relay}/"))
    }));
    let s = summary(&results);
    assert_eq!(s["relays"][0]["binary"]["cache_hit"], true, "{s}");
    assert_eq!(s["relays"][0]["payload"]["cache_hit"], true, "{s}");
    assert_eq!(run_dirs(&hosts, 0), Vec::<String>::new());
    assert!(control_dirs(&hosts, 0).is_empty() || !is_root());
}

#[test]
fn two_relays_serve_ten_leaves_each_and_gather_folds_them_together() {
    let hosts = TestHosts::start(22);
    let (r1, r2) = (hosts.addr(0), hosts.addr(1));
    let mut nodes = vec![node(r1.clone(), None), node(r2.clone(), None)];
    nodes.extend((2..22).map(|i| node(hosts.addr(i), Some(if i % 2 == 0 { &r1 } else { &r2 }))));
    let inv = write_tree(&hosts, "tree.yaml", &nodes, false);
    let results = hosts.dir().join("results");
    let limit = format!("!{r1},!{r2}");
    let out = exec(
        &hosts,
        &inv,
        &[
            "--limit",
            &limit,
            "-b",
            "--results",
            results.to_str().unwrap(),
            "--",
            "echo same; exit 3",
        ],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stdout.contains("(20 hosts, exit 3)"), "{}", out.stdout);
    assert!(out.stderr.contains("20 failed"), "{}", out.stderr);
    let s = summary(&results);
    let relays = s["relays"].as_array().unwrap();
    let mut served: Vec<(String, u64)> = relays
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                r["hosts"].as_u64().unwrap(),
            )
        })
        .collect();
    served.sort();
    let mut want = vec![(r1.clone(), 10), (r2.clone(), 10)];
    want.sort();
    assert_eq!(served, want);
    for h in s["hosts"].as_array().unwrap() {
        let addr = h["name"].as_str().unwrap();
        let last: usize = addr.rsplit('.').next().unwrap().parse().unwrap();
        let relay = if (last - 1).is_multiple_of(2) {
            &r1
        } else {
            &r2
        };
        assert_eq!(h["path"], format!("{relay}/{addr}"));
        assert_eq!(h["exit_code"], 3);
    }
}

#[test]
fn depth_two_relays_run_the_same_pipeline_and_relays_run_the_job_only_when_selected() {
    let hosts = TestHosts::start(5);
    let (r1, r2, inv) = depth_two(&hosts);
    let tree = pushrun()
        .args(["hosts", "--hosts"])
        .arg(&inv)
        .args(["--limit", &format!("{},{}", hosts.addr(2), hosts.addr(4))])
        .output()
        .unwrap();
    let tree = String::from_utf8_lossy(&tree.stdout).into_owned();
    assert_eq!(
        tree.lines()
            .map(|l| l
                .split(' ')
                .filter(|w| !w.contains('='))
                .collect::<Vec<_>>()
                .join(" "))
            .collect::<Vec<_>>(),
        [
            format!("{r1}  (relay only)"),
            format!("  {}", hosts.addr(4)),
            format!("  {r2}  (relay only)"),
            format!("    {}", hosts.addr(2)),
        ],
        "{tree}"
    );

    let payload = greeting_payload(hosts.dir());
    let results = hosts.dir().join("results");
    let leaves = format!("{},{},{}", hosts.addr(2), hosts.addr(3), hosts.addr(4));
    let out = exec(&hosts, &inv, &payload_args(&leaves, &payload, &results));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 3, "{}", out.stdout);
    for i in 2..5 {
        assert!(
            out.stdout
                .contains(&format!("hello from {}", hosts.hostname(i))),
            "{}",
            out.stdout
        );
    }
    let s = summary(&results);
    let paths: Vec<&str> = s["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            format!("{r1}/{r2}/{}", hosts.addr(2)),
            format!("{r1}/{r2}/{}", hosts.addr(3)),
            format!("{r1}/{}", hosts.addr(4)),
        ]
    );
    let relays: Vec<&str> = s["relays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(relays, [r1.clone(), format!("{r1}/{r2}")]);
    // r2 got the payload from r1, not from the initiator.
    assert!(
        s["relays"][1]["payload"]["bytes_sent"].as_u64().unwrap() > 0,
        "{s}"
    );

    // Selected themselves, the relays run the job too.
    let out = exec(&hosts, &inv, &["--", "hostname"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 5, "{}", out.stdout);
    for i in 0..5 {
        assert!(
            out.stdout.contains(&format!(": {}", hosts.hostname(i))),
            "{}",
            out.stdout
        );
    }
    for i in 0..5 {
        assert_eq!(run_dirs(&hosts, i), Vec::<String>::new(), "host {i}");
    }
}

#[test]
fn a_leaf_down_is_unreachable_and_the_other_leaves_run() {
    let hosts = TestHosts::start(3);
    let down = unused_addr();
    let (relay, inv) = star(&hosts, &[hosts.addr(1), down.clone(), hosts.addr(2)]);
    let limit = format!("!{relay}");
    let out = exec(&hosts, &inv, &["--limit", &limit, "--", "echo up"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("2 ok, 1 unreachable"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("unreachable: {down}: connection refused")),
        "{}",
        out.stderr
    );
    assert_eq!(
        out.stdout.lines().filter(|l| l.ends_with(": up")).count(),
        2,
        "{}",
        out.stdout
    );
}

#[test]
fn a_relay_down_marks_its_whole_subtree_unreachable_promptly() {
    let hosts = TestHosts::start(3);
    let relay = unused_addr();
    let nodes = vec![
        node(hosts.addr(0), None),
        node(relay.clone(), None),
        node(hosts.addr(1), Some(&relay)),
        node(hosts.addr(2), Some(&relay)),
    ];
    let inv = write_tree(&hosts, "tree.yaml", &nodes, false);
    let limit = format!("!{relay}");
    let started = Instant::now();
    let out = exec(&hosts, &inv, &["--limit", &limit, "--", "echo up"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("1 ok, 2 unreachable"), "{}", out.stderr);
    let leaves = common_fold(&hosts.addr(1), &hosts.addr(2));
    assert!(
        out.stderr.contains(&format!(
            "unreachable: {leaves}: relay {relay}: connection refused"
        )),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout, format!("{}: up\n", hosts.addr(0)));
}

#[test]
fn a_relay_killed_mid_run_ends_its_subtree_at_once_and_leaves_nothing_running() {
    let hosts = TestHosts::start(3);
    let (relay, child, relays) = two_leaves_sleeping(&hosts, "sleep 51515");
    let killed = Instant::now();
    // SAFETY: a process of this test's own fleet.
    unsafe { libc::kill(relays[0] as i32, libc::SIGKILL) };
    let (code, stderr) = stderr_of(child);
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "took {:?}",
        killed.elapsed()
    );
    assert_eq!(code, 3, "{stderr}");
    let leaves = common_fold(&hosts.addr(1), &hosts.addr(2));
    assert!(
        stderr.contains(&format!(
            "unreachable: {leaves}: relay {relay}: ended without finishing"
        )),
        "{stderr}"
    );
    wait_until(
        Duration::from_secs(10),
        "the leaves' commands to go",
        || processes_with("sleep 51515").is_empty(),
    );
    assert!(!pid_alive(relays[0]));
    wait_until(Duration::from_secs(5), "every run dir to go", || {
        (0..3).all(|i| run_dirs(&hosts, i).is_empty())
    });
}

#[test]
fn ctrl_c_mid_run_stops_the_whole_tree_and_leaves_no_process_or_run_dir() {
    let hosts = TestHosts::start(5);
    let (r1, r2, inv) = depth_two(&hosts);
    let payload = payload(
        hosts.dir(),
        "sleeper",
        "#!/bin/sh\necho started\nexec sleep 61616\n",
    );
    let limit = format!("!{r1},!{r2}");
    let results = hosts.dir().join("results");
    let args = payload_args(&limit, &payload, &results);
    let child = start_and_wait(&hosts, &inv, &args, "started", 3);
    wait_until(Duration::from_secs(10), "three sleeping leaves", || {
        processes_with("sleep 61616").len() >= 3
    });
    assert!(
        !run_dirs(&hosts, 2).is_empty(),
        "the leaf has no run dir while running"
    );
    let relays = [relay_processes(&hosts, 0), relay_processes(&hosts, 1)];
    assert!(relays.iter().all(|r| r.len() == 1), "{relays:?}");
    let interrupted = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let (code, stderr) = stderr_of(child);
    assert!(
        interrupted.elapsed() < Duration::from_secs(15),
        "took {:?}",
        interrupted.elapsed()
    );
    assert_eq!(code, 130, "{stderr}");
    assert!(stderr.contains("3 cancelled"), "{stderr}");
    wait_until(
        Duration::from_secs(10),
        "every process of the run to go",
        || {
            processes_with("sleep 61616").is_empty()
                && !relays.iter().flatten().any(|&p| pid_alive(p))
        },
    );
    // The hosts' wrappers remove the run dirs once the processes are gone.
    wait_until(Duration::from_secs(5), "every run dir to go", || {
        (0..5).all(|i| run_dirs(&hosts, i).is_empty())
    });
    for i in 0..5 {
        if is_root() {
            assert_eq!(
                control_dirs(&hosts, i),
                Vec::<String>::new(),
                "control dirs on host {i}"
            );
        }
    }
}

/// Starts an ssh-agent holding the fleet's key; returns its socket and pid.
fn agent_with_the_fleet_key(hosts: &TestHosts) -> (PathBuf, u32) {
    let sock = hosts.dir().join("agent.sock");
    let out = Command::new("ssh-agent")
        .arg("-a")
        .arg(&sock)
        .arg("-s")
        .output()
        .expect("run ssh-agent");
    let text = String::from_utf8_lossy(&out.stdout);
    let pid: u32 = text
        .split(';')
        .find_map(|p| p.trim().strip_prefix("SSH_AGENT_PID="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("ssh-agent said {text}"));
    let added = Command::new("ssh-add")
        .arg(hosts.dir().join("id_ed25519"))
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    (sock, pid)
}

#[test]
fn leaves_log_in_with_the_initiators_agent_only_where_the_relay_forwards_it() {
    let hosts = TestHosts::start(3);
    let (sock, agent) = agent_with_the_fleet_key(&hosts);
    let relay = hosts.addr(0);
    let limit = format!("!{relay}");
    let go = |forward: bool| {
        let mut nodes = vec![node(relay.clone(), None)];
        nodes[0].extra = format!("forward_agent: {forward}");
        nodes.extend((1..3).map(|i| node(hosts.addr(i), Some(&relay))));
        let inv = write_tree(&hosts, &format!("agent-{forward}.yaml"), &nodes, true);
        let out = exec_command(
            &inv,
            &hosts.ssh_config(),
            &["--limit", &limit, "--", "echo in"],
        )
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (with, with_err) = go(true);
    let (without, without_err) = go(false);
    // SAFETY: the agent this test started.
    unsafe { libc::kill(agent as i32, libc::SIGTERM) };
    assert_eq!(with, Some(0), "{with_err}");
    assert_eq!(without, Some(3), "{without_err}");
    assert!(
        without_err.contains("authentication failed"),
        "{without_err}"
    );
}

#[test]
fn leaves_host_keys_are_checked_strictly_on_the_relay() {
    let hosts = TestHosts::start(3);
    // The initiator knows the relay and leaf 1, not leaf 2.
    let known = std::fs::read_to_string(hosts.dir().join("known_hosts")).unwrap();
    let lines: String = known
        .lines()
        .filter(|l| !l.starts_with(&format!("[{}]", hosts.addr(2))))
        .map(|l| format!("{l}\n"))
        .collect();
    let partial = hosts.write_yaml("partial_known_hosts", &lines);
    let config = std::fs::read_to_string(hosts.ssh_config())
        .unwrap()
        .replace(
            &hosts.dir().join("known_hosts").display().to_string(),
            &partial.display().to_string(),
        );
    let config = hosts.write_yaml("ssh_config_partial", &config);
    let (relay, inv) = star(&hosts, &[hosts.addr(1), hosts.addr(2)]);
    let limit = format!("!{relay}");
    let out = exec_command(&inv, &config, &["--limit", &limit, "--", "echo in"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}: in\n", hosts.addr(1))
    );
    assert!(
        stderr.contains(&format!(
            "unreachable: {}: unknown host key ssh-ed25519 SHA256:",
            hosts.addr(2)
        )),
        "{stderr}"
    );
}

#[test]
fn a_relay_binary_for_another_machine_is_refused_before_anything_is_sent() {
    let hosts = TestHosts::start(2);
    let (relay, inv) = star(&hosts, &[hosts.addr(1)]);
    // An ELF header for a machine this test does not run on.
    let other: u16 = if std::env::consts::ARCH == "riscv64" {
        62
    } else {
        243
    };
    let mut elf = b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00".to_vec();
    elf.extend_from_slice(&other.to_le_bytes());
    elf.resize(64, 0);
    let fake = hosts.dir().join("pushrun-other");
    std::fs::write(&fake, &elf).unwrap();
    let out = exec(
        &hosts,
        &inv,
        &[
            "--limit",
            &format!("!{relay}"),
            "--relay-binary",
            fake.to_str().unwrap(),
            "--",
            "true",
        ],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "failed: {}: relay {relay}: it runs Linux",
            hosts.addr(1)
        )) && out
            .stderr
            .contains("give a pushrun built for it with --relay-binary PATH"),
        "{}",
        out.stderr
    );
    assert!(
        !hosts.tmp_dir(0).join(format!(".pushrun-{}", me())).exists() || !is_root(),
        "something was staged on the relay"
    );
}

#[test]
fn the_timeout_travels_down_to_the_leaves() {
    let hosts = TestHosts::start(3);
    let (relay, inv) = star(&hosts, &[hosts.addr(1), hosts.addr(2)]);
    let limit = format!("!{relay}");
    let started = Instant::now();
    let out = exec(
        &hosts,
        &inv,
        &["--limit", &limit, "--timeout", "1", "--", "sleep 71717"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.code, 3, "{}", out.stderr);
    let leaves = common_fold(&hosts.addr(1), &hosts.addr(2));
    assert!(
        out.stderr
            .contains(&format!("timed out: {leaves}: killed after the 1s timeout")),
        "{}",
        out.stderr
    );
    wait_until(
        Duration::from_secs(10),
        "the leaves' commands to go",
        || processes_with("sleep 71717").is_empty(),
    );
}

#[test]
fn clean_goes_through_the_relay_too() {
    let hosts = TestHosts::start(3);
    let (relay, inv) = star(&hosts, &[hosts.addr(1), hosts.addr(2)]);
    let limit = format!("!{relay}");
    let payload = greeting_payload(hosts.dir());
    let results = hosts.dir().join("results");
    let out = exec(&hosts, &inv, &payload_args(&limit, &payload, &results));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let dir = |i: usize| hosts.tmp_dir(i).join(format!(".pushrun-{}", me()));
    assert!(dir(1).exists() && dir(2).exists());
    let out = pushrun()
        .args(["clean", "--hosts"])
        .arg(&inv)
        .arg("--ssh-config")
        .arg(hosts.ssh_config())
        .args(["--limit", &limit])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("2 hosts in"), "{stderr}");
    if is_root() {
        assert!(
            !dir(1).exists() && !dir(2).exists(),
            "the leaves' dirs are left"
        );
        // The relay keeps its cache (pushrun itself, the payload): it was a hop.
        assert!(dir(0).join("cache").exists());
    }
}

#[test]
fn killing_the_initiator_stops_the_relay_and_its_leaves() {
    let hosts = TestHosts::start(3);
    let (relay, inv) = star(&hosts, &[hosts.addr(1), hosts.addr(2)]);
    let limit = format!("!{relay}");
    let payload = payload(
        hosts.dir(),
        "sleeper",
        "#!/bin/sh\necho started\nexec sleep 81818\n",
    );
    let results = hosts.dir().join("results");
    let mut child = start_and_wait(
        &hosts,
        &inv,
        &payload_args(&limit, &payload, &results),
        "started",
        2,
    );
    let relays = relay_processes(&hosts, 0);
    assert_eq!(relays.len(), 1);
    child.kill().unwrap();
    child.wait().unwrap();
    // The masters die with pushrun, the relay's stdin ends: it stops its
    // leaves, cleans up and exits. Its sshd session may end first, and then
    // the relay no longer descends from the listener: wait for its pid.
    wait_until(
        Duration::from_secs(15),
        "every process of the run to go",
        || processes_with("sleep 81818").is_empty() && !relays.iter().any(|&p| pid_alive(p)),
    );
    wait_until(Duration::from_secs(5), "every run dir to go", || {
        (0..3).all(|i| run_dirs(&hosts, i).is_empty())
    });
    if is_root() {
        assert_eq!(control_dirs(&hosts, 0), Vec::<String>::new());
    }
}

#[test]
fn a_hung_relay_is_given_up_after_its_silence_and_cleans_up_when_it_wakes() {
    let hosts = TestHosts::start(3);
    // this process's own marker: another suite's run on the machine must not count
    let marker = format!("sleep 91919.{}", std::process::id());
    let (relay, child, relays) = two_leaves_sleeping(&hosts, &marker);
    let stopped = Instant::now();
    // SAFETY: a process of this test's own fleet.
    unsafe { libc::kill(relays[0] as i32, libc::SIGSTOP) };
    let (code, stderr) = stderr_of(child);
    // SAFETY: as above.
    unsafe { libc::kill(relays[0] as i32, libc::SIGCONT) };
    let waited = stopped.elapsed();
    assert!(
        waited > Duration::from_secs(25) && waited < Duration::from_secs(45),
        "gave up after {waited:?}"
    );
    assert_eq!(code, 3, "{stderr}");
    let leaves = common_fold(&hosts.addr(1), &hosts.addr(2));
    assert!(
        stderr.contains(&format!(
            "unreachable: {leaves}: relay {relay}: no word from it for 30s: hung?"
        )),
        "{stderr}"
    );
    // Awake again, the relay finds its initiator gone and stops its leaves.
    wait_until(
        Duration::from_secs(15),
        "every process of the run to go",
        || processes_with(&marker).is_empty() && !relays.iter().any(|&p| pid_alive(p)),
    );
    wait_until(Duration::from_secs(5), "every run dir to go", || {
        (0..3).all(|i| run_dirs(&hosts, i).is_empty())
    });
}

#[test]
fn convergence_is_the_whole_trees_and_reaches_the_leaves() {
    let hosts = TestHosts::start(4);
    // host 3 is direct and quiet at once; the leaves behind the relay keep
    // the whole run active while they print
    let (relay, inv) = star(&hosts, &[hosts.addr(1), hosts.addr(2)]);
    let mut text = std::fs::read_to_string(&inv).unwrap();
    text.push_str(&format!("  {}: {{}}\n", hosts.addr(3)));
    std::fs::write(&inv, text).unwrap();
    let marker = format!("converge-{}", std::process::id());
    let script = format!(
        "#!/bin/sh\nif [ \"$(hostname)\" = {direct} ]; then echo quick; exit 0; fi\n\
         for i in 1 2 3; do echo tick $i; sleep 1; done\necho tick 4\n\
         echo partial > \"$PUSHRUN_OUT/partial\"\nexec sh -c 'sleep 1000' {marker}\n",
        direct = hosts.hostname(3)
    );
    let payload = payload(hosts.dir(), "quiet", &script);
    let results = hosts.dir().join("results");
    let limit = format!("!{relay}");
    let mut args = payload_args(&limit, &payload, &results).to_vec();
    args.extend(["--converged-timeout", "2"]);
    let started = Instant::now();
    let out = exec(&hosts, &inv, &args);
    let took = started.elapsed();
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
    // quiet only 2 s after the leaves' last tick (3 s in), not after the direct host's end
    assert!(took >= Duration::from_millis(4500), "ended after {took:?}");
    let s = summary(&results);
    for leaf in [hosts.addr(1), hosts.addr(2)] {
        let h = s["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == leaf.as_str())
            .unwrap();
        assert_eq!(h["status"], "stopped", "{h:#}");
        assert_eq!(h["path"], format!("{relay}/{leaf}"));
        let partial = results.join("latest").join(&leaf).join("out/partial");
        assert_eq!(std::fs::read_to_string(partial).unwrap(), "partial\n");
    }
    wait_until(
        Duration::from_secs(10),
        "the leaves' payloads to go",
        || processes_with(&marker).is_empty(),
    );
    for i in 0..3 {
        assert_eq!(run_dirs(&hosts, i), Vec::<String>::new(), "host {i}");
    }
}

#[test]
fn records_and_sudo_go_through_the_relay_too() {
    if !TestHosts::can_test_users() {
        eprintln!("skipped: needs root and sudo");
        return;
    }
    let leaf = HostOpts {
        sudo: Sudo::NoPasswd,
        ..HostOpts::default()
    };
    let hosts = TestHosts::start_with(&[HostOpts::default(), leaf, leaf]);
    let key = format!("{}/id_ed25519", runtime_dir(&hosts));
    let relay = hosts.addr(0);
    let mut yaml = format!("hosts:\n  {relay}: {{port: 2022, user: {}}}\n", me());
    for i in 1..3 {
        yaml.push_str(&format!(
            "  {}: {{port: 2022, user: {}, via: {relay}, identity_file: {key}, become: true}}\n",
            hosts.addr(i),
            hosts.test_user()
        ));
    }
    let inv = hosts.write_yaml("sudo-tree.yaml", &yaml);
    let script = "#!/bin/sh\nid -un\n\
        perl -MIO::Socket::UNIX -e '$s = IO::Socket::UNIX->new(Peer => $ENV{PUSHRUN_TUNNEL}) or die \"tunnel: $!\\n\"; print $s \"{\\\"n\\\":$_}\\n\" for 1..3'\n";
    let payload = payload(hosts.dir(), "records", script);
    let results = hosts.dir().join("results");
    let limit = format!("!{relay}");
    let mut args = payload_args(&limit, &payload, &results).to_vec();
    args.push("--json");
    let out = exec(&hosts, &inv, &args);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    for i in 1..3 {
        let addr = hosts.addr(i);
        let events: Vec<serde_json::Value> = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|e: &serde_json::Value| e["host"] == addr.as_str())
            .collect();
        let said: Vec<&str> = events
            .iter()
            .filter(|e| e["event"] == "output")
            .map(|e| e["text"].as_str().unwrap())
            .collect();
        assert_eq!(said, ["root"], "{addr}");
        let records: Vec<i64> = events
            .iter()
            .filter(|e| e["event"] == "record")
            .map(|e| e["record"]["n"].as_i64().unwrap())
            .collect();
        assert_eq!(records, [1, 2, 3], "{addr}");
        let saved = results.join("latest").join(&addr).join("records.jsonl");
        assert_eq!(
            std::fs::read_to_string(saved).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n"
        );
    }
}

#[test]
fn an_unattended_run_tries_a_relay_again_until_it_is_up() {
    let hosts = TestHosts::start(3);
    // the relay answers at an address of its own only 3 s in (host 0 behind it)
    let late = unused_addr();
    let port = 2022;
    let key = format!("{}/id_ed25519", runtime_dir(&hosts));
    let mut yaml = format!(
        "defaults: {{port: {port}, user: {}}}\nhosts:\n  gw: {{address: {late}, ssh_options: [\"HostKeyAlias=[{}]:{port}\"]}}\n",
        me(),
        hosts.addr(0)
    );
    for i in 1..3 {
        yaml.push_str(&format!(
            "  {}: {{via: gw, identity_file: {key}}}\n",
            hosts.addr(i)
        ));
    }
    let inv = hosts.write_yaml("late-relay.yaml", &yaml);
    let _forwarder = late_forwarder(
        format!("{late}:{port}"),
        format!("{}:{port}", hosts.addr(0)),
        Duration::from_secs(3),
    );
    let results = hosts.dir().join("results");
    let out = exec(
        &hosts,
        &inv,
        &[
            "--limit",
            "!gw",
            "--converged-timeout",
            "6",
            "--results",
            results.to_str().unwrap(),
            "--",
            "hostname",
        ],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("relay gw: connection refused: trying again in 1s"),
        "{}",
        out.stderr
    );
    for i in 1..3 {
        assert!(
            out.stdout.contains(&hosts.hostname(i)),
            "{}{}",
            out.stdout,
            out.stderr
        );
    }
}

/// `pushrun SUBCOMMAND --hosts INVENTORY --ssh-config … ARGS`, to its end.
fn subcommand(hosts: &TestHosts, inventory: &Path, sub: &str, args: &[&str]) -> crate::common::Run {
    let out = pushrun()
        .arg(sub)
        .arg("--hosts")
        .arg(inventory)
        .arg("--ssh-config")
        .arg(hosts.ssh_config())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run pushrun");
    crate::common::to_run(out)
}

/// The `summary` object of a `--json` run.
fn json_summary(stdout: &str) -> serde_json::Value {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary in\n{stdout}"))
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn copy_goes_through_a_relay_once_and_lands_byte_exact_with_modes_on_every_leaf() {
    if !is_root() {
        eprintln!("skipped: the hosts have their own /tmp only when root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let hosts = TestHosts::start(4);
    let leaves: Vec<String> = (1..4).map(|i| hosts.addr(i)).collect();
    let (relay, inv) = star(&hosts, &leaves);
    let local = tempfile::tempdir().unwrap();
    let big = local.path().join("big.bin");
    std::fs::write(&big, crate::common::noise(2_000_000, 5)).unwrap();
    let tree = local.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("run"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(tree.join("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(tree.join("sub/data"), crate::common::noise(5000, 9)).unwrap();
    std::fs::set_permissions(
        tree.join("sub/data"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    for i in 1..4 {
        std::fs::create_dir(hosts.tmp_dir(i).join("dest")).unwrap();
    }
    let limit = format!("!{relay}");
    let (big_s, tree_s) = (big.to_str().unwrap(), tree.to_str().unwrap());
    let args = ["--limit", &limit, "--json", big_s, tree_s, "/tmp/dest"];
    let out = subcommand(&hosts, &inv, "copy", &args);
    assert_eq!(out.code, 0, "{}", out.all());
    let s = json_summary(&out.stdout);
    assert_eq!(s["ok"], 3, "{s}");
    for i in 1..4 {
        let dest = hosts.tmp_dir(i).join("dest");
        assert_eq!(
            std::fs::read(dest.join("big.bin")).unwrap(),
            std::fs::read(&big).unwrap()
        );
        assert_eq!(
            std::fs::read(dest.join("tree/sub/data")).unwrap(),
            std::fs::read(tree.join("sub/data")).unwrap()
        );
        assert_eq!(mode_of(&dest.join("tree/run")), 0o755, "host {i}");
        assert_eq!(mode_of(&dest.join("tree/sub/data")), 0o600, "host {i}");
    }
    // the relay was a hop: nothing was copied onto it
    assert!(!hosts.tmp_dir(0).join("dest").exists());
    // The archive (a little over 2 MB) crossed to the relay once, not once per leaf.
    let relays = s["relays"].as_array().unwrap_or_else(|| panic!("{s}"));
    assert_eq!(relays.len(), 1, "{s}");
    let archive = relays[0]["payload"]["bytes_sent"].as_u64().unwrap();
    assert!(
        (2_000_000..3_000_000).contains(&archive),
        "the archive crossed {archive} bytes to the relay: {s}"
    );
    assert_eq!(relays[0]["payload"]["files_sent"], 1, "{s}");
    // and the relay removed it after the run
    assert_eq!(run_dirs(&hosts, 0), Vec::<String>::new());

    // In waves of one leaf, the relay is asked three times; its cache keeps
    // the archive, which still crosses once.
    let args = [
        "--limit",
        &limit,
        "--batch",
        "1",
        "--json",
        big_s,
        "/tmp/dest/again",
    ];
    let out = subcommand(&hosts, &inv, "copy", &args);
    assert_eq!(out.code, 0, "{}", out.all());
    let s = json_summary(&out.stdout);
    let relays = s["relays"].as_array().unwrap_or_else(|| panic!("{s}"));
    assert_eq!(relays.len(), 3, "{s}");
    let crossed: u64 = relays
        .iter()
        .map(|r| r["payload"]["bytes_sent"].as_u64().unwrap())
        .sum();
    assert!(
        (2_000_000..3_000_000).contains(&crossed),
        "the archive crossed {crossed} bytes to the relay in three waves: {s}"
    );
    assert_eq!(relays[2]["payload"]["cache_hit"], true, "{s}");
    for i in 1..4 {
        let again = std::fs::read(hosts.tmp_dir(i).join("dest/again")).unwrap();
        assert_eq!(again, std::fs::read(&big).unwrap(), "host {i}");
    }

    // A leaf that cannot take the files fails, named; the others do not.
    std::fs::remove_dir_all(hosts.tmp_dir(3).join("dest")).unwrap();
    std::fs::write(hosts.tmp_dir(3).join("dest"), "x").unwrap();
    let args = ["--limit", &limit, big_s, tree_s, "/tmp/dest"];
    let out = subcommand(&hosts, &inv, "copy", &args);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stderr.contains("2 ok, 1 failed"), "{}", out.stderr);
    let failed = format!("failed: {}: ", hosts.addr(3));
    assert!(out.stderr.contains(&failed), "{}", out.stderr);
}

#[test]
fn fetch_goes_through_a_relay_and_lands_one_right_file_per_leaf_folder() {
    if !is_root() {
        eprintln!("skipped: the hosts have their own /tmp only when root");
        return;
    }
    let hosts = TestHosts::start(4);
    let leaves: Vec<String> = (1..4).map(|i| hosts.addr(i)).collect();
    let (relay, inv) = star(&hosts, &leaves);
    let limit = format!("!{relay}");
    let setup = exec(
        &hosts,
        &inv,
        &[
            "--limit",
            &limit,
            "--",
            "hostname > /tmp/name; mkdir -p /tmp/d; head -c 300000 /dev/urandom > /tmp/d/blob; \
             echo x > /tmp/d/suid; chmod 4777 /tmp/d/suid; ln -s /etc/passwd /tmp/d/pw",
        ],
    );
    assert_eq!(setup.code, 0, "{}", setup.all());
    let local = tempfile::tempdir().unwrap();
    let into = local.path().join("got");
    let into_s = into.to_str().unwrap();
    let out = subcommand(
        &hosts,
        &inv,
        "fetch",
        &["--limit", &limit, "/tmp/name", "/tmp/d", into_s],
    );
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stderr
            .contains("not kept (neither file nor directory): d/pw"),
        "{}",
        out.stderr
    );
    let mut folders: Vec<String> = std::fs::read_dir(&into)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    let mut want = leaves.clone();
    want.sort();
    assert_eq!(folders, want, "one folder per leaf, none for the relay");
    for i in 1..4 {
        let mine = into.join(hosts.addr(i));
        let name = std::fs::read_to_string(mine.join("name")).unwrap();
        assert_eq!(name.trim(), hosts.hostname(i));
        assert_eq!(
            std::fs::read(mine.join("d/blob")).unwrap(),
            std::fs::read(hosts.tmp_dir(i).join("d/blob")).unwrap()
        );
        assert_eq!(
            mode_of(&mine.join("d/suid")),
            0o755,
            "setuid and o+w masked"
        );
        assert!(std::fs::symlink_metadata(mine.join("d/pw")).is_err());
    }

    // the size limit holds behind the relay too
    let out = subcommand(
        &hosts,
        &inv,
        "fetch",
        &["--limit", &limit, "--max-bytes", "100K", "/tmp/d", into_s],
    );
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr
            .contains("the host sent more than 102400 bytes (--max-bytes): stopped"),
        "{}",
        out.stderr
    );
}

#[test]
fn waves_span_direct_and_relayed_hosts_and_skipped_leaves_are_never_contacted() {
    let hosts = TestHosts::start_with(&vec![
        HostOpts {
            debug_log: true,
            ..HostOpts::default()
        };
        7
    ]);
    // Host 0 a relay (a hop) for hosts 1 to 4; 5 and 6 direct. In inventory
    // order: 1 5 | 2 3 | 6 4, in waves of 2; host 1 fails.
    let relay = hosts.addr(0);
    let code = |i: usize| format!("vars: {{CODE: {}}}", if i == 1 { 3 } else { 0 });
    let mut nodes = vec![node(relay.clone(), None)];
    for i in [1, 5, 2, 3, 6, 4] {
        let via = (i <= 4).then_some(relay.as_str());
        let mut n = node(hosts.addr(i), via);
        n.extra = code(i);
        nodes.push(n);
    }
    let inv = write_tree(&hosts, "waves.yaml", &nodes, false);
    let limit = format!("!{relay}");
    let marker = format!("relay-waves-{}", std::process::id());
    let command = format!("echo {marker}; exit $CODE");
    let args = [
        "--limit",
        &limit,
        "--batch",
        "2",
        "--max-fail",
        "0",
        "--",
        &command,
    ];
    let out = exec(&hosts, &inv, &args);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr.contains("1 ok, 1 failed, 4 skipped"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("not started: --max-fail 0 exceeded (1 failed in earlier waves)"),
        "{}",
        out.stderr
    );
    for i in 1..7 {
        let said = out.lines_of(&hosts.addr(i));
        let log = hosts.log(i);
        if i == 1 || i == 5 {
            assert_eq!(said, vec![marker.as_str()], "host {i}");
            assert!(log.contains("Accepted publickey"), "host {i}: {log}");
        } else {
            assert!(said.is_empty(), "host {i}: {said:?}");
            // never contacted, behind the relay or not: no login in its sshd's log
            assert!(!log.contains("Accepted"), "host {i}: {log}");
        }
    }

    // Without --max-fail every wave runs; the relay is asked once per wave
    // it has hosts in (all three here).
    let args = ["--limit", &limit, "--batch", "2", "--json", "--", &command];
    let out = exec(&hosts, &inv, &args);
    assert_eq!(out.code, 1, "{}", out.all());
    let s = json_summary(&out.stdout);
    assert_eq!(
        (s["ok"].as_u64(), s["failed"].as_u64()),
        (Some(5), Some(1)),
        "{s}"
    );
    assert_eq!(s["skipped"], 0, "{s}");
    let relays = s["relays"].as_array().unwrap();
    assert_eq!(relays.len(), 3, "{s}");
    let served: Vec<u64> = relays
        .iter()
        .map(|r| r["hosts"].as_u64().unwrap())
        .collect();
    assert_eq!(served, vec![1, 2, 1], "{s}");
}

#[test]
fn copy_and_fetch_go_through_two_levels_of_relays() {
    if !is_root() {
        eprintln!("skipped: the hosts have their own /tmp only when root");
        return;
    }
    let hosts = TestHosts::start(5);
    let (r1, r2, inv) = depth_two(&hosts);
    let limit = format!("!{r1},!{r2}");
    let local = tempfile::tempdir().unwrap();
    let file = local.path().join("blob");
    std::fs::write(&file, crate::common::noise(300_000, 3)).unwrap();
    let args = ["--limit", &limit, file.to_str().unwrap(), "/tmp/blob"];
    let out = subcommand(&hosts, &inv, "copy", &args);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stderr.contains("3 hosts in"), "{}", out.stderr);
    for i in 2..5 {
        let there = std::fs::read(hosts.tmp_dir(i).join("blob")).unwrap();
        assert_eq!(there, std::fs::read(&file).unwrap(), "host {i}");
    }
    assert!(!hosts.tmp_dir(0).join("blob").exists() && !hosts.tmp_dir(1).join("blob").exists());
    // and back, each leaf into its own folder
    let into = local.path().join("back");
    let args = ["--limit", &limit, "/tmp/blob", into.to_str().unwrap()];
    let out = subcommand(&hosts, &inv, "fetch", &args);
    assert_eq!(out.code, 0, "{}", out.all());
    for i in 2..5 {
        let back = std::fs::read(into.join(hosts.addr(i)).join("blob")).unwrap();
        assert_eq!(back, std::fs::read(&file).unwrap(), "host {i}");
    }
    assert_eq!(std::fs::read_dir(&into).unwrap().count(), 3);
}
