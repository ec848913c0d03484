//! `pushrun copy` and `pushrun fetch` against real sshd hosts on loopback.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use crate::common::{
    HostOpts, Run, Sudo, TestHosts, exec, is_root, names_in, noise, pushrun, to_run,
};

/// `pushrun SUBCOMMAND --hosts … --ssh-config … ARGS` on every host, to its end.
fn transfer(hosts: &TestHosts, subcommand: &str, args: &[&str]) -> Run {
    let out = pushrun()
        .arg(subcommand)
        .arg("--hosts")
        .arg(hosts.hosts_yaml())
        .arg("--ssh-config")
        .arg(hosts.ssh_config())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run pushrun");
    to_run(out)
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// A 4 MB file and a directory of 10 files (f3 executable) under `dir`.
fn sources(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let big = dir.join("big.bin");
    std::fs::write(&big, noise(4_000_000, 13)).unwrap();
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    for i in 1..=9 {
        std::fs::write(tree.join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
    std::fs::write(tree.join("sub/deep"), noise(1000, 7)).unwrap();
    std::fs::set_permissions(tree.join("f3"), std::fs::Permissions::from_mode(0o755)).unwrap();
    (big, tree)
}

#[test]
fn copy_puts_files_and_dirs_on_every_host_byte_exact_with_modes() {
    if !is_root() {
        eprintln!("skipped: the hosts have their own /tmp only when root");
        return;
    }
    let hosts = TestHosts::start(3);
    let local = tempfile::tempdir().unwrap();
    let (big, tree) = sources(local.path());
    for i in 0..3 {
        std::fs::create_dir(hosts.tmp_dir(i).join("dest")).unwrap();
    }
    // an old file in the way is replaced, not followed if it is a symlink
    std::os::unix::fs::symlink("/etc/passwd", hosts.tmp_dir(0).join("dest/big.bin")).unwrap();
    let run = transfer(
        &hosts,
        "copy",
        &[big.to_str().unwrap(), tree.to_str().unwrap(), "/tmp/dest"],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("3 ok"), "{}", run.stderr);
    for i in 0..3 {
        let dest = hosts.tmp_dir(i).join("dest");
        assert_eq!(
            std::fs::read(dest.join("big.bin")).unwrap(),
            noise(4_000_000, 13)
        );
        assert!(
            std::fs::symlink_metadata(dest.join("big.bin"))
                .unwrap()
                .is_file()
        );
        for entry in ["f1", "f3", "f9", "sub/deep"] {
            assert_eq!(
                std::fs::read(dest.join("tree").join(entry)).unwrap(),
                std::fs::read(tree.join(entry)).unwrap(),
                "{entry} on host {i}"
            );
        }
        assert_eq!(mode(&dest.join("tree/f3")), 0o755);
        assert_eq!(mode(&dest.join("tree/f1")), 0o644);
        let left: Vec<_> = names_in(&dest)
            .into_iter()
            .filter(|n| n.starts_with(".pushrun-copy"))
            .collect();
        assert!(left.is_empty(), "temp dir left behind: {left:?}");
    }
    // the passwd file behind the old symlink was not written to
    assert!(
        !std::fs::read_to_string("/etc/passwd")
            .unwrap()
            .contains("file 1")
    );

    // a second copy into the directory that is there now merges into it
    std::fs::write(tree.join("f1"), "changed\n").unwrap();
    let run = transfer(&hosts, "copy", &[tree.to_str().unwrap(), "/tmp/dest"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let f1 = std::fs::read_to_string(hosts.tmp_dir(2).join("dest/tree/f1")).unwrap();
    assert_eq!(f1, "changed\n");

    // one source to a new name
    let run = transfer(&hosts, "copy", &[big.to_str().unwrap(), "/tmp/renamed"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(
        std::fs::read(hosts.tmp_dir(1).join("renamed"))
            .unwrap()
            .len(),
        4_000_000
    );
}

#[test]
fn copy_errors_are_per_host_and_named() {
    if !is_root() {
        eprintln!("skipped: needs root (a small /tmp, a second user)");
        return;
    }
    let hosts = TestHosts::start_with(&[
        HostOpts::default(),
        HostOpts {
            small_tmp: true,
            ..HostOpts::default()
        },
    ]);
    let local = tempfile::tempdir().unwrap();
    let (big, tree) = sources(local.path());
    std::fs::write(hosts.tmp_dir(0).join("file"), "x").unwrap();
    let (big, tree) = (big.to_str().unwrap(), tree.to_str().unwrap());

    // two sources need a directory
    let run = transfer(&hosts, "copy", &[big, tree, "/tmp/file"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr
            .contains(&format!("{}: /tmp/file: not a directory", hosts.addr(0))),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("{}: /tmp/file: no such directory", hosts.addr(1))),
        "{}",
        run.stderr
    );

    // 4 MB into a 2 MiB /tmp
    let run = transfer(&hosts, "copy", &[big, "/tmp/"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("1 ok, 1 failed"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "{}: /tmp/: no space left on device",
            hosts.addr(1)
        )),
        "{}",
        run.stderr
    );
    let left = exec(&hosts, &hosts.hosts_yaml(), &["--", "ls -A /tmp"]);
    assert!(!left.stdout.contains(".pushrun-copy"), "{}", left.stdout);

    if TestHosts::can_test_users() {
        let user = hosts.test_user();
        let run = transfer(&hosts, "copy", &["-l", &user, tree, "/etc"]);
        assert_eq!(run.code, 1, "{}", run.all());
        assert!(
            run.stderr
                .contains("cannot write in /etc: permission denied"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn copy_with_become_writes_as_root_where_the_login_user_may_not() {
    if !TestHosts::can_test_users() {
        eprintln!("skipped: needs root and sudo (a test user)");
        return;
    }
    let hosts = TestHosts::start_with(&[HostOpts {
        sudo: Sudo::NoPasswd,
        ..HostOpts::default()
    }]);
    let local = tempfile::tempdir().unwrap();
    let (_, tree) = sources(local.path());
    let root_only = hosts.tmp_dir(0).join("root-only");
    std::fs::create_dir(&root_only).unwrap();
    std::fs::set_permissions(&root_only, std::fs::Permissions::from_mode(0o755)).unwrap();
    let user = hosts.test_user();
    let tree = tree.to_str().unwrap();
    let run = transfer(&hosts, "copy", &["-l", &user, tree, "/tmp/root-only"]);
    assert_eq!(run.code, 1, "{}", run.all());
    let run = transfer(
        &hosts,
        "copy",
        &["-l", &user, "--become", tree, "/tmp/root-only"],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    let f3 = root_only.join("tree/f3");
    assert_eq!(mode(&f3), 0o755);
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&f3.metadata().unwrap()),
        0
    );
}

#[test]
fn fetch_brings_each_hosts_files_into_its_folder_untrusted() {
    if !is_root() {
        eprintln!("skipped: the hosts have their own /tmp only when root");
        return;
    }
    let hosts = TestHosts::start(3);
    let setup = exec(
        &hosts,
        &hosts.hosts_yaml(),
        &[
            "--",
            "hostname > /tmp/name; mkdir -p /tmp/d/sub; head -c 300000 /dev/urandom > /tmp/d/sub/blob; \
             echo x > /tmp/d/suid; chmod 4777 /tmp/d/suid; chmod 777 /tmp/d; ln -s /etc/passwd /tmp/d/pw",
        ],
    );
    assert_eq!(setup.code, 0, "{}", setup.all());
    let local = tempfile::tempdir().unwrap();
    let into = local.path().join("got");
    let run = transfer(
        &hosts,
        "fetch",
        &["/tmp/name", "/tmp/d/", into.to_str().unwrap()],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr
            .contains("note: not kept (neither file nor directory): d/pw"),
        "{}",
        run.stderr
    );
    let folders = std::fs::read_dir(&into).unwrap().count();
    assert_eq!(folders, 3);
    for i in 0..3 {
        let mine = into.join(hosts.addr(i));
        assert_eq!(
            std::fs::read_to_string(mine.join("name")).unwrap().trim(),
            hosts.hostname(i)
        );
        assert_eq!(
            std::fs::read(mine.join("d/sub/blob")).unwrap(),
            std::fs::read(hosts.tmp_dir(i).join("d/sub/blob")).unwrap()
        );
        assert_eq!(mode(&mine.join("d/suid")), 0o755, "setuid and o+w masked");
        assert_eq!(mode(&mine.join("d")), 0o755);
        assert!(std::fs::symlink_metadata(mine.join("d/pw")).is_err());
    }

    // a size limit, and a path that is not there
    let run = transfer(
        &hosts,
        "fetch",
        &["--max-bytes", "100K", "/tmp/d", into.to_str().unwrap()],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr
            .contains("the host sent more than 102400 bytes (--max-bytes): stopped"),
        "{}",
        run.stderr
    );
    let run = transfer(&hosts, "fetch", &["/tmp/nope", into.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr
            .contains("fetch failed: /tmp/nope: no such file or directory"),
        "{}",
        run.stderr
    );
}

/// copy.sh and fetch.sh run by `dash` and by `busybox sh` with only busybox's
/// applets on PATH (its tar, mv, mkdir), as on minimal hosts.
#[test]
fn the_transfer_scripts_work_under_dash_and_busybox() {
    // exactly the text pushrun sends
    let copy_sh = pushrun::remote::COPY;
    let fetch_sh = pushrun::remote::FETCH;
    let work = tempfile::tempdir().unwrap();
    let (_, tree) = sources(work.path());
    let archive = std::process::Command::new("tar")
        .arg("-cf")
        .arg("-")
        .arg("-C")
        .arg(work.path())
        .arg("tree")
        .output()
        .unwrap()
        .stdout;
    let applets = work.path().join("bb");
    let mut shells: Vec<(String, Vec<(String, String)>)> = Vec::new();
    if std::path::Path::new("/usr/bin/dash").exists() {
        shells.push(("/usr/bin/dash".into(), Vec::new()));
    }
    if std::path::Path::new("/usr/bin/busybox").exists() {
        std::fs::create_dir(&applets).unwrap();
        let ok = std::process::Command::new("/usr/bin/busybox")
            .arg("--install")
            .arg("-s")
            .arg(&applets)
            .status()
            .unwrap();
        assert!(ok.success());
        let path = applets.to_str().unwrap().to_string();
        shells.push((format!("{path}/sh"), vec![("PATH".into(), path)]));
    }
    assert!(
        !shells.is_empty(),
        "neither dash nor busybox: scripts/setup.sh installs them"
    );
    for (n, (shell, env)) in shells.iter().enumerate() {
        let dest = work.path().join(format!("dest{n}"));
        std::fs::create_dir(&dest).unwrap();
        let mut child = std::process::Command::new(shell)
            .arg("-c")
            .arg(copy_sh)
            .arg("pushrun-copy")
            .arg(&dest)
            .arg("tree")
            .envs(env.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), &archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(mode(&dest.join("tree/f3")), 0o755, "{shell}");
        assert_eq!(
            std::fs::read(dest.join("tree/sub/deep")).unwrap(),
            std::fs::read(tree.join("sub/deep")).unwrap(),
            "{shell}"
        );
        let fetched = std::process::Command::new(shell)
            .arg("-c")
            .arg(fetch_sh)
            .arg("pushrun-fetch")
            .arg(dest.join("tree/f1"))
            .arg(dest.join("tree/sub"))
            .envs(env.iter().cloned())
            .output()
            .unwrap();
        assert!(fetched.status.success(), "{shell}");
        let mut names = Vec::new();
        let mut tar = tar::Archive::new(&fetched.stdout[..]);
        tar.set_ignore_zeros(true);
        for e in tar.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        names.sort();
        assert_eq!(names, ["f1", "sub/", "sub/deep"], "{shell}");
    }
}
