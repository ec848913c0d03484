//! Hosts shaped like real fleets rather than like the plain test hosts: other
//! login shells (dash, zsh, csh, tcsh, fish), login files that print and call
//! stty, a dropbear server, a user without tar or gzip. On each: a command, a cold and a warm payload, the
//! built-in collector, a payload stopped by its timeout, and `pushrun clean`,
//! with results checked byte for byte.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use sha2::Digest;

use crate::common::{
    HostOpts, Run, Sudo, TestHosts, exec, host_summary, is_root, make_payload, names_in, pid_alive,
    processes_with, pushrun, summary, to_run, wait_until,
};

const RUN: &[u8] = b"#!/bin/sh
echo \"hello from $PUSHRUN_HOST\"
printf '\\000\\001\\377binary' > \"$PUSHRUN_OUT/bin.dat\"
mkdir -p \"$PUSHRUN_OUT/sub dir\" && cat \"$PUSHRUN_PAYLOAD/lib/a.txt\" > \"$PUSHRUN_OUT/sub dir/a.txt\"
";

/// The variants, one host each; the test user logs in on all of them.
fn variants() -> Vec<(&'static str, HostOpts)> {
    let shell = |sh: &'static str, chatty: bool| HostOpts {
        login_shell: Some(sh),
        chatty_login: chatty,
        ..HostOpts::default()
    };
    vec![
        ("dash", shell("dash", false)),
        ("zsh, chatty", shell("zsh", true)),
        ("csh, chatty", shell("csh", true)),
        ("tcsh, chatty", shell("tcsh", true)),
        ("fish, chatty", shell("fish", true)),
        ("bash, chatty", shell("bash", true)),
        (
            "dropbear, bash, chatty",
            HostOpts {
                dropbear: true,
                ..shell("bash", true)
            },
        ),
    ]
}

fn inventory(hosts: &TestHosts) -> std::path::PathBuf {
    let mut text = format!("defaults:\n  user: {}\nhosts:\n", hosts.test_user());
    for i in 0..hosts.len() {
        text.push_str(&format!("  - {}\n", hosts.addr(i)));
    }
    hosts.write_yaml("variants.yaml", &text)
}

fn all_ok(run: &Run, n: usize) {
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr.contains(&format!("{n} hosts")) && run.stderr.contains(&format!("{n} ok")),
        "{}",
        run.all()
    );
}

/// Host i's pushrun dir, seen from outside (its /tmp, or its own /var/tmp
/// where /tmp is noexec or read-only, is a dir of the fleet).
fn base(hosts: &TestHosts, i: usize) -> std::path::PathBuf {
    let var_tmp = hosts.dir().join(format!("h{i}/vartmp"));
    let tmp = if var_tmp.is_dir() {
        var_tmp
    } else {
        hosts.tmp_dir(i)
    };
    tmp.join(format!(".pushrun-{}", hosts.test_user()))
}

#[test]
fn every_login_shell_and_dropbear_run_commands_payloads_the_collector_timeouts_and_clean() {
    if !is_root() {
        eprintln!("skipped: the host variants need root");
        return;
    }
    let variants = variants();
    let opts: Vec<HostOpts> = variants.iter().map(|(_, o)| *o).collect();
    let hosts = TestHosts::start_with(&opts);
    let n = hosts.len();
    let inv = inventory(&hosts);
    let scratch = tempfile::tempdir().unwrap();

    // a command, run by the login shell as ssh would
    let run = exec(&hosts, &inv, &["--", "hostname"]);
    all_ok(&run, n);
    for (i, (what, _)) in variants.iter().enumerate() {
        let lines = run.lines_of(&hosts.addr(i));
        assert!(
            lines.contains(&hosts.hostname(i).as_str()),
            "{what}: {lines:?}\n{}",
            run.all()
        );
    }

    // bash read its login file once for that command, as under plain ssh
    for i in [5, 6] {
        let reads = hosts.tmp_dir(i).join("home-pushrun-test/.login-reads");
        assert_eq!(
            std::fs::read_to_string(&reads).unwrap(),
            ".bashrc\n",
            "{}",
            variants[i].0
        );
    }

    payloads_cold_and_warm(&hosts, &inv, &variants, scratch.path());
    collector_timeout_and_clean(&hosts, &inv, &variants, scratch.path());
}

/// A cold payload, then a warm one: results byte for byte, no login noise.
fn payloads_cold_and_warm(
    hosts: &TestHosts,
    inv: &Path,
    variants: &[(&str, HostOpts)],
    scratch: &Path,
) {
    let n = hosts.len();
    let path = |name: &str| scratch.join(name);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let pl = path("pl");
    make_payload(&pl, &[("run", RUN, true), ("lib/a.txt", b"alpha\n", false)]);
    for (round, warm) in [("cold", false), ("warm", true)] {
        let res = path(round);
        let run = exec(hosts, inv, &["--payload", &s(&pl), "--results", &s(&res)]);
        all_ok(&run, n);
        let sum = summary(&res);
        for (i, (what, _)) in variants.iter().enumerate() {
            let addr = hosts.addr(i);
            let h = host_summary(&sum, &addr);
            assert_eq!(h["status"], "ok", "{what} {round}: {h}");
            assert_eq!(h["cache_hit"], warm, "{what} {round}: {h}");
            let dir = res.join("latest").join(&addr);
            assert_eq!(
                std::fs::read_to_string(dir.join("stdout")).unwrap(),
                format!("hello from {addr}\n"),
                "{what} {round}"
            );
            assert_eq!(
                std::fs::read(dir.join("out/bin.dat")).unwrap(),
                b"\x00\x01\xffbinary",
                "{what} {round}"
            );
            assert_eq!(
                std::fs::read(dir.join("out/sub dir/a.txt")).unwrap(),
                b"alpha\n",
                "{what} {round}"
            );
        }
    }
}

/// The built-in collector, a payload stopped by its timeout (what it wrote
/// comes back, nothing is left), then `pushrun clean`.
fn collector_timeout_and_clean(
    hosts: &TestHosts,
    inv: &Path,
    variants: &[(&str, HostOpts)],
    scratch: &Path,
) {
    let n = hosts.len();
    let path = |name: &str| scratch.join(name);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let res = path("facts");
    let run = exec(hosts, inv, &["--results", &s(&res)]);
    all_ok(&run, n);
    for (i, (what, _)) in variants.iter().enumerate() {
        let facts = std::fs::read_to_string(
            res.join("latest")
                .join(hosts.addr(i))
                .join("out/facts.json"),
        )
        .unwrap_or_else(|e| panic!("{what}: {e}\n{}", run.all()));
        let facts: Value = serde_json::from_str(&facts).unwrap();
        assert_eq!(facts["hostname"], hosts.hostname(i).as_str(), "{what}");
    }

    // a payload stopped by its timeout: what it wrote comes back, nothing is left
    let marker = format!("sleep 4{}", std::process::id());
    let slow = path("slow");
    let script = format!("#!/bin/sh\necho partial > \"$PUSHRUN_OUT/partial.txt\"\n{marker}\n");
    make_payload(
        &slow,
        &[
            ("run", script.as_bytes(), true),
            ("pushrun.yaml", b"timeout: 1\n", false),
        ],
    );
    // cold (the upload, then the run, on the check's channel), then warm
    for round in ["cold", "warm"] {
        let res = path(&format!("slow-{round}"));
        let run = exec(hosts, inv, &["--payload", &s(&slow), "--results", &s(&res)]);
        assert_eq!(run.code, 3, "{round}: {}", run.all());
        for (i, (what, _)) in variants.iter().enumerate() {
            let dir = res.join("latest").join(hosts.addr(i));
            assert_eq!(
                std::fs::read_to_string(dir.join("exit_status")).unwrap(),
                "timed out: killed after the 1s timeout\n",
                "{what} {round}"
            );
            assert_eq!(
                std::fs::read_to_string(dir.join("out/partial.txt")).unwrap(),
                "partial\n",
                "{what} {round}"
            );
        }
        wait_until(Duration::from_secs(10), "timed-out payloads gone", || {
            processes_with(&marker).is_empty()
        });
        for (i, (what, _)) in variants.iter().enumerate() {
            let runs = base(hosts, i).join("runs");
            wait_until(Duration::from_secs(10), "run dirs removed", || {
                std::fs::read_dir(&runs).map_or(0, Iterator::count) == 0
            });
            assert!(base(hosts, i).join("cache").is_dir(), "{what}");
        }
    }

    // pushrun clean removes everything
    let out = pushrun()
        .args(["clean", "--hosts"])
        .arg(inv)
        .arg("--ssh-config")
        .arg(hosts.ssh_config())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let run = to_run(out);
    all_ok(&run, n);
    for (i, (what, _)) in variants.iter().enumerate() {
        assert!(
            run.lines_of(&hosts.addr(i))
                .iter()
                .any(|l| l.starts_with("removed ")),
            "{what}: {}",
            run.all()
        );
        assert!(!base(hosts, i).exists(), "{what}");
    }
}

/// Two entries reaching one machine, and three hosts sharing one
/// `remote_tmp` (an NFS home): each runs in and collects from its own run
/// dir, while their runs overlap.
#[test]
fn entries_sharing_a_machine_or_a_remote_tmp_each_get_their_own_results() {
    let hosts = TestHosts::start(3);
    let scratch = tempfile::tempdir().unwrap();
    let shared = hosts.fleet_env("RUNTIME_DIR") + "/shared";
    std::fs::create_dir_all(hosts.dir().join("shared")).unwrap();
    let mut text = String::from("hosts:\n");
    for (name, i, tmp) in [
        ("one-a", 0, None),
        ("one-b", 0, None),
        ("nfs-0", 0, Some(&shared)),
        ("nfs-1", 1, Some(&shared)),
        ("nfs-2", 2, Some(&shared)),
    ] {
        text.push_str(&format!("  {name}:\n    address: {}\n", hosts.addr(i)));
        if let Some(tmp) = tmp {
            text.push_str(&format!("    remote_tmp: {tmp}\n"));
        }
    }
    let inv = hosts.write_yaml("shared.yaml", &text);
    let pl = scratch.path().join("pl");
    make_payload(
        &pl,
        &[(
            "run",
            b"#!/bin/sh\nsleep 1\nprintf '%s' \"$PUSHRUN_HOST\" > \"$PUSHRUN_OUT/who.txt\"\n",
            true,
        )],
    );
    let res = scratch.path().join("res");
    let run = exec(
        &hosts,
        &inv,
        &[
            "--payload",
            pl.to_str().unwrap(),
            "--results",
            res.to_str().unwrap(),
        ],
    );
    all_ok(&run, 5);
    for name in ["one-a", "one-b", "nfs-0", "nfs-1", "nfs-2"] {
        let who = std::fs::read_to_string(res.join("latest").join(name).join("out/who.txt"))
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", run.all()));
        assert_eq!(who, name);
    }
}

/// A noexec /tmp and a read-only /tmp: pushrun falls back to /var/tmp, where
/// a warm run is a cache hit; a `remote_tmp` that cannot be used is one line
/// naming the host, the path and why.
#[test]
fn a_noexec_or_read_only_tmp_falls_back_to_var_tmp() {
    if !is_root() {
        eprintln!("skipped: the host variants need root");
        return;
    }
    let variants = vec![
        (
            "noexec /tmp",
            HostOpts {
                noexec_tmp: true,
                ..HostOpts::default()
            },
        ),
        (
            "read-only /tmp",
            HostOpts {
                readonly_tmp: true,
                ..HostOpts::default()
            },
        ),
    ];
    let opts: Vec<HostOpts> = variants.iter().map(|(_, o)| *o).collect();
    let hosts = TestHosts::start_with(&opts);
    let inv = inventory(&hosts);
    let scratch = tempfile::tempdir().unwrap();
    let run = exec(&hosts, &inv, &["--", "hostname"]);
    all_ok(&run, 2);
    payloads_cold_and_warm(&hosts, &inv, &variants, scratch.path());
    for i in 0..2 {
        assert!(base(&hosts, i).join("cache").is_dir(), "host {i}");
    }
    collector_timeout_and_clean(&hosts, &inv, &variants, scratch.path());

    let pl = scratch.path().join("pl");
    let run = exec(
        &hosts,
        &inv,
        &["--remote-tmp", "/tmp", "--payload", pl.to_str().unwrap()],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    for (i, why) in [
        (0, "files in /tmp cannot be executed (mounted noexec?)"),
        (
            1,
            "cannot create /tmp/.pushrun-pushrun-test: Read-only file system",
        ),
    ] {
        let line = format!("failed: {}: stage: {why}", hosts.addr(i));
        assert!(run.stderr.contains(&line), "{line}\n{}", run.all());
    }
}

/// A user whose PATH lacks tar and gzip (the harness's `--no-tar`), with
/// bash and with dash as the login shell: commands, cold and warm payloads
/// (files sent one per channel, results as plain entries rebuilt as a
/// tar.gz), a damaged cache file repaired, results byte for byte whatever
/// their names, `--become`, the collector, a timeout and `pushrun clean`.
#[test]
fn a_host_without_tar_or_gzip_runs_payloads_file_by_file() {
    if !is_root() {
        eprintln!("skipped: the host variants need root");
        return;
    }
    let no_tar = HostOpts {
        no_tar: true,
        sudo: Sudo::NoPasswd,
        ..HostOpts::default()
    };
    let variants = vec![
        ("no tar, bash", no_tar),
        (
            "no tar, dash",
            HostOpts {
                login_shell: Some("dash"),
                ..no_tar
            },
        ),
    ];
    let opts: Vec<HostOpts> = variants.iter().map(|(_, o)| *o).collect();
    let hosts = TestHosts::start_with(&opts);
    let inv = inventory(&hosts);
    let scratch = tempfile::tempdir().unwrap();

    let run = exec(&hosts, &inv, &["--", "command -v tar || echo no-tar-here"]);
    all_ok(&run, 2);
    for i in 0..2 {
        assert_eq!(
            run.lines_of(&hosts.addr(i)),
            ["no-tar-here"],
            "{}",
            run.all()
        );
    }

    payloads_cold_and_warm(&hosts, &inv, &variants, scratch.path());
    a_damaged_cache_file_is_sent_again(&hosts, &inv, scratch.path());
    without_the_cache(&hosts, &inv, scratch.path());
    results_come_back_byte_for_byte(&hosts, &inv, scratch.path());
    payload_with_become(&hosts, &inv, scratch.path());
    over_the_limit_or_changing_results_fail(&hosts, &inv, scratch.path());
    fetch_without_tar(&hosts, &inv, scratch.path());
    copy_without_tar(&hosts, &inv, scratch.path());
    collector_timeout_and_clean(&hosts, &inv, &variants, scratch.path());
}

/// `pushrun copy` to hosts without tar: files, dirs and symlinks with their
/// modes, merged into what is there, nothing left behind.
fn copy_without_tar(hosts: &TestHosts, inv: &Path, scratch: &Path) {
    let tree = scratch.join("copy/tree");
    make_payload(
        &tree,
        &[
            ("f1", b"one\n", false),
            ("run", b"#!/bin/sh\n", true),
            ("sub/b in\nx", b"\x00\xff\n", false),
            ("sub/deep/e", b"", false),
        ],
    );
    std::os::unix::fs::symlink("f1", tree.join("link")).unwrap();
    std::fs::set_permissions(tree.join("sub"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let solo = scratch.join("copy/solo.bin");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&solo, &big).unwrap();
    let setup = exec(
        hosts,
        inv,
        &[
            "--",
            "rm -rf /tmp/cpd /tmp/cpd-new && mkdir -p /tmp/cpd/tree && echo old > /tmp/cpd/tree/old",
        ],
    );
    all_ok(&setup, 2);
    let copy = |args: &[&Path]| {
        let out = pushrun()
            .args(["copy", "--hosts"])
            .arg(inv)
            .arg("--ssh-config")
            .arg(hosts.ssh_config())
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        to_run(out)
    };
    let run = copy(&[&tree, &solo, Path::new("/tmp/cpd")]);
    all_ok(&run, 2);
    let run = copy(&[&solo, Path::new("/tmp/cpd-new")]);
    all_ok(&run, 2);
    for i in 0..2 {
        let dest = hosts.tmp_dir(i).join("cpd");
        let read = |name: &str| {
            std::fs::read(dest.join(name)).unwrap_or_else(|e| panic!("{name}: {e}\n{}", run.all()))
        };
        assert_eq!(read("tree/f1"), b"one\n");
        assert_eq!(read("tree/run"), b"#!/bin/sh\n");
        assert_eq!(read("tree/sub/b in\nx"), b"\x00\xff\n");
        assert_eq!(read("tree/sub/deep/e"), b"");
        assert_eq!(read("tree/old"), b"old\n", "merged into what was there");
        assert_eq!(read("solo.bin"), big);
        let mode = |name: &str| {
            std::fs::symlink_metadata(dest.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("tree/run"), 0o755);
        assert_eq!(mode("tree/f1"), 0o644);
        assert_eq!(mode("tree/sub"), 0o750);
        assert_eq!(
            std::fs::read_link(dest.join("tree/link")).unwrap(),
            Path::new("f1")
        );
        let left: Vec<_> = names_in(&dest)
            .into_iter()
            .filter(|n| n.starts_with(".pushrun-copy"))
            .collect();
        assert!(left.is_empty(), "stage dir left behind: {left:?}");
        assert_eq!(
            std::fs::read(hosts.tmp_dir(i).join("cpd-new")).unwrap(),
            big
        );
    }
}

/// `pushrun fetch` from hosts without tar: files and dirs byte for byte,
/// whatever their names.
fn fetch_without_tar(hosts: &TestHosts, inv: &Path, scratch: &Path) {
    let setup = exec(
        hosts,
        inv,
        &[
            "--",
            "rm -rf /tmp/fx && mkdir -p /tmp/fx/sub/deeper && printf one > /tmp/fx/one && \
             : > /tmp/fx/empty && printf '\\000\\377' > \"/tmp/fx/sub/b in$(printf '\\nx')\" && \
             hostname > /tmp/name",
        ],
    );
    all_ok(&setup, 2);
    let into = scratch.join("fetched");
    let out = pushrun()
        .args(["fetch", "--hosts"])
        .arg(inv)
        .arg("--ssh-config")
        .arg(hosts.ssh_config())
        .args(["/tmp/fx", "/tmp/name"])
        .arg(&into)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let run = to_run(out);
    all_ok(&run, 2);
    for i in 0..2 {
        let mine = into.join(hosts.addr(i));
        let read = |name: &str| {
            std::fs::read(mine.join(name)).unwrap_or_else(|e| panic!("{name}: {e}\n{}", run.all()))
        };
        assert_eq!(read("fx/one"), b"one");
        assert_eq!(read("fx/empty"), b"");
        assert_eq!(read("fx/sub/b in\nx"), b"\x00\xff");
        assert!(mine.join("fx/sub/deeper").is_dir());
        assert_eq!(
            String::from_utf8(read("name")).unwrap().trim(),
            hosts.hostname(i)
        );
    }
}

/// Plain results are bounded by `--max-results` like any other (host 0:
/// 64 MiB of zeros), and a file that changes while it is collected (host
/// 1: a process left behind keeps writing to it) fails the host, never an
/// `ok` with wrong results. (The file is big enough that sending it takes
/// a while, so the writer appends while it is sent even on a busy machine.)
fn over_the_limit_or_changing_results_fail(hosts: &TestHosts, inv: &Path, scratch: &Path) {
    let marker = format!("grows{}", std::process::id());
    let script = format!(
        "#!/bin/sh
if [ \"$PUSHRUN_HOST\" = {} ]; then
  head -c 67108864 /dev/zero > \"$PUSHRUN_OUT/zeros\"
else
  head -c 4000000 /dev/zero > \"$PUSHRUN_OUT/grows\"
  # through an open descriptor: once collect removes the file, no write
  # makes it again (which would keep the run dir from being removed)
  setsid sh -c 'exec 3>>\"$1/grows\"; while [ -f \"$1/grows\" ]; do echo x >&3; done' {marker} \"$PUSHRUN_OUT\" </dev/null >/dev/null 2>&1 &
  # the writer is under way before the run ends
  while [ \"$(wc -c < \"$PUSHRUN_OUT/grows\")\" -le 4000000 ]; do sleep 0.01; done
fi
",
        hosts.addr(0)
    );
    let pl = scratch.join("limits");
    make_payload(&pl, &[("run", script.as_bytes(), true)]);
    let res = scratch.join("limits-res");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let run = exec(
        hosts,
        inv,
        &[
            "--payload",
            &s(&pl),
            "--results",
            &s(&res),
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
    let grows = host_summary(&sum, &hosts.addr(1));
    assert_eq!(grows["status"], "failed", "{grows}");
    assert_eq!(
        grows["reason"], "collect: grows changed while it was collected",
        "{grows}"
    );
    wait_until(Duration::from_secs(10), "the writer gone", || {
        processes_with(&marker).is_empty()
    });
    for i in 0..2 {
        let runs = base(hosts, i).join("runs");
        wait_until(Duration::from_secs(10), "run dirs removed", || {
            std::fs::read_dir(&runs).map_or(0, Iterator::count) == 0
        });
    }
}

/// The cached file of the last payload run on host 0 named `name`.
fn cached(hosts: &TestHosts, name: &str) -> std::path::PathBuf {
    let cache = base(hosts, 0).join("cache");
    std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path().join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no cached {name} under {}", cache.display()))
}

/// A cached file changed behind pushrun's back is found by its sha256 and
/// sent again (one file), and the results are right.
fn a_damaged_cache_file_is_sent_again(hosts: &TestHosts, inv: &Path, scratch: &Path) {
    let damaged = cached(hosts, "lib/a.txt");
    std::fs::write(&damaged, b"damaged\n").unwrap();
    let res = scratch.join("repaired");
    let pl = scratch.join("pl");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let run = exec(hosts, inv, &["--payload", &s(&pl), "--results", &s(&res)]);
    all_ok(&run, 2);
    let sum = summary(&res);
    let h = host_summary(&sum, &hosts.addr(0));
    assert_eq!(h["cache_hit"], false, "{h}");
    assert_eq!(h["files_sent"], 1, "{h}");
    let h = host_summary(&sum, &hosts.addr(1));
    assert_eq!(h["cache_hit"], true, "{h}");
    assert_eq!(std::fs::read(&damaged).unwrap(), b"alpha\n");
    let out = res.join("latest").join(hosts.addr(0)).join("out");
    assert_eq!(
        std::fs::read(out.join("sub dir/a.txt")).unwrap(),
        b"alpha\n"
    );
}

/// `--no-cache`: every file sent into the run dir, nothing kept.
fn without_the_cache(hosts: &TestHosts, inv: &Path, scratch: &Path) {
    let res = scratch.join("nocache");
    let pl = scratch.join("pl");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cached = std::fs::read_dir(base(hosts, 0).join("cache"))
        .unwrap()
        .count();
    let run = exec(
        hosts,
        inv,
        &["--no-cache", "--payload", &s(&pl), "--results", &s(&res)],
    );
    all_ok(&run, 2);
    let sum = summary(&res);
    for i in 0..2 {
        let h = host_summary(&sum, &hosts.addr(i));
        assert_eq!(h["files_sent"], 2, "{h}");
        let out = res.join("latest").join(hosts.addr(i)).join("out");
        assert_eq!(
            std::fs::read(out.join("sub dir/a.txt")).unwrap(),
            b"alpha\n"
        );
        let runs = base(hosts, i).join("runs");
        assert_eq!(std::fs::read_dir(&runs).map_or(0, Iterator::count), 0);
    }
    let now = std::fs::read_dir(base(hosts, 0).join("cache"))
        .unwrap()
        .count();
    assert_eq!(now, cached, "nothing added to the cache");
}

/// Files named with a newline, a space, a leading dot or a glob character,
/// an empty file, a binary one, a big one, nested and empty dirs: all come
/// back as they were, from hosts with no tar to send them; a symlink is
/// left out and said so.
fn results_come_back_byte_for_byte(hosts: &TestHosts, inv: &Path, scratch: &Path) {
    let script = b"#!/bin/sh
cd \"$PUSHRUN_OUT\" || exit 1
printf 'one\\ntwo\\n' > 'new
line'
printf 'spaced' > 'a b'
: > empty
printf '\\000\\001\\377\\n\\r' > bin.dat
printf 'dot' > .hidden
printf 'star' > '*'
mkdir -p 'd 1/d2/d3' empty-dir
printf 'deep' > 'd 1/d2/d3/deep.txt'
head -c 300000 /dev/urandom > 'd 1/big.bin'
sha256sum 'd 1/big.bin' > big.sum
";
    let pl = scratch.join("names");
    make_payload(&pl, &[("run", script, true)]);
    let res = scratch.join("names-res");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let run = exec(hosts, inv, &["--payload", &s(&pl), "--results", &s(&res)]);
    all_ok(&run, 2);
    for i in 0..2 {
        let out = res.join("latest").join(hosts.addr(i)).join("out");
        let read = |name: &str| {
            std::fs::read(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}\n{}", run.all()))
        };
        assert_eq!(read("new\nline"), b"one\ntwo\n");
        assert_eq!(read("a b"), b"spaced");
        assert_eq!(read("empty"), b"");
        assert_eq!(read("bin.dat"), b"\x00\x01\xff\n\r");
        assert_eq!(read(".hidden"), b"dot");
        assert_eq!(read("*"), b"star");
        assert_eq!(read("d 1/d2/d3/deep.txt"), b"deep");
        assert!(out.join("empty-dir").is_dir());
        let big = read("d 1/big.bin");
        assert_eq!(big.len(), 300_000);
        let sum: String = sha2::Sha256::digest(&big)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            String::from_utf8(read("big.sum")).unwrap(),
            format!("{sum}  d 1/big.bin\n")
        );
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "*",
                ".hidden",
                "a b",
                "big.sum",
                "bin.dat",
                "d 1",
                "empty",
                "empty-dir",
                "new\nline"
            ]
        );
    }
}

/// `--become`: staged and collected by the login user without tar, run as
/// root; nothing left behind.
fn payload_with_become(hosts: &TestHosts, inv: &Path, scratch: &Path) {
    let pl = scratch.join("become");
    make_payload(
        &pl,
        &[(
            "run",
            b"#!/bin/sh\nid -u > \"$PUSHRUN_OUT/uid\"\nid -un\n",
            true,
        )],
    );
    let res = scratch.join("become-res");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let run = exec(
        hosts,
        inv,
        &["--become", "--payload", &s(&pl), "--results", &s(&res)],
    );
    all_ok(&run, 2);
    for i in 0..2 {
        let dir = res.join("latest").join(hosts.addr(i));
        assert_eq!(std::fs::read(dir.join("out/uid")).unwrap(), b"0\n");
        assert_eq!(std::fs::read(dir.join("stdout")).unwrap(), b"root\n");
        let runs = base(hosts, i).join("runs");
        assert_eq!(std::fs::read_dir(&runs).map_or(0, Iterator::count), 0);
    }
}

/// Each login shell reads its own start-up file once per command, as under
/// plain ssh: sshd's `$SHELL -c` reads it, the command's shell (exec.sh
/// starts the login shell again for the user's command) does not read it a
/// second time; what the file exported is seen by the command all the same.
#[test]
fn every_login_shell_reads_its_login_file_once_per_command_and_keeps_its_exports() {
    if !is_root() {
        eprintln!("skipped: the host variants need root");
        return;
    }
    let shells = [
        ("zsh", ".zshenv", "export PUSHRUN_RC_VAR=from-zsh"),
        ("csh", ".cshrc", "setenv PUSHRUN_RC_VAR from-csh"),
        ("tcsh", ".tcshrc", "setenv PUSHRUN_RC_VAR from-tcsh"),
        (
            "fish",
            ".config/fish/config.fish",
            "set -gx PUSHRUN_RC_VAR from-fish",
        ),
        ("bash", ".bashrc", "export PUSHRUN_RC_VAR=from-bash"),
    ];
    let opts: Vec<HostOpts> = shells
        .iter()
        .map(|(sh, _, _)| HostOpts {
            login_shell: Some(sh),
            chatty_login: true,
            ..HostOpts::default()
        })
        .collect();
    let hosts = TestHosts::start_with(&opts);
    let inv = inventory(&hosts);
    let home = |i: usize| hosts.tmp_dir(i).join("home-pushrun-test");
    for (i, (_, file, export)) in shells.iter().enumerate() {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(home(i).join(file))
            .unwrap();
        std::io::Write::write_all(&mut f, format!("{export}\n").as_bytes()).unwrap();
    }
    for (i, _) in shells.iter().enumerate() {
        let _ = std::fs::remove_file(home(i).join(".login-reads"));
    }
    let run = exec(&hosts, &inv, &["--", "echo \"rc=$PUSHRUN_RC_VAR\""]);
    all_ok(&run, shells.len());
    for (i, (sh, file, _)) in shells.iter().enumerate() {
        assert_eq!(
            run.lines_of(&hosts.addr(i)),
            [format!("rc=from-{sh}")],
            "{sh}: {}",
            run.all()
        );
        let reads = std::fs::read_to_string(home(i).join(".login-reads")).unwrap();
        assert_eq!(reads, format!("{file}\n"), "{sh}: {}", run.all());
    }
}

/// Login files that print (the harness's chatty login): what they printed
/// before pushrun's output is kept out of it, and said once per host and
/// run (however many channels the run opened) in the text summary, in
/// `--json` and in summary.json; a quiet host gets no such note.
#[test]
fn login_noise_is_kept_out_and_noted_once_per_host() {
    if !is_root() {
        eprintln!("skipped: the host variants need root");
        return;
    }
    let hosts = TestHosts::start_with(&[
        HostOpts {
            login_shell: Some("bash"),
            chatty_login: true,
            ..HostOpts::default()
        },
        HostOpts::default(),
    ]);
    let inv = inventory(&hosts);
    let scratch = tempfile::tempdir().unwrap();
    let pl = scratch.path().join("pl");
    make_payload(&pl, &[("run", RUN, true), ("lib/a.txt", b"alpha\n", false)]);
    let res = scratch.path().join("res");
    let (pl, res_s) = (pl.to_str().unwrap(), res.to_str().unwrap());
    let (chatty, quiet) = (hosts.addr(0), hosts.addr(1));
    let is_noise_note = |n: &str| {
        n.strip_prefix("login files printed ")
            .and_then(|r| r.strip_suffix(" bytes before pushrun's output (not shown)"))
            .and_then(|n| n.parse::<usize>().ok())
            // "Welcome to host000\n" on stdout, "motd notice\n" and stty's complaint on stderr
            .is_some_and(|n| n >= 31)
    };

    // text, and summary.json: a payload run opens several channels (check,
    // receive, run, collect), each one starting the login shell
    let run = exec(&hosts, &inv, &["--payload", pl, "--results", res_s]);
    all_ok(&run, 2);
    assert!(!run.all().contains("Welcome"), "{}", run.all());
    let noted: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("login files printed"))
        .collect();
    assert_eq!(noted.len(), 1, "{}", run.all());
    assert!(
        noted[0].contains(&chatty) && !noted[0].contains(&quiet),
        "{}",
        run.all()
    );
    let sum = summary(&res);
    let notes = host_summary(&sum, &chatty)["notes"].clone();
    let notes: Vec<&str> = notes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(notes.len(), 1, "{sum:#}");
    assert!(is_noise_note(notes[0]), "{sum:#}");
    assert_eq!(
        host_summary(&sum, &quiet)["notes"],
        serde_json::json!([]),
        "{sum:#}"
    );

    // --json: the end event of a plain command
    let run = exec(&hosts, &inv, &["--json", "--", "echo hi"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let ends: Vec<Value> = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "end")
        .collect();
    assert_eq!(ends.len(), 2, "{}", run.all());
    for end in &ends {
        let notes = end["notes"].as_array().unwrap();
        if end["host"] == chatty.as_str() {
            assert_eq!(notes.len(), 1, "{end}");
            assert!(is_noise_note(notes[0].as_str().unwrap()), "{end}");
        } else {
            assert_eq!(end["host"], quiet.as_str(), "{end}");
            assert!(notes.is_empty(), "{end}");
        }
    }
    assert!(!run.stdout.contains("Welcome"), "{}", run.all());
}

/// A plain command (words only, no builtin) is run by the wrapper itself
/// where the login shell is sh, dash or bash: the login shell starts once,
/// not twice. bash puts `_` (the command's path) in the environment of
/// what it starts, so `env` shows whether bash started it. Other shells,
/// and any command that is not plain, still go through the login shell;
/// a plain command is ended by `--timeout` as any other, and one that is
/// not found is reported by the login shell in its own words.
#[test]
fn a_plain_command_starts_no_second_login_shell_and_still_obeys_its_timeout() {
    if !is_root() {
        eprintln!("skipped: the host variants need root");
        return;
    }
    let shells = ["bash", "dash", "zsh"];
    let opts: Vec<HostOpts> = shells
        .iter()
        .map(|sh| HostOpts {
            login_shell: Some(sh),
            ..HostOpts::default()
        })
        .collect();
    let hosts = TestHosts::start_with(&opts);
    let inv = inventory(&hosts);
    let bash = hosts.addr(0);
    let underscore = |run: &Run, addr: &str| -> Vec<String> {
        run.lines_of(addr)
            .into_iter()
            .filter(|l| l.starts_with("_="))
            .map(str::to_string)
            .collect()
    };

    let plain = exec(&hosts, &inv, &["--", "env"]);
    all_ok(&plain, shells.len());
    assert!(underscore(&plain, &bash).is_empty(), "{}", plain.all());
    assert!(
        plain.lines_of(&bash).contains(&"SHLVL=2"),
        "bash's level as bash would set it: {}",
        plain.all()
    );
    let through_bash = exec(&hosts, &inv, &["--", "env;"]);
    all_ok(&through_bash, shells.len());
    assert_eq!(
        underscore(&through_bash, &bash),
        ["_=/usr/bin/env"],
        "{}",
        through_bash.all()
    );
    // a builtin is the login shell's: bash's echo knows -e, dash's prints it
    let builtin = exec(&hosts, &inv, &["--", "echo -e x"]);
    all_ok(&builtin, shells.len());
    assert_eq!(builtin.lines_of(&bash), ["x"], "{}", builtin.all());
    assert_eq!(
        builtin.lines_of(&hosts.addr(1)),
        ["-e x"],
        "{}",
        builtin.all()
    );

    let missing = exec(&hosts, &inv, &["--", "pushrun-no-such-command x"]);
    assert_eq!(missing.code, 1, "{}", missing.all());
    assert!(
        missing
            .all()
            .contains("bash: line 1: pushrun-no-such-command: command not found"),
        "{}",
        missing.all()
    );

    let marker = "/dev/null/../pushrun-plain-timeout";
    let timed = exec(
        &hosts,
        &inv,
        &[
            "--timeout",
            "1",
            "--",
            &format!("tail -f /dev/null {marker}"),
        ],
    );
    assert_eq!(timed.code, 3, "{}", timed.all());
    assert!(timed.stderr.contains("3 timed out"), "{}", timed.all());
    wait_until(Duration::from_secs(8), "the plain commands to go", || {
        processes_with(marker).is_empty()
    });
}

/// exec.sh is sshd's command line itself and the command (or the login
/// shell that runs it) takes its place: no wrapper `sh` stands between the
/// server and what runs the command, under any login shell or server; a
/// command killed by a signal is reported so (the session's exit-signal);
/// and the watcher the wrapper leaves goes once the command has ended.
#[test]
fn a_command_takes_the_wrappers_place_under_every_login_shell_and_server() {
    if !is_root() {
        eprintln!("skipped: the host variants need root");
        return;
    }
    let mut opts: Vec<HostOpts> = ["bash", "dash", "zsh", "csh", "tcsh", "fish"]
        .iter()
        .map(|sh| HostOpts {
            login_shell: Some(sh),
            ..HostOpts::default()
        })
        .collect();
    opts.push(HostOpts {
        dropbear: true,
        ..HostOpts::default()
    });
    let hosts = TestHosts::start_with(&opts);
    let inv = inventory(&hosts);

    // the commands of the processes above the command, up to the server's
    let chain = "sh -c 'p=$PPID; while [ $p -gt 1 ]; do read -r c </proc/$p/comm; echo $c; \
                 case $c in sshd*|dropbear) break;; esac; read -r s </proc/$p/stat; \
                 s=${s##*) }; s=${s#* }; p=${s%% *}; done'";
    let run = exec(&hosts, &inv, &["--", chain]);
    all_ok(&run, opts.len());
    for i in 0..hosts.len() {
        let above = run.lines_of(&hosts.addr(i));
        let server = above.last().copied().unwrap_or_default();
        assert!(
            server.starts_with("sshd") || server == "dropbear",
            "host {i}: {above:?}"
        );
        assert!(
            !above.contains(&"sh"),
            "a wrapper left on host {i}: {above:?}"
        );
    }

    let bash = hosts.addr(0);
    let killed = exec(
        &hosts,
        &inv,
        &["--limit", &bash, "--", "sh -c 'kill -9 $$'"],
    );
    assert!(
        killed
            .stderr
            .contains(&format!("failed: {bash}: killed by a signal")),
        "{}",
        killed.all()
    );

    // on bash, the session's process is the command's bash: its children
    // are the watcher, a process the command leaves running (as ssh would
    // leave it) and the listing's own (the pattern is not the text it is
    // in: bash's own command line, which its children have until they exec)
    let marker = "sleep 31340";
    let watcher = format!(
        "{marker} </dev/null >/dev/null 2>&1 & sh -c 'for c in $(cat /proc/$PPID/task/$PPID/children); \
         do grep -q \"pushrun_n[l]=\" /proc/$c/cmdline 2>/dev/null && echo $c; done; true'"
    );
    let run = exec(&hosts, &inv, &["--limit", &bash, "--", &watcher]);
    all_ok(&run, 1);
    let pids: Vec<u32> = run
        .lines_of(&bash)
        .iter()
        .map(|l| l.parse().expect("a pid"))
        .collect();
    assert_eq!(pids.len(), 1, "{}", run.all());
    wait_until(Duration::from_secs(10), "the watcher to go", || {
        !pid_alive(pids[0])
    });
    // it went its quiet way (the command had ended): what the command left
    // running is alive, not ended with the group
    let left = processes_with(marker);
    assert_eq!(left.len(), 1, "{left:?}");
    for p in left {
        let pid: i32 = p.split(':').next().unwrap().parse().unwrap();
        // SAFETY: kill(2) on the process this test left on its own host.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}
