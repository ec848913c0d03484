//! Hostile hosts, the initiator's side: whatever a host sends (results with
//! setuid bits, terminal escapes, names that clash with pushrun's own files,
//! a connection that dies mid-run) must not reach past its own results.
//! Each host here is a real loopback sshd; the attacker is a payload or a
//! command that sends what a compromised host would.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::{self, TestHosts, host_summary, summary};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes an executable payload dir whose entry point is `run`.
fn payload(dir: &Path, run: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("run");
    std::fs::write(&p, run).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A payload that plants what an attacker would want on the initiator: a
/// setuid copy of a shell, a setgid and a world-writable file, a sticky
/// world-writable dir, a symlink to a secret, a fifo.
const PLANT: &str = r#"#!/bin/sh
cd "$PUSHRUN_OUT" || exit 1
cp /bin/sh suid && chmod 4755 suid
printf 'g' > sgid && chmod 2755 sgid
printf 'w' > world && chmod 666 world
mkdir open && chmod 1777 open && printf 'in' > open/f && chmod 777 open/f
ln -s /etc/passwd link
mkfifo fifo
printf '\000\001\377' > bin
"#;

#[test]
fn results_are_unpacked_as_data_without_setuid_or_writable_bits() {
    let hosts = TestHosts::start(1);
    let scratch = tempfile::tempdir().unwrap();
    let (pl, res) = (scratch.path().join("pl"), scratch.path().join("res"));
    payload(&pl, PLANT);
    let run = common::exec(
        &hosts,
        &hosts.hosts_yaml(),
        &["--payload", s(&pl), "--results", s(&res)],
    );
    let out = res.join("latest").join(hosts.addr(0)).join("out");
    let mode = |p: &str| {
        std::fs::symlink_metadata(out.join(p))
            .unwrap_or_else(|e| panic!("{p}: {e}\n{}", run.all()))
            .permissions()
            .mode()
    };
    for f in ["suid", "sgid", "world", "open", "open/f", "bin"] {
        let m = mode(f) & 0o7777;
        assert_eq!(m & 0o7022, 0, "{f} kept mode {m:o}");
    }
    assert!(std::fs::metadata(out.join("open")).unwrap().is_dir());
    assert_eq!(
        std::fs::read(out.join("suid")).unwrap(),
        std::fs::read("/bin/sh").unwrap()
    );
    assert_eq!(std::fs::read(out.join("bin")).unwrap(), b"\x00\x01\xff");
    assert!(
        std::fs::symlink_metadata(out.join("link")).is_err(),
        "a symlink was made"
    );
    assert!(
        std::fs::symlink_metadata(out.join("fifo")).is_err(),
        "a fifo was made"
    );
    let h = host_summary(&summary(&res), &hosts.addr(0)).clone();
    assert!(
        run.stderr.contains("not regular files or dirs, left out"),
        "{}\n{h}",
        run.all()
    );
}

#[test]
fn control_characters_from_a_host_are_shown_escaped() {
    let hosts = TestHosts::start(1);
    let cmd = r"printf 'ok\rSPOOF host9: ok\n\033]0;title\007\n\302\233c\177tab\tend\n'; printf 'err\033[2J\n' >&2";
    for mode in [&[][..], &["--gather"][..]] {
        let mut args = mode.to_vec();
        args.extend(["--", cmd]);
        let run = common::exec(&hosts, &hosts.hosts_yaml(), &args);
        assert_eq!(run.code, 0, "{}", run.all());
        let all = run.all();
        assert!(
            !all.contains(['\r', '\x1b', '\x07', '\u{9b}', '\x7f']),
            "{all:?}"
        );
        assert!(all.contains(r"ok\x0dSPOOF host9: ok"), "{all}");
        assert!(all.contains(r"\x1b]0;title\x07"), "{all}");
        assert!(all.contains(r"\u{9b}c\x7ftab	end"), "{all}");
        assert!(all.contains(r"err\x1b[2J"), "{all}");
    }
    // --json keeps the raw bytes
    let run = common::exec(&hosts, &hosts.hosts_yaml(), &["--json", "--", cmd]);
    assert!(
        run.stdout.contains("\\r") || run.stdout.contains("DVNQT09G"),
        "{}",
        run.stdout
    );
}

#[test]
fn host_folders_never_clash_with_each_other_or_with_pushrun_files() {
    let hosts = TestHosts::start(1);
    let addr = hosts.addr(0);
    let names = ["summary.json", "run.log", "a/b", "a_b", ".hidden"];
    let mut yaml = String::from("hosts:\n");
    for n in names {
        yaml.push_str(&format!("  \"{n}\":\n    address: {addr}\n"));
    }
    let inv = hosts.write_yaml("clash.yaml", &yaml);
    let res = tempfile::tempdir().unwrap();
    let run = common::exec(
        &hosts,
        &inv,
        &["--results", s(res.path()), "--", "echo $PUSHRUN_HOST"],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    let sum = summary(res.path());
    let root = res.path().join("latest");
    let mut folders = std::collections::HashSet::new();
    for n in names {
        let folder = host_summary(&sum, n)["folder"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            !folder.contains('/') && !folder.starts_with('.'),
            "{folder}"
        );
        assert_eq!(
            std::fs::read_to_string(root.join(&folder).join("exit_status")).unwrap(),
            "0\n"
        );
        folders.insert(folder);
    }
    assert_eq!(folders.len(), names.len(), "{folders:?}");
    assert!(root.join("summary.json").is_file());
}

#[test]
fn a_large_range_is_listed_whole_and_in_order() {
    let out = common::pushrun()
        .args(["hosts", "-w", "node[1-200000]"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 200_000);
    assert_eq!((lines[0], lines[199_999]), ("node1", "node200000"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("200000 hosts: node[1-200000]"));
}

#[test]
fn ssh_keeps_its_own_reason_for_a_name_it_refuses_and_user_is_checked() {
    let hosts = TestHosts::start(1);
    let addr = hosts.addr(0);
    let inv = hosts.write_yaml(
        "bad-user.yaml",
        &format!("hosts:\n  h1:\n    address: {addr}\n    user: \"a;b\"\n"),
    );
    let run = common::exec(&hosts, &inv, &["--", "true"]);
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(
        run.stderr
            .contains("h1: remote username contains invalid characters"),
        "{}",
        run.all()
    );
    // --user goes through the inventory's own check: no host is contacted
    for bad in ["a b", "x@y", "-oProxyCommand=touch"] {
        let run = common::exec(
            &hosts,
            &hosts.hosts_yaml(),
            &[&format!("--user={bad}"), "--", "true"],
        );
        assert_eq!(run.code, 2, "{bad}: {}", run.all());
        assert!(run.stderr.contains("bad user name"), "{bad}: {}", run.all());
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

/// Kills host `i`'s sshd with SIGKILL: the listener and every process
/// below it (the sessions pushrun is connected to), as a host that died.
fn kill_sshd(hosts: &TestHosts, i: usize) {
    let sshd = hosts.listener_pids()[i];
    let mut doomed = vec![sshd];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let mut up = parent_of(pid);
        while let Some(p) = up.filter(|&p| p > 1) {
            if p == sshd {
                doomed.push(pid);
                break;
            }
            up = parent_of(p);
        }
    }
    for pid in doomed {
        // SAFETY: kill(2) on a process of this test's own fleet.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// Starts pushrun, waits for `started` in its stdout, kills the host's
/// sshd, and returns what pushrun said in the end.
fn killed_mid_run(hosts: &TestHosts, args: &[&str]) -> common::Run {
    use std::io::{BufRead, Read};
    let mut child = common::spawn_exec(hosts, &hosts.hosts_yaml(), args);
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("started") {
            break;
        }
        line.clear();
    }
    assert!(seen.contains("started"), "{seen}");
    kill_sshd(hosts, 0);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    common::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: seen + &rest,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_host_whose_sshd_dies_mid_command_is_unreachable_with_a_reason() {
    let hosts = TestHosts::start(1);
    let run = killed_mid_run(&hosts, &["--", "echo started; sleep 60"]);
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(run.stderr.contains("unreachable: "), "{}", run.all());
    let said = format!(
        "connection lost: Connection to {} closed by remote host",
        hosts.addr(0)
    );
    assert!(run.stderr.contains(&said), "{}", run.all());
}

#[test]
fn a_host_whose_sshd_dies_mid_payload_is_unreachable_with_a_reason() {
    let hosts = TestHosts::start(1);
    let scratch = tempfile::tempdir().unwrap();
    let (pl, res) = (scratch.path().join("pl"), scratch.path().join("res"));
    payload(&pl, "#!/bin/sh\necho started\nsleep 60\n");
    let run = killed_mid_run(&hosts, &["--payload", s(&pl), "--results", s(&res)]);
    assert_eq!(run.code, 3, "{}", run.all());
    let h = host_summary(&summary(&res), &hosts.addr(0)).clone();
    assert_eq!(h["status"], "unreachable", "{h}\n{}", run.all());
    let reason = h["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("connection lost: ") && reason.len() > 20,
        "{h}"
    );
}

#[test]
fn results_over_the_limit_fail_that_host_and_the_others_go_on() {
    let hosts = TestHosts::start(2);
    let scratch = tempfile::tempdir().unwrap();
    let (pl, res) = (scratch.path().join("pl"), scratch.path().join("res"));
    // host 0 sends 64 MiB of zeros (a few hundred KB on the wire), host 1 a small file
    payload(
        &pl,
        &format!(
            "#!/bin/sh\nif [ \"$PUSHRUN_HOST\" = {} ]; then\n  head -c 67108864 /dev/zero > \"$PUSHRUN_OUT/zeros\"\nelse\n  echo small > \"$PUSHRUN_OUT/small\"\nfi\n",
            hosts.addr(0)
        ),
    );
    let run = common::exec(
        &hosts,
        &hosts.hosts_yaml(),
        &[
            "--payload",
            s(&pl),
            "--results",
            s(&res),
            "--max-results",
            "8M",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    let sum = summary(&res);
    let big = host_summary(&sum, &hosts.addr(0));
    assert_eq!(big["status"], "failed", "{big}");
    assert_eq!(
        big["reason"],
        "results over the --max-results limit of 8 MiB: not kept"
    );
    let root = res.join("latest");
    let folder = root.join(hosts.addr(0));
    assert!(!folder.join("out/zeros").exists());
    assert!(!folder.join("out.tar.gz.part").exists());
    assert_eq!(host_summary(&sum, &hosts.addr(1))["status"], "ok");
    assert_eq!(
        std::fs::read(root.join(hosts.addr(1)).join("out/small")).unwrap(),
        b"small\n"
    );
    // the same results under the default limit come back whole
    let run = common::exec(
        &hosts,
        &hosts.hosts_yaml(),
        &[
            "--payload",
            s(&pl),
            "--results",
            s(&res),
            "-w",
            &hosts.addr(0),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    let zeros = std::fs::metadata(res.join("latest").join(hosts.addr(0)).join("out/zeros"));
    assert_eq!(zeros.unwrap().len(), 64 << 20);
}

#[test]
fn bad_sizes_for_max_results_are_refused() {
    for bad in ["0", "12Q", "lots", "99999999999T"] {
        let out = common::pushrun()
            .args([
                "exec",
                "-w",
                "127.0.0.1",
                "--max-results",
                bad,
                "--",
                "true",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--max-results"), "{bad}: {err}");
    }
}

#[test]
fn gather_keeps_a_sample_and_still_folds_hosts_with_the_same_output() {
    let hosts = TestHosts::start(2);
    // 1,000,000 lines (6.9 MB) from both hosts: the same output, one block
    let run = common::exec(
        &hosts,
        &hosts.hosts_yaml(),
        &["--gather", "--", "seq 1 1000000"],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains("(2 hosts, exit 0)"), "{}", run.stdout);
    let shown: Vec<&str> = run.stdout.lines().collect();
    assert!(
        shown.contains(&"1") && shown.contains(&"3000"),
        "{}",
        run.stdout
    );
    assert!(!shown.contains(&"1000000"), "the whole output was kept");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with('[') && l.ends_with("bytes) not shown]")),
        "{}",
        run.stdout
    );
    // the last line differs on one host: two blocks
    let cmd = format!(
        "seq 1 1000000; case \"$SSH_CONNECTION\" in *' {} '*) echo odd;; esac",
        hosts.addr(0)
    );
    let run = common::exec(&hosts, &hosts.hosts_yaml(), &["--gather", "--", &cmd]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(
        run.stdout.matches("(1 host, exit 0)").count(),
        2,
        "{}",
        run.stdout
    );
}

/// Host 0 a relay, hosts 1 and 2 leaves behind it.
fn behind_a_relay(hosts: &TestHosts) -> std::path::PathBuf {
    let env = std::fs::read_to_string(hosts.dir().join("fleet.env")).unwrap();
    let runtime = env
        .lines()
        .find_map(|l| l.strip_prefix("RUNTIME_DIR="))
        .expect("RUNTIME_DIR in fleet.env");
    let me = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    let me = String::from_utf8(me.stdout).unwrap();
    let mut yaml = format!(
        "defaults: {{port: 2022, user: {}}}\nhosts:\n  {}: {{}}\n",
        me.trim(),
        hosts.addr(0)
    );
    for i in 1..3 {
        yaml.push_str(&format!(
            "  {}: {{via: {}, identity_file: {runtime}/id_ed25519}}\n",
            hosts.addr(i),
            hosts.addr(0)
        ));
    }
    hosts.write_yaml("relayed.yaml", &yaml)
}

#[test]
fn results_through_a_relay_come_in_pieces_and_the_limit_fails_only_that_leaf() {
    let hosts = TestHosts::start(3);
    let inv = behind_a_relay(&hosts);
    let scratch = tempfile::tempdir().unwrap();
    let (pl, res) = (scratch.path().join("pl"), scratch.path().join("res"));
    // leaf 1: 24 MiB that do not compress, and their digest as the host saw them
    payload(
        &pl,
        &format!(
            "#!/bin/sh\ncd \"$PUSHRUN_OUT\" || exit 1\nif [ \"$PUSHRUN_HOST\" = {} ]; then\n  head -c 25165824 /dev/urandom > big\n  sha256sum big | cut -c1-64 > big.sha\nelse\n  echo small > small\nfi\n",
            hosts.addr(1)
        ),
    );
    let leaves = format!("{},{}", hosts.addr(1), hosts.addr(2));
    let args = [
        "--payload",
        s(&pl),
        "--results",
        s(&res),
        "--limit",
        &leaves,
    ];
    let run = common::exec(&hosts, &inv, &args);
    assert_eq!(run.code, 0, "{}", run.all());
    let out = res.join("latest").join(hosts.addr(1)).join("out");
    let big = std::fs::read(out.join("big")).unwrap();
    assert_eq!(big.len(), 24 << 20);
    let sha = std::process::Command::new("sha256sum")
        .arg(out.join("big"))
        .output()
        .unwrap();
    let want = std::fs::read_to_string(out.join("big.sha")).unwrap();
    assert_eq!(String::from_utf8_lossy(&sha.stdout)[..64], *want.trim());

    let mut limited = args.to_vec();
    limited.extend(["--max-results", "8M"]);
    let run = common::exec(&hosts, &inv, &limited);
    assert_eq!(run.code, 1, "{}", run.all());
    let sum = summary(&res);
    let h = host_summary(&sum, &hosts.addr(1));
    assert_eq!(h["status"], "failed", "{h}");
    assert_eq!(
        h["reason"],
        "results over the --max-results limit of 8 MiB: not kept"
    );
    assert_eq!(host_summary(&sum, &hosts.addr(2))["status"], "ok");
}

/// Runs `cmd` on host `i` as the login user; its stdout, trimmed.
fn on_host(hosts: &TestHosts, i: usize, cmd: &str) -> String {
    let out = hosts.ssh(i, cmd);
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_remote_tmp_anyone_may_write_to_without_the_sticky_bit_is_refused() {
    let hosts = TestHosts::start(1);
    let scratch = tempfile::tempdir().unwrap();
    let pl = scratch.path().join("pl");
    payload(&pl, "#!/bin/sh\necho payload-ran\n");
    // this test's own dir (its pid in the name): other tests share the host's /tmp
    let shared = format!("/tmp/open-{}", std::process::id());
    on_host(
        &hosts,
        0,
        &format!("rm -rf {shared}; mkdir -m 777 {shared}"),
    );
    let yaml = format!(
        "hosts:\n  h:\n    address: {}\n    remote_tmp: {shared}\n",
        hosts.addr(0)
    );
    let inv = hosts.write_yaml("open.yaml", &yaml);
    on_host(&hosts, 0, &format!("chmod 777 {shared}"));
    let run = common::exec(&hosts, &inv, &["--payload", s(&pl)]);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(!run.stdout.contains("payload-ran"), "{}", run.all());
    assert!(
        run.stderr.contains(&format!(
            "{shared} is writable by anyone and not sticky (mode 777)"
        )),
        "{}",
        run.all()
    );
    // nothing was made in it for another user to swap
    assert_eq!(on_host(&hosts, 0, &format!("ls -A {shared} | wc -l")), "0");
    // sticky, as /tmp is: used
    on_host(&hosts, 0, &format!("chmod 1777 {shared}"));
    let run = common::exec(&hosts, &inv, &["--payload", s(&pl)]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains("payload-ran"), "{}", run.all());
    on_host(&hosts, 0, &format!("rm -rf {shared}"));
}

#[test]
fn a_symlink_inside_the_cache_is_damage_and_never_written_through() {
    let hosts = TestHosts::start(1);
    let scratch = tempfile::tempdir().unwrap();
    let (pl, res) = (scratch.path().join("pl"), scratch.path().join("res"));
    payload(&pl, "#!/bin/sh\ncat \"$PUSHRUN_PAYLOAD/sub/f\"\n");
    std::fs::create_dir_all(pl.join("sub")).unwrap();
    std::fs::write(pl.join("sub/f"), "genuine\n").unwrap();
    let yaml = hosts.hosts_yaml();
    let run = common::exec(&hosts, &yaml, &["--payload", s(&pl)]);
    assert_eq!(run.code, 0, "{}", run.all());
    let elsewhere = format!("/tmp/elsewhere-{}", std::process::id());
    // the cached payload's sub dir, swapped for a symlink to a copy elsewhere
    let base = "/tmp/.pushrun-$(id -un)";
    let dir = on_host(
        &hosts,
        0,
        &format!("grep -l sub/f {base}/manifests/* | head -n 1 | sed 's,/manifests/,/cache/,'"),
    );
    assert!(dir.contains("/cache/"), "{dir}");
    for (round, content) in [(0, "genuine"), (1, "planted")] {
        on_host(
            &hosts,
            0,
            &format!(
                "rm -rf {elsewhere} {dir}/sub && mkdir {elsewhere} && \
                 printf '{content}\\n' > {elsewhere}/f && ln -s {elsewhere} {dir}/sub"
            ),
        );
        let run = common::exec(&hosts, &yaml, &["--payload", s(&pl), "--results", s(&res)]);
        assert_eq!(run.code, 0, "{round}: {}", run.all());
        assert!(run.stdout.contains("genuine"), "{round}: {}", run.all());
        let h = host_summary(&summary(&res), &hosts.addr(0)).clone();
        assert_eq!(h["cache_hit"], false, "{round}: {h}");
        // the cache holds a real dir again; the symlink's target is as planted
        assert_eq!(
            on_host(
                &hosts,
                0,
                &format!("[ -L {dir}/sub ] || [ ! -d {dir}/sub ] && echo link || cat {dir}/sub/f")
            ),
            "genuine",
            "{round}"
        );
        assert_eq!(
            on_host(&hosts, 0, &format!("cat {elsewhere}/f")),
            content,
            "{round}: written through the symlink"
        );
    }
    on_host(&hosts, 0, &format!("rm -rf {elsewhere}"));
}

/// Bytes that do not compress: building the upload takes a while.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

#[test]
fn staging_cut_short_by_a_signal_leaves_no_run_dir() {
    let hosts = TestHosts::start(1);
    let scratch = tempfile::tempdir().unwrap();
    let runs = "/tmp/.pushrun-$(id -un)/runs";
    for (round, signal) in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
        .into_iter()
        .enumerate()
    {
        let pl = scratch.path().join(format!("pl{round}"));
        payload(&pl, "#!/bin/sh\necho payload-ran\n");
        // new content each round, so that each is uploaded
        std::fs::write(pl.join("big.bin"), noise(96 << 20, 7 + round as u64)).unwrap();
        let mut child = common::spawn_exec(&hosts, &hosts.hosts_yaml(), &["--payload", s(&pl)]);
        // the check has made the run dir; the upload is being built or sent
        let start = std::time::Instant::now();
        while on_host(&hosts, 0, &format!("ls -A {runs} 2>/dev/null | wc -l")) == "0" {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "{round}: no run dir"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "{round}: pushrun ended"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            !text.contains("payload-ran"),
            "{round}: staged first: {text}"
        );
        let start = std::time::Instant::now();
        loop {
            let left = on_host(&hosts, 0, &format!("ls -A {runs} | wc -l"));
            if left == "0" {
                break;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "{round}: run dir left: {}\n{text}",
                on_host(&hosts, 0, &format!("ls -laR {runs}"))
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

#[test]
fn a_check_failing_on_a_full_disk_leaves_no_run_dir() {
    if !common::is_root() {
        eprintln!("skipped: a small /tmp needs root (mount namespaces)");
        return;
    }
    let hosts = TestHosts::start_with(&[common::HostOpts {
        small_tmp: true,
        ..common::HostOpts::default()
    }]);
    let scratch = tempfile::tempdir().unwrap();
    let pl = scratch.path().join("pl");
    payload(&pl, "#!/bin/sh\necho payload-ran\n");
    let base = "/tmp/.pushrun-$(id -un)";
    // BASE is there, and one page is left: enough for the check's probe and
    // lock, not for the run's digest file (dirs take no pages on tmpfs)
    on_host(
        &hosts,
        0,
        &format!(
            "umask 077; mkdir -p {base}/runs {base}/cache {base}/manifests; \
             dd if=/dev/zero of=/tmp/fill bs=4k 2>/dev/null; truncate -s -4096 /tmp/fill"
        ),
    );
    let run = common::exec(
        &hosts,
        &hosts.hosts_yaml(),
        &["--payload", s(&pl), "--remote-tmp", "/tmp"],
    );
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(!run.stdout.contains("payload-ran"), "{}", run.all());
    assert!(
        run.stderr.contains("digest"),
        "not the check's digest write: {}",
        run.all()
    );
    let listing = on_host(&hosts, 0, &format!("ls -laR {base} 2>&1"));
    let left = on_host(&hosts, 0, &format!("ls -A {base}/runs | wc -l"));
    assert_eq!(left, "0", "run dir left behind: {listing}\n{}", run.all());
}

#[test]
fn run_sh_checks_the_base_dir_again_where_it_enters_it() {
    if !common::is_root() {
        eprintln!("skipped: changes BASE in the host's own /tmp, which needs root");
        return;
    }
    let hosts = TestHosts::start(1);
    let scratch = tempfile::tempdir().unwrap();
    let pl = scratch.path().join("pl");
    payload(&pl, "#!/bin/sh\necho payload-ran\n");
    // a real run makes BASE, as a check would have
    let run = common::exec(&hosts, &hosts.hosts_yaml(), &["--payload", s(&pl)]);
    assert_eq!(run.code, 0, "{}", run.all());
    let script = format!("/tmp/run-{}.sh", std::process::id());
    let mut ssh = std::process::Command::new("ssh")
        .arg("-F")
        .arg(hosts.ssh_config())
        .arg(hosts.addr(0))
        .arg(format!("cat > {script}"))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(ssh.stdin.as_mut().unwrap(), pushrun::remote::RUN.as_bytes())
        .unwrap();
    drop(ssh.stdin.take());
    assert!(ssh.wait().unwrap().success());
    let base = "/tmp/.pushrun-root";
    let aside = format!("/tmp/aside-{}", std::process::id());
    // what another user could do between the check and the run where the
    // checks were not kept: loosen BASE, or swap it for a symlink
    for (what, swap, undo, says) in [
        (
            "loosened",
            format!("chmod 755 {base}"),
            format!("chmod 700 {base}"),
            "has mode 755, not 700",
        ),
        (
            "symlinked",
            format!("mv {base} {aside} && ln -s {aside} {base}"),
            format!("rm {base} && mv {aside} {base}"),
            "is a symlink",
        ),
    ] {
        on_host(
            &hosts,
            0,
            &format!(
                "umask 077; mkdir -p {base}/runs/r1 {base}/p && \
                 printf '#!/bin/sh\\necho entered\\n' > {base}/p/run && chmod 700 {base}/p/run && {swap}"
            ),
        );
        let out = hosts.ssh(
            0,
            &format!("sh {script} {base} {base}/p r1 h run </dev/null"),
        );
        on_host(&hosts, 0, &undo);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(!stdout.contains("entered"), "{what}: {stdout}{stderr}");
        assert_eq!(out.status.code(), Some(125), "{what}: {stdout}{stderr}");
        assert!(stderr.contains(says), "{what}: {stderr}");
    }
    on_host(
        &hosts,
        0,
        &format!("rm -rf {script} {base}/runs/r1 {base}/p"),
    );
}

/// `field` (1-based, as proc(5) counts) of `/proc/PID/stat`.
fn stat_field(pid: u32, field: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    rest.split_whitespace().nth(field - 3).map(str::to_string)
}

/// Kills, with SIGKILL, every process of host `i`'s sessions (the sshd
/// processes serving its connections and everything below them) but not
/// its listener: a host whose sshd sessions died (the OOM killer, a crash)
/// and that answers again at once. No trap on the host runs: all are
/// stopped first, so that none sees another die.
fn kill_sessions(hosts: &TestHosts, i: usize) {
    let sshd = hosts.listener_pids()[i];
    let mut doomed = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let mut up = parent_of(pid);
        while let Some(p) = up.filter(|&p| p > 1) {
            if p == sshd {
                doomed.push(pid);
                break;
            }
            up = parent_of(p);
        }
    }
    for signal in [libc::SIGSTOP, libc::SIGKILL] {
        for &pid in &doomed {
            // SAFETY: kill(2) on a process of this test's own fleet.
            unsafe { libc::kill(pid as i32, signal) };
        }
    }
}

/// Kills, with SIGKILL, host `i`'s run-dir guards (check.sh's, left to
/// remove a run dir once its connection is gone): a host where they died
/// too. They are told from other hosts' by their UTS namespace.
fn kill_guards(hosts: &TestHosts, i: usize) {
    let uts = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/uts")).ok();
    let host = uts(hosts.listener_pids()[i]);
    assert!(host.is_some());
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("pushrun-guard") && uts(pid) == host {
            // SAFETY: kill(2) on a process of this test's own fleet.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// The names in `dir` (none when it is absent).
fn names_in(dir: &Path) -> Vec<String> {
    if !dir.exists() {
        return Vec::new();
    }
    common::names_in(dir)
}

/// A connection lost during the upload, with everything on the host that
/// could remove the run dir (the host's sshd sessions with what they ran,
/// and check.sh's guard) killed, leaves the run dir. The next run removes it, since the connection that
/// held it is gone, and leaves alone the run dir of a live connection and
/// one of another machine sharing the remote_tmp.
#[test]
fn a_run_dir_left_by_a_lost_connection_is_removed_by_the_next_run() {
    if !common::is_root() {
        eprintln!("skipped: looks into the host's own /tmp, which needs root");
        return;
    }
    let hosts = TestHosts::start(1);
    let scratch = tempfile::tempdir().unwrap();
    let pl = scratch.path().join("pl");
    payload(&pl, "#!/bin/sh\necho payload-ran\n");
    std::fs::write(pl.join("big.bin"), noise(96 << 20, 11)).unwrap();
    let base = hosts.tmp_dir(0).join(".pushrun-root");
    let (runs, cache) = (base.join("runs"), base.join("cache"));
    let mut child = common::spawn_exec(&hosts, &hosts.hosts_yaml(), &["--payload", s(&pl)]);
    // the upload is being received
    let start = std::time::Instant::now();
    while !names_in(&cache).iter().any(|n| n.starts_with(".stage-")) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "no upload"
        );
        assert!(child.try_wait().unwrap().is_none(), "pushrun ended");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    kill_guards(&hosts, 0);
    kill_sessions(&hosts, 0);
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // a connection lost while staging is a lost connection, not a failure
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("unreachable") && text.contains("connection lost"),
        "{text}"
    );
    let left = names_in(&runs);
    assert_eq!(left.len(), 1, "the lost run's dir: {left:?}\n{text}");
    let owners = base.join("owners");
    let owner = std::fs::read_to_string(owners.join(&left[0])).unwrap();
    assert!(owner.starts_with("host000 "), "{owner}");

    // a live run's dir (held by this host's listener, which lives on), and
    // one of another machine sharing the remote_tmp
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let listener = hosts.listener_pids()[0];
    let started = stat_field(listener, 22).unwrap();
    for (dir, owner) in [
        (
            "live",
            format!("host000 {} {listener} {started}", boot.trim()),
        ),
        ("elsewhere", format!("other-machine {} 1 1", boot.trim())),
    ] {
        std::fs::create_dir_all(runs.join(dir).join("out")).unwrap();
        std::fs::write(owners.join(dir), owner + "\n").unwrap();
    }
    let pl2 = scratch.path().join("pl2");
    payload(&pl2, "#!/bin/sh\necho payload-ran\n");
    let run = common::exec(&hosts, &hosts.hosts_yaml(), &["--payload", s(&pl2)]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains("payload-ran"), "{}", run.all());
    assert_eq!(names_in(&runs), ["elsewhere", "live"], "{}", run.all());
    // the owner files of the removed dir and of the ended run went with them
    assert_eq!(names_in(&owners), ["elsewhere", "live"], "{}", run.all());
}

/// Ctrl-C while the check is verifying the cache (a sha256sum made slow by
/// a shim on the login user's PATH): the run dir the check made is gone.
#[test]
fn ctrl_c_during_the_check_leaves_no_run_dir() {
    if !common::is_root() {
        eprintln!("skipped: a login file for the test user needs root");
        return;
    }
    let hosts = TestHosts::start_with(&[common::HostOpts {
        login_shell: Some("bash"),
        ..common::HostOpts::default()
    }]);
    let user = hosts.test_user();
    let home = hosts.tmp_dir(0).join(format!("home-{user}"));
    let shim = home.join("shim");
    std::fs::create_dir_all(&shim).unwrap();
    let real = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v sha256sum"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let marker = format!("slow-check-{}", std::process::id());
    std::fs::write(
        shim.join("sha256sum"),
        format!(
            "#!/bin/sh\nif [ -e \"$HOME/slow\" ]; then : > \"$HOME/in-sha\"; sh -c 'sleep 30' {marker}; fi\nexec {} \"$@\"\n",
            real.trim()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        shim.join("sha256sum"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(home.join(".bashrc"), "export PATH=\"$HOME/shim:$PATH\"\n").unwrap();
    let inv = hosts.write_yaml(
        "user.yaml",
        &format!("defaults:\n  user: {user}\nhosts:\n  - {}\n", hosts.addr(0)),
    );
    let scratch = tempfile::tempdir().unwrap();
    let pl = scratch.path().join("pl");
    payload(&pl, "#!/bin/sh\necho payload-ran\n");
    // a warm cache: the next check hashes what is there
    let run = common::exec(&hosts, &inv, &["--payload", s(&pl)]);
    assert_eq!(run.code, 0, "{}", run.all());
    let runs = hosts.tmp_dir(0).join(format!(".pushrun-{user}/runs"));
    std::fs::write(home.join("slow"), "").unwrap();
    let mut child = common::spawn_exec(&hosts, &inv, &["--payload", s(&pl)]);
    let start = std::time::Instant::now();
    while !home.join("in-sha").exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "no check"
        );
        assert!(child.try_wait().unwrap().is_none(), "pushrun ended");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(names_in(&runs).len(), 1, "the check's run dir");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("payload-ran"), "{text}");
    common::wait_until(
        std::time::Duration::from_secs(20),
        "the check's run dir removed",
        || names_in(&runs).is_empty(),
    );
    common::wait_until(std::time::Duration::from_secs(20), "the shim gone", || {
        common::processes_with(&marker).is_empty()
    });
}

/// Runs receive.sh (as pushrun sends it) on host 0 as the login user, with
/// `upload` on its stdin; its exit code, stdout and stderr.
fn run_receive(hosts: &TestHosts, args: &str, upload: &[u8]) -> (Option<i32>, String) {
    let script = format!("/tmp/receive-{}.sh", std::process::id());
    let put = |cmd: String, input: &[u8]| {
        let mut ssh = std::process::Command::new("ssh")
            .arg("-F")
            .arg(hosts.ssh_config())
            .arg(hosts.addr(0))
            .arg(cmd)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(ssh.stdin.as_mut().unwrap(), input).unwrap();
        drop(ssh.stdin.take());
        ssh.wait_with_output().unwrap()
    };
    assert!(
        put(
            format!("cat > {script}"),
            pushrun::remote::RECEIVE.as_bytes()
        )
        .status
        .success()
    );
    let out = put(format!("sh {script} {args}"), upload);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// An upload as pushrun sends it: a tar.gz of `.pushrun-expect` and the files.
fn upload_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let mut expect = String::new();
    for (path, data) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        let sum: String = sha2::Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        expect.push_str(&format!("{sum} 644 {} {path}\n", data.len()));
    }
    std::fs::write(dir.path().join(".pushrun-expect"), expect).unwrap();
    let out = std::process::Command::new("tar")
        .args(["-czf", "-", "-C"])
        .arg(dir.path())
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

/// receive.sh, symlink by symlink: where BASE/cache, the target, a dir
/// inside the target, the run dir (no cache) or the lock dir is a symlink
/// (planted by a run, or another user's doing through one), nothing is
/// written where it points.
#[test]
fn receive_writes_through_no_symlink_planted_under_the_base() {
    if !common::is_root() {
        eprintln!("skipped: changes BASE in the host's own /tmp, which needs root");
        return;
    }
    let hosts = TestHosts::start(1);
    let scratch = tempfile::tempdir().unwrap();
    let pl = scratch.path().join("pl");
    payload(&pl, "#!/bin/sh\necho payload-ran\n");
    // a real run makes BASE, as a check would have
    let run = common::exec(&hosts, &hosts.hosts_yaml(), &["--payload", s(&pl)]);
    assert_eq!(run.code, 0, "{}", run.all());
    let base_in = "/tmp/.pushrun-root";
    let base = hosts.tmp_dir(0).join(".pushrun-root");
    let elsewhere = hosts.tmp_dir(0).join("elsewhere");
    let elsewhere_in = "/tmp/elsewhere";
    let (d1, d2, d3) = ("d1".repeat(32), "d2".repeat(32), "d3".repeat(32));
    let fresh = || {
        let _ = std::fs::remove_dir_all(&elsewhere);
        std::fs::create_dir(&elsewhere).unwrap();
    };
    let untouched = |what: &str, text: &str| {
        assert_eq!(names_in(&elsewhere), Vec::<String>::new(), "{what}: {text}");
    };
    let symlink = |at: &Path| std::os::unix::fs::symlink(elsewhere_in, at).unwrap();

    // BASE/cache is a symlink
    fresh();
    let cache = base.join("cache");
    std::fs::rename(&cache, base.join("cache.real")).unwrap();
    symlink(&cache);
    let (code, text) = run_receive(
        &hosts,
        &format!("{base_in} {d1} r1 cache"),
        &upload_of(&[("f", b"one\n")]),
    );
    assert_eq!(code, Some(0), "{text}");
    untouched("cache", &text);
    assert_eq!(std::fs::read(cache.join(&d1).join("f")).unwrap(), b"one\n");

    // the target is a symlink
    fresh();
    symlink(&cache.join(&d2));
    let (code, text) = run_receive(
        &hosts,
        &format!("{base_in} {d2} r2 cache"),
        &upload_of(&[("f", b"two\n")]),
    );
    assert_eq!(code, Some(0), "{text}");
    untouched("target", &text);
    assert_eq!(std::fs::read(cache.join(&d2).join("f")).unwrap(), b"two\n");

    // a dir inside a target that has files is a symlink
    fresh();
    std::fs::create_dir_all(cache.join(&d3)).unwrap();
    std::fs::write(cache.join(&d3).join("keep"), "k").unwrap();
    symlink(&cache.join(&d3).join("sub"));
    let (code, text) = run_receive(
        &hosts,
        &format!("{base_in} {d3} r3 cache"),
        &upload_of(&[("sub/f", b"three\n")]),
    );
    assert_eq!(code, Some(0), "{text}");
    untouched("inside the target", &text);
    assert_eq!(
        std::fs::read(cache.join(&d3).join("sub/f")).unwrap(),
        b"three\n"
    );

    // the run dir of a run without cache is a symlink
    fresh();
    std::fs::create_dir_all(base.join("runs")).unwrap();
    symlink(&base.join("runs/r4"));
    let (code, text) = run_receive(
        &hosts,
        &format!("{base_in} {d1} r4 nocache"),
        &upload_of(&[("f", b"four\n")]),
    );
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains("r4 was a symlink: refusing to follow it"),
        "{text}"
    );
    untouched("run dir", &text);

    // the lock dir is a symlink: no one's lock, and not written through
    fresh();
    symlink(&base.join("lock"));
    let started = std::time::Instant::now();
    let (code, text) = run_receive(
        &hosts,
        &format!("{base_in} {d1} r5 cache"),
        &upload_of(&[("g", b"five\n")]),
    );
    assert_eq!(code, Some(0), "{text}");
    untouched("lock", &text);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "waited for a symlink"
    );
}
