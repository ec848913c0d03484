//! The POSIX sh scripts of `src/remote/` (check, receive, run, collect, clean) on real
//! sshd hosts on loopback, fed exactly as pushrun feeds them: over ssh, as
//! `exec sh -c 'SCRIPT' NAME 'ARG'...`, with the manifest or the tar.gz on stdin.
//!
//! The hosts log in as the test's user, root (as in CI): BASE is `/tmp/.pushrun-root`
//! inside a host, which is `tmp_dir(0)/.pushrun-root` from here.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::common::{HostOpts, TestHosts, is_root, names_in, noise, processes_with, wait_until};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

// exactly the text pushrun sends: lib.sh followed by the script
use pushrun::remote::{
    CHECK, CHECK_LINGER, CLEAN, COLLECT, COPY_PLAIN, FETCH, PUT, RECEIVE, RUN, receive_request,
    run_request,
};

/// BASE inside a host (the login user is root).
const BASE: &str = "/tmp/.pushrun-root";

// ------------------------------------------------------------------ payloads

#[derive(Clone)]
struct File {
    path: String,
    data: Vec<u8>,
    exec: bool,
}

#[derive(Clone)]
struct Payload {
    files: Vec<File>,
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const ENTRY: &str = r#"#!/bin/sh
echo "out=$PUSHRUN_OUT"
echo "host=$PUSHRUN_HOST"
echo "run_id=$PUSHRUN_RUN_ID"
echo "payload=$PUSHRUN_PAYLOAD"
echo "extra=$PUSHRUN_TEST_VAR"
echo "pwd=$(pwd)"
echo "stdin=$(readlink /proc/$$/fd/0)"
for a in "$@"; do echo "arg=$a"; done
echo done > "$PUSHRUN_OUT/result.txt"
exit "${1:-0}"
"#;

impl Payload {
    /// An entry point `run` (755) that reports its environment and exits with its first
    /// argument, a second executable, and two data files with spaces, unicode and binary.
    fn standard() -> Payload {
        let mut binary: Vec<u8> = (0..=255u8).collect();
        binary.extend(noise(3000, 7));
        Payload {
            files: vec![
                File {
                    path: "run".into(),
                    data: ENTRY.as_bytes().to_vec(),
                    exec: true,
                },
                File {
                    path: "bin/tool".into(),
                    data: b"#!/bin/sh\necho tool\n".to_vec(),
                    exec: true,
                },
                File {
                    path: "lib/data file.bin".into(),
                    data: binary,
                    exec: false,
                },
                File {
                    path: "ünï cødé/ß.txt".into(),
                    data: "grüße\n".as_bytes().to_vec(),
                    exec: false,
                },
            ],
        }
    }

    /// `n` small files under a few directories, with content depending on `seed`.
    fn many(n: usize, seed: u64) -> Payload {
        let files = (0..n)
            .map(|i| File {
                path: format!("d{}/file {i}.dat", i % 4),
                data: noise(200 + i * 13, seed * 1000 + i as u64),
                exec: i % 3 == 0,
            })
            .collect();
        Payload { files }
    }

    fn line(f: &File) -> String {
        let mode = if f.exec { "755" } else { "644" };
        format!(
            "{} {mode} {} {}\n",
            sha256_hex(&f.data),
            f.data.len(),
            f.path
        )
    }

    fn manifest(&self) -> String {
        let mut m = String::from("pushrun-manifest 1\n");
        for f in &self.files {
            m.push_str(&Payload::line(f));
        }
        m
    }

    fn digest(&self) -> String {
        sha256_hex(self.manifest().as_bytes())
    }

    /// This payload with `path`'s content replaced by `data` (its mode kept).
    fn with_changed(&self, path: &str, data: &[u8]) -> Payload {
        let mut p = self.clone();
        let f = p
            .files
            .iter_mut()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("no file {path}"));
        assert_ne!(f.data, data, "{path} must change");
        f.data = data.to_vec();
        p
    }

    /// This payload with one more file, last in the manifest.
    fn with_added(&self, path: &str, data: &[u8], exec: bool) -> Payload {
        let mut p = self.clone();
        p.files.push(File {
            path: path.into(),
            data: data.to_vec(),
            exec,
        });
        p
    }

    fn paths(&self) -> Vec<String> {
        self.files.iter().map(|f| f.path.clone()).collect()
    }

    fn file(&self, path: &str) -> &File {
        self.files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("no file {path}"))
    }

    /// The upload of `paths`: `.pushrun-expect` first, then the files. The member
    /// `tamper` (if any) arrives with one byte changed (same size).
    fn upload_tampered(&self, paths: &[&str], tamper: Option<&str>) -> Vec<u8> {
        let chosen: Vec<&File> = paths.iter().map(|p| self.file(p)).collect();
        let expect: String = chosen.iter().map(|f| Payload::line(f)).collect();
        let mut members: Vec<(String, Vec<u8>, u32)> =
            vec![(".pushrun-expect".into(), expect.into_bytes(), 0o644)];
        for f in chosen {
            let mut data = f.data.clone();
            if Some(f.path.as_str()) == tamper {
                data[0] ^= 0x55;
            }
            // modes come from .pushrun-expect, not from the tar headers
            members.push((f.path.clone(), data, 0o600));
        }
        tar_gz(&members)
    }

    /// [`Payload::upload_all`] as a plain tar.
    fn upload_plain(&self) -> Vec<u8> {
        let expect: String = self.files.iter().map(Payload::line).collect();
        let mut members = vec![(".pushrun-expect".to_string(), expect.into_bytes(), 0o644)];
        for f in &self.files {
            members.push((f.path.clone(), f.data.clone(), 0o600));
        }
        tar_plain(&members)
    }

    fn upload(&self, paths: &[&str]) -> Vec<u8> {
        self.upload_tampered(paths, None)
    }

    fn upload_all(&self) -> Vec<u8> {
        let paths = self.paths();
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        self.upload(&refs)
    }
}

fn tar_gz(members: &[(String, Vec<u8>, u32)]) -> Vec<u8> {
    tar_into(GzEncoder::new(Vec::new(), Compression::fast()), members)
        .finish()
        .expect("end the gzip")
}

/// A plain tar (pushrun's upload of files that do not compress).
fn tar_plain(members: &[(String, Vec<u8>, u32)]) -> Vec<u8> {
    tar_into(Vec::new(), members)
}

fn tar_into<W: Write>(out: W, members: &[(String, Vec<u8>, u32)]) -> W {
    let mut tar = tar::Builder::new(out);
    for (path, data, mode) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, &data[..])
            .expect("tar member");
    }
    tar.into_inner().expect("end the tar")
}

/// What a tar.gz holds: path (no "./", no trailing "/") -> what it is.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    File(Vec<u8>, u32),
    Dir,
    Link(String),
}

fn untar_gz(bytes: &[u8]) -> BTreeMap<String, Entry> {
    let mut archive = tar::Archive::new(GzDecoder::new(bytes));
    let mut found = BTreeMap::new();
    for entry in archive.entries().expect("a tar stream") {
        let mut entry = entry.expect("a tar member");
        let path = entry
            .path()
            .expect("member path")
            .to_string_lossy()
            .into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let kind = match entry.header().entry_type() {
            tar::EntryType::Directory => Entry::Dir,
            tar::EntryType::Symlink => Entry::Link(
                entry
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            ),
            tar::EntryType::Regular => {
                let mode = entry.header().mode().unwrap() & 0o777;
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                Entry::File(data, mode)
            }
            other => panic!("unexpected member {path}: {other:?}"),
        };
        if !path.is_empty() && path != "." {
            found.insert(path, kind);
        }
    }
    found
}

// ------------------------------------------------------------------- hosts

/// What a script answered.
struct Answer {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn describe(&self) -> String {
        format!(
            "exit {}\nstdout:\n{}stderr:\n{}",
            self.code,
            self.text(),
            self.stderr
        )
    }

    /// The single `error …` line and the exit code it came with.
    fn assert_error(&self, code: i32, message: &str) {
        assert_eq!(self.code, code, "{}", self.describe());
        assert_eq!(
            self.text(),
            format!("error {message}\n"),
            "{}",
            self.describe()
        );
    }
}

/// check.sh's answer, with its shape checked: `base`, `need`s, `checked` last.
#[derive(Debug)]
struct Check {
    needed: Vec<String>,
    checked: usize,
}

fn parse_check(a: &Answer) -> Check {
    assert_eq!(a.code, 0, "check failed: {}", a.describe());
    let text = a.text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "short answer: {}", a.describe());
    assert_eq!(lines[0], format!("base {BASE}"), "{}", a.describe());
    let last = lines[lines.len() - 1];
    let checked = last
        .strip_prefix("checked ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no checked line last: {}", a.describe()));
    let needed = lines[1..lines.len() - 1]
        .iter()
        .map(|l| {
            l.strip_prefix("need ")
                .unwrap_or_else(|| panic!("odd line {l:?}: {}", a.describe()))
                .to_string()
        })
        .collect();
    Check { needed, checked }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// One test host and the way scripts are started on it.
struct Host {
    hosts: TestHosts,
    /// What comes before the quoted script: `exec sh -c`, as pushrun sends it.
    launcher: String,
}

impl Host {
    fn start() -> Host {
        assert!(
            is_root(),
            "these tests look into the hosts' /tmp: run them as root (as CI does)"
        );
        Host {
            hosts: TestHosts::start(1),
            launcher: "exec sh -c".into(),
        }
    }

    /// A host whose /tmp is a 2 MiB tmpfs.
    fn small_tmp() -> Host {
        assert!(is_root(), "a small /tmp needs root (as in CI)");
        let hosts = TestHosts::start_with(&[HostOpts {
            small_tmp: true,
            ..HostOpts::default()
        }]);
        Host {
            hosts,
            launcher: "exec sh -c".into(),
        }
    }

    /// A host where the scripts run under `busybox sh` with nothing but busybox's
    /// applets on PATH (tar, gzip, sha256sum, find, stat... all busybox's).
    fn busybox() -> Host {
        let mut host = Host::start();
        host.shell(
            "mkdir /tmp/bb && /usr/bin/busybox --install -s /tmp/bb && test -x /tmp/bb/sha256sum",
        );
        host.launcher = "PATH=/tmp/bb exec /tmp/bb/sh -c".into();
        host
    }

    /// A host where the scripts run under bash in POSIX mode, as where
    /// /bin/sh is bash (Fedora, RHEL, Arch).
    fn bash() -> Host {
        let mut host = Host::start();
        host.launcher = "exec bash --posix -c".into();
        host
    }

    /// A path inside the host, as seen from here.
    fn local(&self, path: &str) -> PathBuf {
        let rest = path
            .strip_prefix("/tmp/")
            .unwrap_or_else(|| panic!("{path} is not under /tmp"));
        self.hosts.tmp_dir(0).join(rest)
    }

    /// Runs a plain command on the host; panics unless it succeeds. Its stdout.
    fn shell(&self, cmd: &str) -> String {
        let out = self.hosts.ssh(0, cmd);
        assert!(
            out.status.success(),
            "`{cmd}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn command_line(&self, launcher: &str, script: &str, name: &str, args: &[&str]) -> String {
        let mut cmd = format!("{launcher} {} {name}", quote(script));
        for a in args {
            cmd.push(' ');
            cmd.push_str(&quote(a));
        }
        cmd
    }

    fn spawn_with(&self, launcher: &str, script: &str, name: &str, args: &[&str]) -> Child {
        // one connection for all the scripts of a test, as pushrun's run has
        // (check.sh sweeps the run dirs of connections that are gone)
        let control = self.hosts.dir().join("cm-%C");
        Command::new("ssh")
            .arg("-F")
            .arg(self.hosts.ssh_config())
            .args(["-o", "ControlMaster=auto", "-o", "ControlPersist=120"])
            .arg("-o")
            .arg(format!("ControlPath={}", control.display()))
            .arg(self.hosts.addr(0))
            .arg(self.command_line(launcher, script, name, args))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ssh")
    }

    fn script_with(
        &self,
        launcher: &str,
        script: &str,
        name: &str,
        args: &[&str],
        stdin: &[u8],
    ) -> Answer {
        let mut child = self.spawn_with(launcher, script, name, args);
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        // a script may stop reading early (an error): then this write fails, harmlessly
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().expect("wait for ssh");
        writer.join().unwrap();
        Answer {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn script(&self, script: &str, name: &str, args: &[&str], stdin: &[u8]) -> Answer {
        self.script_with(&self.launcher, script, name, args, stdin)
    }

    /// run.sh, with stdin held open until it ends, as pushrun holds it (its end
    /// would stop the run).
    fn run_with(&self, launcher: &str, args: &[&str]) -> Answer {
        let mut child = self.spawn_with(launcher, RUN, "pushrun-run", args);
        let stdin = child.stdin.take();
        let out = child.wait_with_output().expect("wait for ssh");
        drop(stdin);
        Answer {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn run(&self, args: &[&str]) -> Answer {
        self.run_with(&self.launcher, args)
    }

    fn check_mode(&self, p: &Payload, run_id: &str, mode: &str) -> Answer {
        let digest = p.digest();
        self.script(
            CHECK,
            "pushrun-check",
            &["/tmp", &digest, run_id, mode],
            p.manifest().as_bytes(),
        )
    }

    fn check(&self, p: &Payload, run_id: &str) -> Check {
        parse_check(&self.check_mode(p, run_id, "cache"))
    }

    fn receive_bytes(&self, p: &Payload, run_id: &str, mode: &str, upload: &[u8]) -> Answer {
        let digest = p.digest();
        self.script(
            RECEIVE,
            "pushrun-receive",
            &[BASE, &digest, run_id, mode],
            upload,
        )
    }

    /// Uploads `paths` into the cache; asserts it answers `installed N`.
    fn receive(&self, p: &Payload, run_id: &str, paths: &[&str]) {
        let a = self.receive_bytes(p, run_id, "cache", &p.upload(paths));
        assert_eq!(
            (a.code, a.text()),
            (0, format!("installed {}\n", paths.len())),
            "{}",
            a.describe()
        );
    }

    fn receive_all(&self, p: &Payload, run_id: &str) {
        let paths = p.paths();
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        self.receive(p, run_id, &refs);
    }

    fn collect(&self, run_id: &str) -> Answer {
        self.script(COLLECT, "pushrun-collect", &[BASE, run_id], b"")
    }

    /// The cached copy of a payload file, seen from here.
    fn cached(&self, p: &Payload, path: &str) -> PathBuf {
        self.local(&format!("{BASE}/cache/{}/{path}", p.digest()))
    }

    fn run_dir(&self, run_id: &str) -> PathBuf {
        self.local(&format!("{BASE}/runs/{run_id}"))
    }

    fn cache_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.local(&format!("{BASE}/cache")))
            .expect("read the cache")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn all_paths(p: &Payload) -> Vec<String> {
    p.paths()
}

/// Regular files under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                found.extend(files_under(&e.path()));
            } else {
                found.push(e.path());
            }
        }
    }
    found
}

fn set_mtime(path: &std::path::Path, ago: Duration) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.set_modified(SystemTime::now() - ago).expect("set mtime");
}

// ------------------------------------------------------------------- check

#[test]
fn a_cold_check_needs_every_file_and_creates_a_private_base() {
    let host = Host::start();
    let p = Payload::standard();
    let c = host.check(&p, "r1");
    assert_eq!(c.needed, all_paths(&p), "every file, in manifest order");
    assert_eq!(c.checked, 0);

    let base = std::fs::symlink_metadata(host.local(BASE)).expect("BASE exists");
    assert!(base.is_dir());
    assert_eq!(base.mode() & 0o7777, 0o700);
    assert_eq!(base.uid(), 0);
    assert!(host.run_dir("r1").join("out").is_dir());
    assert_eq!(
        std::fs::read_to_string(host.run_dir("r1").join("digest")).unwrap(),
        format!("{}\n", p.digest())
    );
    // the payload's dir is the upload's to make (its mtime is then new)
    assert!(!host.local(&format!("{BASE}/cache/{}", p.digest())).exists());
    assert!(
        host.local(&format!("{BASE}/manifests/{}", p.digest()))
            .is_file()
    );
    // nothing but the run's own files is left behind
    let mut run: Vec<String> = std::fs::read_dir(host.run_dir("r1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    run.sort();
    assert_eq!(run, ["digest", "out"]);
}

#[test]
fn receive_installs_verified_files_and_a_warm_check_needs_nothing() {
    let host = Host::start();
    let p = Payload::standard();
    assert_eq!(host.check(&p, "r1").needed.len(), 4);
    host.receive_all(&p, "r1");
    for f in &p.files {
        let path = host.cached(&p, &f.path);
        assert_eq!(std::fs::read(&path).unwrap(), f.data, "{}", f.path);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, if f.exec { 0o755 } else { 0o644 }, "{}", f.path);
    }
    assert_eq!(
        host.cache_entries(),
        [p.digest()],
        "the stage directory is gone"
    );

    let c = host.check(&p, "r2");
    assert!(c.needed.is_empty(), "{c:?}");
    assert_eq!(c.checked, 4);
}

#[test]
fn a_deleted_cached_file_is_needed_alone() {
    let host = Host::start();
    let p = Payload::standard();
    host.check(&p, "r1");
    host.receive_all(&p, "r1");
    std::fs::remove_file(host.cached(&p, "lib/data file.bin")).unwrap();
    let c = host.check(&p, "r2");
    assert_eq!(c.needed, ["lib/data file.bin"]);
    assert_eq!(c.checked, 3);

    // uploading just that file (into a cache in use: file by file) makes it whole
    host.receive(&p, "r2", &["lib/data file.bin"]);
    let c = host.check(&p, "r3");
    assert!(c.needed.is_empty(), "{c:?}");
    assert_eq!(c.checked, 4);
}

/// A payload of thousands of files: the check's lists go to its work files
/// once they pass 64 KiB (and openssl takes the names in pieces), and the
/// answer is the same: all needed cold, all intact warm, one damaged file
/// needed alone. Small files (sha256sum) and big ones (openssl) alike.
#[test]
fn a_payload_of_thousands_of_files_is_checked_through_the_work_files() {
    let host = Host::start();
    for (size, seed) in [(40, 1u64), (2000, 2)] {
        let files: Vec<File> = (0..2300)
            .map(|i| File {
                path: format!("dir {}/a file named {i:05}.dat", i % 7),
                data: noise(size, seed * 10_000 + i as u64),
                exec: i % 5 == 0,
            })
            .collect();
        let p = Payload { files };
        let run = |n: usize| format!("many{seed}-{n}");
        let c = host.check(&p, &run(1));
        assert_eq!((c.needed.len(), c.checked), (2300, 0), "{size}");
        assert_eq!(c.needed, all_paths(&p), "{size}");
        host.receive_all(&p, &run(1));
        let c = host.check(&p, &run(2));
        assert_eq!((c.needed.len(), c.checked), (0, 2300), "{size}");
        let damaged = "dir 6/a file named 02099.dat";
        let path = host.cached(&p, damaged);
        let mut data = std::fs::read(&path).unwrap();
        data[3] ^= 1;
        std::fs::write(&path, &data).unwrap();
        let c = host.check(&p, &run(3));
        assert_eq!(c.needed, [damaged], "{size}");
        assert_eq!(c.checked, 2299, "{size}");
        host.receive(&p, &run(3), &[damaged]);
        // a new version with one file edited: the other 2299 are seeded
        // from the cache, in many chunks, with their modes
        let edited = "dir 0/a file named 00700.dat";
        let p2 = p.with_changed(edited, &noise(size, 7));
        let c = host.check(&p2, &run(4));
        assert_eq!(
            (c.needed, c.checked),
            (vec![edited.to_string()], 2299),
            "{size}"
        );
        for f in p2.files.iter().filter(|f| f.path != edited).step_by(97) {
            let mode = file_mode(&host.cached(&p2, &f.path));
            assert_eq!(mode, if f.exec { 0o755 } else { 0o644 }, "{}", f.path);
        }
    }
}

/// Files adding up to 4 MiB or more are hashed with openssl where the host
/// has it (lib.sh: sums_check); damage is found all the same, in a name
/// with a quote and a space too.
#[test]
fn a_big_payload_is_verified_through_openssl_and_damage_is_still_found() {
    assert!(
        Command::new("openssl").arg("version").output().is_ok(),
        "the test hosts need openssl (scripts/setup.sh installs it)"
    );
    let host = Host::start();
    let mut p = Payload::standard();
    for (i, path) in ["lib/big.bin", "lib/it's big.bin"].iter().enumerate() {
        p.files.push(File {
            path: (*path).into(),
            data: noise(3 << 20, 11 + i as u64),
            exec: false,
        });
    }
    host.check(&p, "r1");
    host.receive_all(&p, "r1");
    let c = host.check(&p, "r2");
    assert!(c.needed.is_empty(), "{c:?}");
    assert_eq!(c.checked, 6);

    // one byte changed, size kept
    let path = host.cached(&p, "lib/it's big.bin");
    let mut data = std::fs::read(&path).unwrap();
    data[1 << 20] ^= 1;
    std::fs::write(&path, &data).unwrap();
    let c = host.check(&p, "r3");
    assert_eq!(c.needed, ["lib/it's big.bin"]);
    assert_eq!(c.checked, 5);

    // an upload of it that arrives damaged is refused
    let a = host.receive_bytes(
        &p,
        "r3",
        "cache",
        &p.upload_tampered(&["lib/it's big.bin"], Some("lib/it's big.bin")),
    );
    a.assert_error(5, "upload of lib/it's big.bin arrived corrupt");
    host.receive(&p, "r3", &["lib/it's big.bin"]);
    assert!(host.check(&p, "r4").needed.is_empty());

    // an openssl whose hashes are all wrong: every file is needed (its
    // answer is compared, not just read)
    for (dir, script) in [
        (
            "/tmp/fakessl",
            "#!/bin/sh\nshift 3\nfor f; do printf '%064d *%s\\n' 0 \"$f\"; done\n",
        ),
        ("/tmp/oddssl", "#!/bin/sh\necho what\n"),
    ] {
        let dir = host.local(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("openssl"), script).unwrap();
        std::fs::set_permissions(dir.join("openssl"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    let mut host = host;
    host.launcher = "PATH=/tmp/fakessl:$PATH exec sh -c".into();
    let c = host.check(&p, "r5");
    assert_eq!(c.needed.len(), 6, "{c:?}");
    assert_eq!(c.checked, 0);
    // one that answers in a form the check does not know: sha256sum decides
    host.launcher = "PATH=/tmp/oddssl:$PATH exec sh -c".into();
    let c = host.check(&p, "r6");
    assert!(c.needed.is_empty(), "{c:?}");
    assert_eq!(c.checked, 6);
    let path = host.cached(&p, "lib/big.bin");
    let mut data = std::fs::read(&path).unwrap();
    data[7] ^= 1;
    std::fs::write(&path, &data).unwrap();
    let c = host.check(&p, "r7");
    assert_eq!(c.needed, ["lib/big.bin"]);
    assert_eq!(c.checked, 5);
    // an upload (of 4 MiB or more) too: openssl's output is not what
    // intact files give, so sha256sum decides, and it is installed
    let big = ["lib/big.bin", "lib/it's big.bin"];
    host.receive(&p, "r7", &big);
    host.launcher = "exec sh -c".into();
    let c = host.check(&p, "r8");
    assert!(c.needed.is_empty(), "{c:?}");
    // and one that lies about every file: the upload is refused
    host.launcher = "PATH=/tmp/fakessl:$PATH exec sh -c".into();
    let a = host.receive_bytes(&p, "r8", "cache", &p.upload(&big));
    a.assert_error(5, "upload of lib/big.bin arrived corrupt");
}

#[test]
fn a_file_changed_with_the_same_size_and_mtime_is_needed() {
    let host = Host::start();
    let p = Payload::standard();
    host.check(&p, "r1");
    host.receive_all(&p, "r1");
    let path = host.cached(&p, "ünï cødé/ß.txt");
    let before = std::fs::metadata(&path).unwrap();
    let mut data = std::fs::read(&path).unwrap();
    data[0] = b'G';
    std::fs::write(&path, &data).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (after.len(), after.modified().unwrap()),
        (before.len(), before.modified().unwrap())
    );

    let c = host.check(&p, "r2");
    assert_eq!(c.needed, ["ünï cødé/ß.txt"]);
    assert_eq!(c.checked, 3);
}

/// A check marks the cached payload used (its mtime, for eviction) with a
/// stamp dir that it removes with its lock: none is left in the payload's
/// dir, and one left by a check killed before removing it goes with the
/// next check.
#[test]
fn a_check_leaves_no_stamp_in_the_cache_and_sweeps_a_stale_one() {
    let host = Host::start();
    let p = Payload::standard();
    host.check(&p, "r1");
    host.receive_all(&p, "r1");
    let dir = host.local(&format!("{BASE}/cache/{}", p.digest()));
    let stamps = || -> Vec<String> {
        names_in(&dir)
            .into_iter()
            .filter(|n| n.starts_with(".pushrun-used-"))
            .collect()
    };
    std::fs::create_dir(dir.join(".pushrun-used-killed")).unwrap();
    let before = std::fs::metadata(&dir).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let c = host.check(&p, "r2");
    assert!(c.needed.is_empty(), "{c:?}");
    assert!(stamps().is_empty(), "{:?}", stamps());
    assert!(std::fs::metadata(&dir).unwrap().modified().unwrap() > before);
    host.check(&p, "r3");
    assert!(stamps().is_empty(), "{:?}", stamps());
}

#[test]
fn files_deleted_with_their_directories_and_markers_kept_are_all_needed() {
    let host = Host::start();
    let p = Payload::standard();
    host.check(&p, "r1");
    host.receive_all(&p, "r1");
    let dir = host.local(&format!("{BASE}/cache/{}", p.digest()));
    for f in files_under(&dir) {
        std::fs::remove_file(f).unwrap();
    }
    // whatever marker a former version might have trusted
    std::fs::write(dir.join(".complete"), "ok\n").unwrap();
    std::fs::write(dir.join(".pushrun-complete"), "ok\n").unwrap();
    assert!(dir.join("lib").is_dir());

    let c = host.check(&p, "r2");
    assert_eq!(c.needed, all_paths(&p));
    assert_eq!(c.checked, 0);
}

#[test]
fn a_wrong_exec_bit_makes_a_file_needed() {
    let host = Host::start();
    let p = Payload::standard();
    host.check(&p, "r1");
    host.receive_all(&p, "r1");
    // the entry point lost its exec bit; a data file gained one
    std::fs::set_permissions(
        host.cached(&p, "run"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(
        host.cached(&p, "lib/data file.bin"),
        std::fs::Permissions::from_mode(0o744),
    )
    .unwrap();
    let c = host.check(&p, "r2");
    assert_eq!(c.needed, ["run", "lib/data file.bin"]);
    assert_eq!(c.checked, 2);
}

#[test]
fn a_symlink_in_place_of_a_cached_file_is_needed() {
    let host = Host::start();
    let p = Payload::standard();
    host.check(&p, "r1");
    host.receive_all(&p, "r1");
    // same content, reached through a link: still not a file of the cache
    let target = host.local("/tmp/elsewhere.txt");
    std::fs::write(&target, &p.file("ünï cødé/ß.txt").data).unwrap();
    let path = host.cached(&p, "ünï cødé/ß.txt");
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/tmp/elsewhere.txt", &path).unwrap();
    let c = host.check(&p, "r2");
    assert_eq!(c.needed, ["ünï cødé/ß.txt"]);
}

/// A symlink (or a file) where a directory of the payload belongs, at any
/// depth: it is removed, never followed, and what was under it is needed,
/// even where what it points to holds the very same files.
#[test]
fn a_symlinked_or_replaced_directory_in_the_cache_is_removed_and_its_files_needed() {
    let host = Host::start();
    let mut p = Payload::standard();
    p.files.push(File {
        path: "deep/er/x.txt".into(),
        data: b"x\n".to_vec(),
        exec: false,
    });
    host.check(&p, "r1");
    host.receive_all(&p, "r1");
    // lib and deep (above deep/er) become links to copies with the same
    // files; bin becomes a plain file
    let mut links = Vec::new();
    for dir in ["lib", "deep"] {
        let real = host.cached(&p, dir);
        let copy = host.local(&format!("/tmp/elsewhere-{dir}"));
        std::fs::rename(&real, &copy).unwrap();
        std::os::unix::fs::symlink(format!("/tmp/elsewhere-{dir}"), &real).unwrap();
        links.push((real, copy));
    }
    std::fs::remove_dir_all(host.cached(&p, "bin")).unwrap();
    std::fs::write(host.cached(&p, "bin"), "not a dir").unwrap();
    let c = host.check(&p, "r2");
    assert_eq!(
        c.needed,
        ["bin/tool", "lib/data file.bin", "deep/er/x.txt"],
        "{c:?}"
    );
    assert_eq!(c.checked, 2);
    for (link, copy) in &links {
        assert!(!link.exists() && !link.is_symlink(), "{link:?} is left");
        assert!(copy.is_dir(), "{copy:?} was touched");
    }
    assert!(!host.cached(&p, "bin").exists());
    // the repair lands in the cache itself
    host.receive(
        &p,
        "r2",
        &["bin/tool", "deep/er/x.txt", "lib/data file.bin"],
    );
    assert!(host.check(&p, "r3").needed.is_empty());
    assert!(host.cached(&p, "lib").is_dir() && !host.cached(&p, "lib").is_symlink());
}

#[test]
fn a_base_owned_by_another_user_is_refused_and_left_alone() {
    let host = Host::start();
    let base = host.local(BASE);
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&base, Some(65534), Some(65534)).unwrap();
    let p = Payload::standard();
    let refusal = format!("{BASE} is owned by uid 65534, not 0: refusing to use it");
    host.check_mode(&p, "r1", "cache").assert_error(3, &refusal);
    host.receive_bytes(&p, "r1", "cache", &p.upload_all())
        .assert_error(3, &refusal);
    host.script(CLEAN, "pushrun-clean", &["/tmp"], b"")
        .assert_error(3, &refusal);
    assert_eq!(
        std::fs::read_dir(&base).unwrap().count(),
        0,
        "nothing was written into it"
    );
    assert_eq!(std::fs::metadata(&base).unwrap().uid(), 65534);
}

#[test]
fn a_symlinked_base_is_refused_and_nothing_goes_through_the_link() {
    let host = Host::start();
    let target = host.local("/tmp/planted");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("planted", host.local(BASE)).unwrap();
    let p = Payload::standard();
    let refusal = format!("{BASE} is a symlink: refusing to use it");
    host.check_mode(&p, "r1", "cache").assert_error(3, &refusal);
    host.receive_bytes(&p, "r1", "cache", &p.upload_all())
        .assert_error(3, &refusal);
    host.script(CLEAN, "pushrun-clean", &["/tmp"], b"")
        .assert_error(3, &refusal);
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "nothing was written through the link"
    );
    assert!(
        std::fs::symlink_metadata(host.local(BASE))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn a_base_with_a_loose_mode_or_not_a_directory_is_refused() {
    let host = Host::start();
    let base = host.local(BASE);
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = Payload::standard();
    host.check_mode(&p, "r1", "cache")
        .assert_error(3, &format!("{BASE} has mode 755, not 700"));
    assert_eq!(std::fs::read_dir(&base).unwrap().count(), 0);
    std::fs::remove_dir(&base).unwrap();
    std::fs::write(&base, "").unwrap();
    host.check_mode(&p, "r1", "cache")
        .assert_error(3, &format!("{BASE} is not a directory: refusing to use it"));
}

#[test]
fn a_base_that_cannot_be_created_is_an_error_with_the_reason() {
    let host = Host::start();
    let p = Payload::standard();
    let a = host.script(
        CHECK,
        "pushrun-check",
        &["/tmp/no/such/dir", &p.digest(), "r1", "cache"],
        p.manifest().as_bytes(),
    );
    a.assert_error(
        3,
        "cannot create /tmp/no/such/dir/.pushrun-root: No such file or directory",
    );
}

#[test]
fn a_missing_tool_is_named_with_exit_4() {
    let host = Host::start();
    host.shell(
        "mkdir /tmp/nosha && /usr/bin/busybox --install -s /tmp/nosha && rm /tmp/nosha/sha256sum",
    );
    let p = Payload::standard();
    let a = host.script_with(
        "PATH=/tmp/nosha exec /tmp/nosha/sh -c",
        CHECK,
        "pushrun-check",
        &["/tmp", &p.digest(), "r1", "cache"],
        p.manifest().as_bytes(),
    );
    a.assert_error(
        4,
        "this host has no sha256sum (pushrun needs coreutils or busybox)",
    );
}

#[test]
fn a_bad_manifest_is_an_error() {
    let host = Host::start();
    let p = Payload::standard();
    let args = ["/tmp", &p.digest(), "r1", "cache"];
    let a = host.script(CHECK, "pushrun-check", &args, b"pushrun-manifest 2\n");
    a.assert_error(3, "unexpected manifest header 'pushrun-manifest 2'");
    let bad = format!(
        "pushrun-manifest 1\n{} 644 3 ../escape\n",
        sha256_hex(b"abc")
    );
    let a = host.script(CHECK, "pushrun-check", &args, bad.as_bytes());
    assert_eq!(a.code, 3, "{}", a.describe());
    assert!(
        a.text().starts_with("error bad manifest line 1: "),
        "{}",
        a.describe()
    );
}

// ----------------------------------------------------------------- seeding

fn file_mode(path: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

fn mtime(path: &std::path::Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The standard payload staged (check + receive), then an edit of it (one file
/// changed, one added) checked: only those two are needed, the rest is seeded from
/// the first payload's cache with the manifest's modes, and the first payload's
/// directory is only read (its mtime, its rank for eviction, stays).
fn an_edit_needs_only_its_changed_and_added_files(host: &Host) {
    let p1 = Payload::standard();
    assert_eq!(host.check(&p1, "e1").needed.len(), 4);
    host.receive_all(&p1, "e1");
    let old_dir = host.local(&format!("{BASE}/cache/{}", p1.digest()));
    set_mtime(&old_dir, Duration::from_secs(600));
    let old_mtime = mtime(&old_dir);

    let mut data = p1.file("lib/data file.bin").data.clone();
    data[10] ^= 0xff;
    let p2 =
        p1.with_changed("lib/data file.bin", &data)
            .with_added("new/added.txt", b"added\n", false);
    let c = host.check(&p2, "e2");
    assert_eq!(
        (c.needed, c.checked),
        (
            vec!["lib/data file.bin".to_string(), "new/added.txt".to_string()],
            3
        )
    );
    for path in ["run", "bin/tool", "ünï cødé/ß.txt"] {
        let f = p2.file(path);
        let cached = host.cached(&p2, path);
        assert_eq!(std::fs::read(&cached).unwrap(), f.data, "{path}");
        let want = if f.exec { 0o755 } else { 0o644 };
        assert_eq!(file_mode(&cached), want, "{path}");
    }
    assert!(
        !host.cached(&p2, "lib/data file.bin").exists(),
        "a changed file is not copied"
    );
    assert_eq!(mtime(&old_dir), old_mtime, "the source was only read");
    assert_eq!(
        host.cache_entries(),
        sorted(vec![p1.digest(), p2.digest()]),
        "no seed directory is left"
    );
    assert_eq!(names_in(&host.run_dir("e2")), ["digest", "out"]);

    host.receive(&p2, "e2", &["lib/data file.bin", "new/added.txt"]);
    let c = host.check(&p2, "e3");
    assert_eq!((c.needed.len(), c.checked), (0, 5), "{c:?}");
    for f in &p2.files {
        assert_eq!(std::fs::read(host.cached(&p2, &f.path)).unwrap(), f.data);
    }
    let c = host.check(&p1, "e4");
    assert_eq!(
        (c.needed.len(), c.checked),
        (0, 4),
        "the first payload is whole"
    );

    // a file lost from a cache that has others (in use): seeded alone, in place
    std::fs::remove_file(host.cached(&p2, "bin/tool")).unwrap();
    let c = host.check(&p2, "e5");
    assert_eq!((c.needed.len(), c.checked), (0, 5), "{c:?}");
    assert_eq!(file_mode(&host.cached(&p2, "bin/tool")), 0o755);
}

/// In the first payload's cache: one file changed in place (same size), one
/// replaced by a symlink to a right copy, one exec bit lost. An edit of another
/// file checked: the changed and the linked ones are needed (a seeded copy is
/// verified like any file), the one with the lost bit is not (a copy takes the
/// manifest's mode, and its content is verified).
fn a_damaged_file_in_the_old_cache_is_not_trusted(host: &Host) {
    let p1 = Payload::standard();
    host.check(&p1, "t1");
    host.receive_all(&p1, "t1");
    let bin = host.cached(&p1, "lib/data file.bin");
    let mut data = std::fs::read(&bin).unwrap();
    data[100] ^= 1;
    std::fs::write(&bin, &data).unwrap();
    std::fs::write(host.local("/tmp/tool-copy"), &p1.file("bin/tool").data).unwrap();
    std::fs::remove_file(host.cached(&p1, "bin/tool")).unwrap();
    std::os::unix::fs::symlink("/tmp/tool-copy", host.cached(&p1, "bin/tool")).unwrap();
    std::fs::set_permissions(
        host.cached(&p1, "run"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();

    let p2 = p1.with_changed("ünï cødé/ß.txt", "GRÜSSE\n".as_bytes());
    let c = host.check(&p2, "t2");
    assert_eq!(
        (c.needed.clone(), c.checked),
        (
            vec![
                "bin/tool".to_string(),
                "lib/data file.bin".to_string(),
                "ünï cødé/ß.txt".to_string()
            ],
            1
        )
    );
    assert_eq!(file_mode(&host.cached(&p2, "run")), 0o755);
    // the damaged file was copied (its manifest line matched), and still needed
    assert_eq!(
        std::fs::read(host.cached(&p2, "lib/data file.bin")).unwrap(),
        data
    );
    let refs: Vec<&str> = c.needed.iter().map(String::as_str).collect();
    host.receive(&p2, "t2", &refs);
    let c = host.check(&p2, "t3");
    assert_eq!((c.needed.len(), c.checked), (0, 4), "{c:?}");
    for f in &p2.files {
        let cached = host.cached(&p2, &f.path);
        assert_eq!(std::fs::read(&cached).unwrap(), f.data, "{}", f.path);
        assert!(
            std::fs::symlink_metadata(&cached).unwrap().is_file(),
            "{}",
            f.path
        );
    }
}

#[test]
fn an_edited_payload_needs_only_its_changed_and_added_files() {
    let host = Host::start();
    an_edit_needs_only_its_changed_and_added_files(&host);
}

#[test]
fn a_damaged_file_in_an_older_cache_is_not_trusted_when_seeding() {
    let host = Host::start();
    a_damaged_file_in_the_old_cache_is_not_trusted(&host);
}

#[test]
fn a_nocache_check_seeds_nothing() {
    let host = Host::start();
    let p1 = Payload::standard();
    host.check(&p1, "n1");
    host.receive_all(&p1, "n1");
    let p2 = p1.with_added("extra", b"x\n", false);
    let c = parse_check(&host.check_mode(&p2, "n2", "nocache"));
    assert_eq!((c.needed, c.checked), (all_paths(&p2), 0));
    assert!(!host.run_dir("n2").join("payload").exists());
    assert_eq!(names_in(&host.run_dir("n2")), ["digest", "out"]);
    assert_eq!(host.cache_entries(), [p1.digest()]);
    assert_eq!(
        names_in(&host.local(&format!("{BASE}/manifests"))),
        [p1.digest()],
        "a no-cache run keeps no manifest"
    );
}

#[test]
fn seeding_takes_each_file_from_the_most_recent_payload_that_has_it_and_keeps_ranks() {
    let host = Host::start();
    let a = Payload::many(6, 1);
    let changed = |p: &Payload, i: usize| {
        let path = format!("d{}/file {i}.dat", i % 4);
        let mut data = p.file(&path).data.clone();
        data[0] ^= 0xff;
        (path.clone(), p.with_changed(&path, &data))
    };
    host.check(&a, "a");
    host.receive_all(&a, "a");
    set_mtime(
        &host.local(&format!("{BASE}/cache/{}", a.digest())),
        Duration::from_secs(7200),
    );
    let (f0, b) = changed(&a, 0);
    let c = host.check(&b, "b");
    assert_eq!((c.needed, c.checked), (vec![f0.clone()], 5));
    host.receive(&b, "b", &[f0.as_str()]);
    set_mtime(
        &host.local(&format!("{BASE}/cache/{}", b.digest())),
        Duration::from_secs(3600),
    );
    // file 3 only in b (the most recent), file 4 only in a; file 0 as in a
    std::fs::remove_file(host.cached(&a, "d3/file 3.dat")).unwrap();
    std::fs::remove_file(host.cached(&b, "d0/file 4.dat")).unwrap();
    let mtimes = |ps: &[&Payload]| -> Vec<SystemTime> {
        ps.iter()
            .map(|p| mtime(&host.local(&format!("{BASE}/cache/{}", p.digest()))))
            .collect()
    };
    let before = mtimes(&[&a, &b]);
    let (f1, c_payload) = changed(&a, 1);
    let c = host.check(&c_payload, "c");
    assert_eq!((c.needed, c.checked), (vec![f1.clone()], 5));
    assert_eq!(mtimes(&[&a, &b]), before, "the sources keep their rank");
    host.receive(&c_payload, "c", &[f1.as_str()]);

    // a fourth payload: a, the least recently used (though c was seeded from it),
    // is the one evicted, with its manifest; the others seed the new one
    for run in ["a", "b", "c"] {
        assert_eq!(host.collect(run).code, 0);
    }
    let (f2, d) = changed(&c_payload, 2);
    let c = host.check(&d, "d");
    assert_eq!((c.needed, c.checked), (vec![f2], 5));
    let kept = sorted(vec![b.digest(), c_payload.digest(), d.digest()]);
    assert_eq!(host.cache_entries(), kept);
    assert_eq!(names_in(&host.local(&format!("{BASE}/manifests"))), kept);
}

#[test]
fn housekeeping_keeps_a_payload_that_a_check_is_seeding_from() {
    let host = Host::start();
    let base = host.local(BASE);
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
    let payloads: Vec<Payload> = (1..=5).map(|i| Payload::many(2, i)).collect();
    std::fs::create_dir_all(base.join("manifests")).unwrap();
    // payloads 1-4 cached with their manifests, 1 the least recently used
    for (i, p) in payloads[..4].iter().enumerate() {
        let dir = host.local(&format!("{BASE}/cache/{}", p.digest()));
        for f in &p.files {
            let path = dir.join(&f.path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &f.data).unwrap();
        }
        std::fs::write(base.join("manifests").join(p.digest()), "x\n").unwrap();
        set_mtime(&dir, Duration::from_secs(3600 * (4 - i as u64)));
    }
    // a check copying from payloads 1 and 3 (one line, as check.sh writes it);
    // a manifest whose payload is gone
    let seeder = host.run_dir("seeder");
    std::fs::create_dir_all(&seeder).unwrap();
    std::fs::write(
        seeder.join(".check.src"),
        format!("{} {}\n", payloads[0].digest(), payloads[2].digest()),
    )
    .unwrap();
    std::fs::write(base.join("manifests").join("abc123"), "x\n").unwrap();

    // payload 5, new here, counts as the most recently used
    host.check(&payloads[4], "r5");
    let kept = sorted(vec![
        payloads[0].digest(),
        payloads[2].digest(),
        payloads[3].digest(),
        payloads[4].digest(),
    ]);
    assert_eq!(
        host.cache_entries(),
        kept[..]
            .iter()
            .filter(|d| **d != payloads[4].digest())
            .cloned()
            .collect::<Vec<_>>(),
        "payload 2 evicted, 1 kept"
    );
    assert_eq!(names_in(&base.join("manifests")), kept);
}

// ----------------------------------------------------------------- receive

/// The tar inside a tar.gz.
fn gunzip(gz: &[u8]) -> Vec<u8> {
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut tar).unwrap();
    tar
}

/// Files that do not compress go as a plain tar (FORMAT tar): installed the
/// same; one cut short, or garbled, is corrupt, and nothing is installed.
#[test]
fn a_plain_tar_upload_installs_and_a_cut_one_is_corrupt() {
    let host = Host::start();
    let p = Payload::standard();
    let digest = p.digest();
    let all = all_paths(&p);
    let n = all.len();
    host.check(&p, "r1");
    let tar = gunzip(&p.upload_all());
    let receive = |run_id: &str, bytes: &[u8]| {
        host.script(
            RECEIVE,
            "pushrun-receive",
            &[BASE, &digest, run_id, "cache", "tar"],
            bytes,
        )
    };
    for (what, cut) in [
        ("cut short", tar[..tar.len() / 2 + 100].to_vec()),
        ("not a tar", b"this is not a tar\n".repeat(100)),
    ] {
        let a = receive("r1", &cut);
        assert_eq!(a.code, 5, "{what}: {}", a.describe());
        assert!(
            a.text().starts_with("error upload arrived corrupt: "),
            "{what}: {}",
            a.describe()
        );
        assert!(
            files_under(&host.local(&format!("{BASE}/cache"))).is_empty(),
            "{what}: nothing was installed"
        );
    }
    let a = receive("r1", &tar);
    assert_eq!(
        (a.code, a.text()),
        (0, format!("installed {n}\n")),
        "{}",
        a.describe()
    );
    let c = host.check(&p, "r2");
    assert_eq!((c.needed.len(), c.checked), (0, n));
    let a = host.script(
        RECEIVE,
        "pushrun-receive",
        &[BASE, &digest, "r2", "cache", "zip"],
        &tar,
    );
    a.assert_error(3, "bad format 'zip' (gz or tar)");
}

#[test]
fn a_corrupt_upload_is_rejected_and_the_cache_is_unchanged() {
    let host = Host::start();
    let p = Payload::standard();
    let all = all_paths(&p);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    host.check(&p, "r1");
    let a = host.receive_bytes(
        &p,
        "r1",
        "cache",
        &p.upload_tampered(&all, Some("lib/data file.bin")),
    );
    a.assert_error(5, "upload of lib/data file.bin arrived corrupt");
    assert!(
        files_under(&host.local(&format!("{BASE}/cache"))).is_empty(),
        "nothing was installed"
    );
    assert_eq!(
        host.cache_entries(),
        Vec::<String>::new(),
        "the stage directory is gone, no payload dir made"
    );
    assert_eq!(host.check(&p, "r2").needed, all);

    // a warm cache missing one file: a corrupt copy of it is not installed either
    host.receive_all(&p, "r2");
    std::fs::remove_file(host.cached(&p, "run")).unwrap();
    let a = host.receive_bytes(&p, "r2", "cache", &p.upload_tampered(&["run"], Some("run")));
    a.assert_error(5, "upload of run arrived corrupt");
    assert!(!host.cached(&p, "run").exists());
    let c = host.check(&p, "r3");
    assert_eq!((c.needed, c.checked), (vec!["run".to_string()], 3));

    // a stream that is not gzip at all
    let a = host.receive_bytes(&p, "r3", "cache", b"this is not a tar.gz\n");
    assert_eq!(a.code, 5, "{}", a.describe());
    assert!(
        a.text().starts_with("error upload arrived corrupt: "),
        "{}",
        a.describe()
    );
    // a member that .pushrun-expect does not list
    let mut members = vec![(".pushrun-expect".to_string(), Vec::new(), 0o644)];
    members.push(("stray".to_string(), b"x".to_vec(), 0o644));
    let a = host.receive_bytes(&p, "r3", "cache", &tar_gz(&members));
    a.assert_error(
        5,
        "upload arrived corrupt: it holds 1 files, .pushrun-expect lists 0",
    );
    assert_eq!(host.cache_entries(), [p.digest()]);
    assert!(!host.cached(&p, "stray").exists());
}

#[test]
fn an_upload_that_fills_the_disk_fails_cleanly() {
    let host = Host::small_tmp();
    let p = Payload {
        files: vec![
            File {
                path: "run".into(),
                data: b"#!/bin/sh\necho hi\n".to_vec(),
                exec: true,
            },
            File {
                path: "big.bin".into(),
                data: noise(3 << 20, 99),
                exec: false,
            },
        ],
    };
    assert_eq!(host.check(&p, "r1").needed, ["run", "big.bin"]);
    let a = host.receive_bytes(&p, "r1", "cache", &p.upload_all());
    a.assert_error(6, &format!("no space left on device under {BASE}"));
    // this host's /tmp is inside its own namespace: look through ssh
    let left = host.shell(&format!("cd {BASE}/cache && ls -A && find . -type f"));
    assert_eq!(left, "", "nothing is left, not even a payload directory");
    let c = host.check(&p, "r2");
    assert_eq!(
        (c.needed, c.checked),
        (vec!["run".to_string(), "big.bin".to_string()], 0)
    );
}

#[test]
fn two_receives_of_one_payload_at_once_both_succeed() {
    let host = Host::start();
    let p = Payload::many(60, 1);
    let upload = p.upload_all();
    for round in 0..2 {
        // round 0 into an empty cache, round 1 over a complete one
        let (r1, r2) = (format!("a{round}"), format!("b{round}"));
        host.check(&p, &r1);
        host.check(&p, &r2);
        let answers = std::thread::scope(|s| {
            let one = s.spawn(|| host.receive_bytes(&p, &r1, "cache", &upload));
            let two = s.spawn(|| host.receive_bytes(&p, &r2, "cache", &upload));
            [one.join().unwrap(), two.join().unwrap()]
        });
        for a in &answers {
            assert_eq!(
                (a.code, a.text()),
                (0, "installed 60\n".to_string()),
                "{}",
                a.describe()
            );
        }
        let c = host.check(&p, &format!("c{round}"));
        assert!(c.needed.is_empty(), "{c:?}");
        assert_eq!(c.checked, 60);
        assert_eq!(host.cache_entries(), [p.digest()]);
        assert!(
            !host.local(&format!("{BASE}/lock")).exists(),
            "the lock was released"
        );
    }
}

#[test]
fn nocache_mode_needs_everything_and_installs_into_the_run() {
    let host = Host::start();
    let p = Payload::standard();
    host.check(&p, "r1");
    host.receive_all(&p, "r1");
    // even with the payload cached, a no-cache run needs every file
    let c = parse_check(&host.check_mode(&p, "r2", "nocache"));
    assert_eq!((c.needed, c.checked), (all_paths(&p), 0));
    let a = host.receive_bytes(&p, "r2", "nocache", &p.upload_all());
    assert_eq!(
        (a.code, a.text()),
        (0, "installed 4\n".to_string()),
        "{}",
        a.describe()
    );
    for f in &p.files {
        assert_eq!(
            std::fs::read(host.run_dir("r2").join("payload").join(&f.path)).unwrap(),
            f.data
        );
    }
    let payload = format!("{BASE}/runs/r2/payload");
    let a = host.run(&[BASE, &payload, "r2", "web-2", "run", "0"]);
    assert_eq!(a.code, 0, "{}", a.describe());
    assert!(
        a.text().contains(&format!("payload={payload}\n")),
        "{}",
        a.describe()
    );
    let a = host.collect("r2");
    assert_eq!(a.code, 0, "{}", a.describe());
    assert!(
        !host.run_dir("r2").exists(),
        "the run and its payload are gone"
    );
}

// --------------------------------------------------------------------- run

#[test]
fn run_sets_the_environment_and_passes_the_exit_status_through() {
    let host = Host::start();
    let p = Payload::standard();
    host.check(&p, "r1");
    host.receive_all(&p, "r1");
    let payload = format!("{BASE}/cache/{}", p.digest());
    // a run id no other test uses: it marks this run's processes
    host.check(&p, "envrun1");
    let args = [
        BASE,
        &payload,
        "envrun1",
        "web-1",
        "run",
        "7",
        "two words",
        "ü'x",
    ];
    let a = host.run_with("PUSHRUN_TEST_VAR='from pushrun' exec sh -c", &args);
    let run = format!("{BASE}/runs/envrun1");
    let want = format!(
        "out={run}/out\nhost=web-1\nrun_id=envrun1\npayload={payload}\nextra=from pushrun\npwd={run}\n\
         stdin=/dev/null\narg=7\narg=two words\narg=ü'x\n"
    );
    assert_eq!((a.code, a.text()), (7, want), "{}", a.describe());
    assert_eq!(
        std::fs::read_to_string(host.run_dir("envrun1").join("out/result.txt")).unwrap(),
        "done\n"
    );
    assert!(
        host.run_dir("envrun1").is_dir(),
        "the run dir stays for collect.sh"
    );
    wait_until(Duration::from_secs(3), "the watcher is gone", || {
        processes_with("envrun1").is_empty()
    });

    let a = host.run(&[BASE, &payload, "r1", "web-1", "run", "0"]);
    assert_eq!(a.code, 0, "{}", a.describe());
    let a = host.run(&[BASE, &payload, "r1", "web-1", "no-such-entry"]);
    assert_eq!(a.code, 127, "{}", a.describe());
    let a = host.run(&[BASE, &payload, "gone", "web-1", "run"]);
    assert_eq!(a.code, 125, "{}", a.describe());
    assert!(a.stderr.contains("no run directory"), "{}", a.describe());
}

#[test]
fn closing_stdin_kills_the_whole_run_and_removes_its_directory() {
    closing_stdin_kills_the_whole_run(&Host::start(), "stoprun");
}

/// Closing the run's stdin (the initiator gone) ends every process of the
/// run, even those that ignore TERM, and removes its run dir; the cached
/// payload stays.
fn closing_stdin_kills_the_whole_run(host: &Host, tag: &str) {
    // this process's own markers: another suite on the machine must not count
    let sleep = format!("sleep 1{}", std::process::id());
    let run_id = format!("{tag}{}", std::process::id());
    // everything ignores TERM: only the watcher's KILLs end it
    let p = Payload {
        files: vec![File {
            path: "stubborn".into(),
            data: format!("#!/bin/sh\ntrap '' TERM\n{sleep}1 &\necho started\n{sleep}2\n")
                .into_bytes(),
            exec: true,
        }],
    };
    host.check(&p, &run_id);
    host.receive_all(&p, &run_id);
    let payload = format!("{BASE}/cache/{}", p.digest());
    let mut child = host.spawn_with(
        &host.launcher,
        RUN,
        "pushrun-run",
        &[BASE, &payload, &run_id, "web-1", "stubborn"],
    );
    let stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    wait_until(Duration::from_secs(3), "both sleeps run", || {
        processes_with(&sleep).len() == 2
    });
    let dropped = Instant::now();
    drop(stdin);
    wait_until(
        Duration::from_secs(8),
        "the run's processes are gone",
        || processes_with(&sleep).is_empty(),
    );
    assert!(
        dropped.elapsed() >= Duration::from_millis(1500),
        "TERM was ignored: the KILLs came after the grace"
    );
    wait_until(Duration::from_secs(8), "the run dir is removed", || {
        !host.run_dir(&run_id).exists()
    });
    let status = child.wait().unwrap();
    assert!(!status.success());
    // the ssh client is gone: what is left with the run id is on the host (the watcher)
    wait_until(Duration::from_secs(3), "the watcher is gone", || {
        processes_with(&run_id).is_empty()
    });
    // the cached payload is untouched
    assert!(host.cached(&p, "stubborn").is_file());
}

/// A check that stays on its channel runs the payload there when asked
/// (check.sh, "Then": `run`): its output up to the end line with the
/// initiator's nonce and the payload's status, then the results and the
/// done line; the payload's environment from the request; the run dir gone.
/// check.sh for `p` as pushrun starts one that stays (the manifest in the
/// script, stdin kept open): the process, its stdin and its stdout.
fn lingering_check(
    host: &Host,
    p: &Payload,
    run_id: &str,
) -> (
    Child,
    std::process::ChildStdin,
    BufReader<std::process::ChildStdout>,
) {
    let script = format!(
        "pushrun_manifest={}\npushrun_linger=1\n{CHECK_LINGER}",
        quote(&p.manifest())
    );
    let mut child = host.spawn_with(
        &host.launcher,
        &script,
        "pushrun-check",
        &["/tmp", &p.digest(), run_id, "cache"],
    );
    let stdin = child.stdin.take().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, stdin, out)
}

fn a_lingering_check_runs_the_payload_and_collects(host: &Host, tag: &str) {
    let p = Payload::standard();
    let run_id = format!("{tag}{}", std::process::id());
    host.check(&p, &run_id);
    host.receive_all(&p, &run_id);
    let digest = p.digest();
    let (mut child, mut stdin, mut out) = lingering_check(host, &p, &run_id);
    let mut answer = Vec::new();
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "answer: {answer:?}");
        let last = line.starts_with("checked ");
        answer.push(line);
        if last {
            break;
        }
    }
    assert!(answer.contains(&"runs\n".to_string()), "{answer:?}");
    assert_eq!(answer.last().unwrap(), "checked 4\n", "{answer:?}");
    let nonce = "0123456789abcdef0123456789abcdef";
    let payload = format!("{BASE}/cache/{digest}");
    let vars = [(
        "PUSHRUN_TEST_VAR".to_string(),
        "it's \"quoted\"\nand two lines".to_string(),
    )];
    let args = [BASE, &payload, &run_id, "web-1", "run", "3", "x y"];
    stdin
        .write_all(run_request(nonce, &args, &vars).as_bytes())
        .unwrap();
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    drop(stdin);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    let text = String::from_utf8_lossy(&rest).into_owned();
    let end = format!("pushrun-end-{nonce} 3\n");
    let at = text
        .find(&end)
        .unwrap_or_else(|| panic!("no end line: {text}"));
    let output = &text[..at];
    assert!(output.starts_with("pushrun-frame-start-5e1f\n"), "{output}");
    for want in [
        "host=web-1\n",
        "arg=3\n",
        "arg=x y\n",
        "extra=it's \"quoted\"\nand two lines\n",
        &format!("pwd={BASE}/runs/{run_id}\n"),
    ] {
        assert!(output.contains(want), "{want:?} in {output}");
    }
    let after = &rest[at + end.len()..];
    let done = format!("pushrun-done-{nonce}\n");
    assert!(after.ends_with(done.as_bytes()), "{text}");
    let archive = &after[..after.len() - done.len()];
    match untar_gz(archive).get("result.txt") {
        Some(Entry::File(data, _)) => assert_eq!(data, b"done\n"),
        other => panic!("result.txt: {other:?}"),
    }
    assert!(
        err.ends_with(&format!("pushrun-end-{nonce}\n{done}")),
        "{err}"
    );
    assert!(!host.run_dir(&run_id).exists());
}

#[test]
fn a_lingering_check_runs_the_payload_and_collects_under_dash() {
    a_lingering_check_runs_the_payload_and_collects(&Host::start(), "here");
}

#[test]
fn a_lingering_check_runs_the_payload_and_collects_under_busybox() {
    a_lingering_check_runs_the_payload_and_collects(&Host::busybox(), "bbhere");
}

/// A cold host's lingering check (check.sh, "receive"): what it found
/// missing comes on its own channel and it stays. An upload that is not a
/// tar at all fails at once (the rest of it is read and dropped: the next
/// word is read where it starts); then the upload as a plain tar and as a
/// tar.gz (a second run's check, the same files again) each install, and
/// the check runs the payload and collects, leaving no run dir.
fn a_lingering_check_receives_the_upload_then_runs(host: &Host, tag: &str) {
    let p = Payload::standard().with_added(
        &format!("fresh {tag}.bin"),
        &noise(70_000, tag.len() as u64),
        false,
    );
    let digest = p.digest();
    for (round, format) in [("tar", "tar"), ("gz", "gz")] {
        let run_id = format!("{tag}{round}{}", std::process::id());
        if round == "gz" {
            // cold again
            std::fs::remove_dir_all(host.local(&format!("{BASE}/cache/{digest}"))).unwrap();
        }
        let (mut child, mut stdin, mut out) = lingering_check(host, &p, &run_id);
        let mut read_to = |last: &str| {
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                assert!(out.read_line(&mut line).unwrap() > 0, "{round}: {lines:?}");
                let end = line.starts_with(last);
                lines.push(line);
                if end {
                    return lines;
                }
            }
        };
        let answer = read_to("checked ");
        assert_eq!(answer.last().unwrap(), "checked 0\n", "{round}: {answer:?}");
        assert_eq!(
            answer.iter().filter(|l| l.starts_with("need ")).count(),
            p.files.len(),
            "{round}: {answer:?}"
        );
        // the request line and the upload right behind it, in one write
        let mut send = |format: &str, upload: &[u8]| {
            let mut request = receive_request(upload.len() as u64, format).into_bytes();
            request.extend_from_slice(upload);
            stdin.write_all(&request).unwrap();
            stdin.flush().unwrap();
            read_to("received ")
        };
        if round == "tar" {
            let got = send("tar", &noise(100_000, 5));
            assert_eq!(got.last().unwrap(), "received 5\n", "{got:?}");
            assert!(
                got[0].starts_with("error upload arrived corrupt"),
                "{got:?}"
            );
        }
        let upload = if format == "tar" {
            p.upload_plain()
        } else {
            p.upload_all()
        };
        let got = send(format, &upload);
        assert_eq!(
            got,
            [
                format!("installed {}\n", p.files.len()),
                "received 0\n".into()
            ],
            "{round}"
        );
        for f in &p.files {
            let cached = host.cached(&p, &f.path);
            assert_eq!(std::fs::read(&cached).unwrap(), f.data);
            let mode = cached.metadata().unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, if f.exec { 0o755 } else { 0o644 }, "{}", f.path);
        }
        // the upload's list went with the lock
        assert!(!host.cached(&p, ".pushrun-expect").exists(), "{round}");
        let nonce = "00112233445566778899aabbccddeeff";
        let payload = format!("{BASE}/cache/{digest}");
        let args = [BASE, &payload, &run_id, "web-1", "run", "4"];
        stdin
            .write_all(run_request(nonce, &args, &[]).as_bytes())
            .unwrap();
        let mut rest = Vec::new();
        out.read_to_end(&mut rest).unwrap();
        drop(stdin);
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{round}");
        let text = String::from_utf8_lossy(&rest);
        assert!(text.contains("host=web-1\n"), "{round}: {text}");
        assert!(
            text.contains(&format!("pushrun-end-{nonce} 4\n")),
            "{round}: {text}"
        );
        assert!(
            text.ends_with(&format!("pushrun-done-{nonce}\n")),
            "{round}: {text}"
        );
        assert!(!host.run_dir(&run_id).exists(), "{round}");
    }
}

#[test]
fn a_lingering_check_receives_the_upload_then_runs_under_dash() {
    a_lingering_check_receives_the_upload_then_runs(&Host::start(), "recv");
}

#[test]
fn a_lingering_check_receives_the_upload_then_runs_under_busybox() {
    a_lingering_check_receives_the_upload_then_runs(&Host::busybox(), "bbrecv");
}

#[test]
fn a_lingering_check_receives_the_upload_then_runs_under_bash() {
    a_lingering_check_receives_the_upload_then_runs(&Host::bash(), "bashrecv");
}

#[test]
fn a_lingering_check_runs_the_payload_and_collects_under_bash() {
    a_lingering_check_runs_the_payload_and_collects(&Host::bash(), "bashhere");
}

/// The kept exec probe busy (another run, here or on a machine sharing
/// BASE, starting it at that instant: a file being run cannot be opened
/// for writing): the check tries its own probe and answers, as ever.
#[test]
fn a_busy_exec_probe_does_not_end_the_check() {
    let host = Host::start();
    let p = Payload::standard();
    host.check(&p, "p1");
    let probe = host.local(&format!("{BASE}/.exec-probe"));
    assert!(probe.is_file());
    // a program that runs for a while: while it runs, it cannot be written
    std::fs::copy("/bin/sleep", &probe).unwrap();
    let mut busy = Command::new(&probe).arg("30").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let a = host.check_mode(&p, "p2", "cache");
    let _ = busy.kill();
    let _ = busy.wait();
    assert_eq!(a.code, 0, "{}", a.describe());
    assert_eq!(parse_check(&a).needed.len(), 4, "{}", a.describe());
}

// ----------------------------------------------------------------- collect

#[test]
fn collect_returns_the_out_dir_byte_exact_and_removes_the_run() {
    let host = Host::start();
    let p = Payload::standard();
    host.check(&p, "r1");
    let out = host.run_dir("r1").join("out");
    let binary: Vec<u8> = (0..=255u8).chain(noise(5000, 3)).collect();
    std::fs::write(out.join("with space.txt"), "a b\n").unwrap();
    std::fs::create_dir_all(out.join("ünï/sub")).unwrap();
    std::fs::write(out.join("ünï/sub/ß.bin"), &binary).unwrap();
    std::fs::set_permissions(
        out.join("ünï/sub/ß.bin"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::create_dir(out.join("empty dir")).unwrap();
    std::os::unix::fs::symlink("with space.txt", out.join("link")).unwrap();
    std::fs::write(out.join("empty.txt"), "").unwrap();
    for f in ["with space.txt", "empty.txt"] {
        std::fs::set_permissions(out.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    let a = host.collect("r1");
    assert_eq!(a.code, 0, "{}", a.describe());
    let got = untar_gz(&a.stdout);
    let want: BTreeMap<String, Entry> = [
        ("with space.txt", Entry::File(b"a b\n".to_vec(), 0o644)),
        ("ünï", Entry::Dir),
        ("ünï/sub", Entry::Dir),
        ("ünï/sub/ß.bin", Entry::File(binary, 0o755)),
        ("empty dir", Entry::Dir),
        ("link", Entry::Link("with space.txt".into())),
        ("empty.txt", Entry::File(Vec::new(), 0o644)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(got, want);
    assert!(!host.run_dir("r1").exists());
    assert!(
        host.run_dir("r1").parent().unwrap().is_dir(),
        "runs/ itself stays"
    );
}

#[test]
fn collect_without_an_out_dir_sends_an_empty_archive() {
    let host = Host::start();
    let p = Payload::standard();
    host.check(&p, "r1");
    std::fs::remove_dir(host.run_dir("r1").join("out")).unwrap();
    let a = host.collect("r1");
    assert_eq!(a.code, 0, "{}", a.describe());
    assert!(untar_gz(&a.stdout).is_empty());
    assert!(!host.run_dir("r1").exists());
    // a run that is gone altogether: the same
    let a = host.collect("never");
    assert_eq!(a.code, 0, "{}", a.describe());
    assert!(untar_gz(&a.stdout).is_empty());
}

#[test]
fn a_failing_tar_in_collect_is_exit_7_and_the_run_is_still_removed() {
    let host = Host::start();
    let p = Payload::standard();
    host.check(&p, "r1");
    std::fs::write(host.run_dir("r1").join("out/x"), "x").unwrap();
    host.shell("mkdir /tmp/fakebin && printf '#!/bin/sh\\necho tar: simulated failure >&2\\nexit 2\\n' > /tmp/fakebin/tar && chmod 755 /tmp/fakebin/tar");
    let a = host.script_with(
        "PATH=/tmp/fakebin:$PATH exec sh -c",
        COLLECT,
        "pushrun-collect",
        &[BASE, "r1"],
        b"",
    );
    assert_eq!(a.code, 7, "{}", a.describe());
    assert!(a.stderr.contains("simulated failure"), "{}", a.describe());
    assert!(
        a.stderr.contains("pushrun-collect: tar failed"),
        "{}",
        a.describe()
    );
    assert!(!host.run_dir("r1").exists());
}

// ------------------------------------------------------- clean, housekeeping

#[test]
fn clean_removes_base_and_then_finds_it_absent() {
    let host = Host::start();
    let p = Payload::standard();
    host.check(&p, "r1");
    host.receive_all(&p, "r1");
    let a = host.script(CLEAN, "pushrun-clean", &["/tmp/"], b"");
    assert_eq!(
        (a.code, a.text()),
        (0, format!("removed {BASE}\n")),
        "{}",
        a.describe()
    );
    assert!(!host.local(BASE).exists());
    let a = host.script(CLEAN, "pushrun-clean", &["/tmp"], b"");
    assert_eq!(
        (a.code, a.text()),
        (0, format!("absent {BASE}\n")),
        "{}",
        a.describe()
    );
}

#[test]
fn housekeeping_keeps_three_payloads_and_those_in_use_and_drops_stale_leftovers() {
    let host = Host::start();
    let payloads: Vec<Payload> = (1..=5).map(|i| Payload::many(2, i)).collect();
    // run r1 uses payload 1 and is still going; payloads 1-4 are cached (put there
    // directly: this test is about eviction), 1 the least recently used, 4 the most
    host.check(&payloads[0], "r1");
    for (i, p) in payloads[..4].iter().enumerate() {
        let dir = host.local(&format!("{BASE}/cache/{}", p.digest()));
        for f in &p.files {
            let path = dir.join(&f.path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &f.data).unwrap();
            let mode = if f.exec { 0o755 } else { 0o644 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        set_mtime(&dir, Duration::from_secs(3600 * (4 - i as u64)));
    }
    // a run that crashed two days ago naming payload 2, uploads abandoned 2 h and 1 min ago
    let crashed = host.run_dir("crashed");
    std::fs::create_dir(&crashed).unwrap();
    std::fs::write(
        crashed.join("digest"),
        format!("{}\n", payloads[1].digest()),
    )
    .unwrap();
    set_mtime(&crashed, Duration::from_secs(48 * 3600));
    for (name, ago) in [(".stage-old", 7200), (".stage-fresh", 60)] {
        let stage = host.local(&format!("{BASE}/cache/{name}"));
        std::fs::create_dir(&stage).unwrap();
        std::fs::write(stage.join("part"), "x").unwrap();
        set_mtime(&stage, Duration::from_secs(ago));
    }

    // payload 5, new here, counts as the most recently used: its dir is
    // the upload's to make
    host.check(&payloads[4], "r5");
    let mut want = vec![
        ".stage-fresh".to_string(),
        payloads[0].digest(),
        payloads[2].digest(),
        payloads[3].digest(),
    ];
    want.sort();
    assert_eq!(
        host.cache_entries(),
        want,
        "payload 2 evicted, payload 1 kept for r1"
    );
    host.receive_all(&payloads[4], "r5");
    want.push(payloads[4].digest());
    want.sort();
    assert_eq!(host.cache_entries(), want, "nothing else evicted");
    assert!(!crashed.exists());
    assert!(host.run_dir("r1").exists() && host.run_dir("r5").exists());
    // payload 1 is still whole for its run
    let c = host.check(&payloads[0], "r1b");
    assert_eq!((c.needed.len(), c.checked), (0, 2));
}

#[test]
fn check_waits_for_a_held_lock_and_breaks_a_stale_one() {
    let host = Host::start();
    let p = Payload::standard();
    host.check(&p, "r1");
    let lock = host.local(&format!("{BASE}/lock"));
    // the lock as this version takes it (a file holding a pid), and as an
    // older one did (a directory with a pid file in it)
    let hold = |as_dir: bool| {
        if as_dir {
            std::fs::create_dir(&lock).unwrap();
            std::fs::write(lock.join("pid"), "999999\n").unwrap();
        } else {
            std::fs::write(&lock, "999998\n").unwrap();
        }
    };
    for (i, as_dir) in [false, true].into_iter().enumerate() {
        hold(as_dir);
        std::thread::scope(|s| {
            let waiting = s.spawn(|| host.check(&p, &format!("w{i}")));
            std::thread::sleep(Duration::from_millis(1000));
            assert!(
                !waiting.is_finished(),
                "check went on while the lock was held"
            );
            if as_dir {
                std::fs::remove_dir_all(&lock).unwrap();
            } else {
                std::fs::remove_file(&lock).unwrap();
            }
            let started = Instant::now();
            let c = waiting.join().unwrap();
            // (well before the 30 s timeout, even on a loaded machine)
            assert!(started.elapsed() < Duration::from_secs(15));
            assert_eq!(c.needed.len(), 4);
        });
        hold(as_dir);
        set_mtime(&lock, Duration::from_secs(11 * 60));
        let started = Instant::now();
        assert_eq!(host.check(&p, &format!("s{i}")).needed.len(), 4);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the stale lock was broken at once"
        );
        assert!(!lock.exists(), "and released");
    }
}

// ----------------------------------------------------------------- busybox

#[test]
fn the_whole_cycle_works_under_busybox_sh_with_busybox_tools() {
    let host = Host::busybox();
    let p = Payload::standard();
    let c = host.check(&p, "r1");
    assert_eq!((c.needed, c.checked), (all_paths(&p), 0));
    host.receive_all(&p, "r1");
    assert!(host.check(&p, "r2").needed.is_empty());

    // damage: one file changed in place, one exec bit lost
    let path = host.cached(&p, "lib/data file.bin");
    let mut data = std::fs::read(&path).unwrap();
    data[100] ^= 1;
    std::fs::write(&path, &data).unwrap();
    std::fs::set_permissions(
        host.cached(&p, "bin/tool"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let c = host.check(&p, "r3");
    assert_eq!(
        (c.needed.clone(), c.checked),
        (
            vec!["bin/tool".to_string(), "lib/data file.bin".to_string()],
            2
        )
    );
    host.receive(&p, "r3", &["bin/tool", "lib/data file.bin"]);
    let c = host.check(&p, "r4");
    assert_eq!((c.needed.len(), c.checked), (0, 4));
    let a = host.receive_bytes(&p, "r4", "cache", &p.upload_tampered(&["run"], Some("run")));
    a.assert_error(5, "upload of run arrived corrupt");

    let payload = format!("{BASE}/cache/{}", p.digest());
    let a = host.run(&[BASE, &payload, "r4", "bb-host", "run", "3", "x y"]);
    assert_eq!(a.code, 3, "{}", a.describe());
    assert!(
        a.text().contains("host=bb-host\n") && a.text().contains("arg=x y\n"),
        "{}",
        a.describe()
    );
    let a = host.collect("r4");
    assert_eq!(a.code, 0, "{}", a.describe());
    match untar_gz(&a.stdout).get("result.txt") {
        Some(Entry::File(data, _)) => assert_eq!(data, b"done\n"),
        other => panic!("result.txt: {other:?}"),
    }
    assert!(!host.run_dir("r4").exists());

    let a = host.script(CLEAN, "pushrun-clean", &["/tmp"], b"");
    assert_eq!(
        (a.code, a.text()),
        (0, format!("removed {BASE}\n")),
        "{}",
        a.describe()
    );
}

#[test]
fn an_edited_payload_is_seeded_under_busybox_too() {
    let host = Host::busybox();
    an_edit_needs_only_its_changed_and_added_files(&host);
}

#[test]
fn a_damaged_file_in_an_older_cache_is_not_trusted_under_busybox_either() {
    let host = Host::busybox();
    a_damaged_file_in_the_old_cache_is_not_trusted(&host);
}

#[test]
fn closing_stdin_under_busybox_kills_the_run_too() {
    closing_stdin_kills_the_whole_run(&Host::busybox(), "bbstop");
}

// ------------------------------------------------------- no tar, no gzip

impl Host {
    /// A host where the scripts run under `busybox sh` with busybox's applets
    /// on PATH but for tar and gzip (a minimal image).
    fn busybox_without_tar() -> Host {
        let mut host = Host::start();
        host.shell(
            "mkdir /tmp/nt && /usr/bin/busybox --install -s /tmp/nt && \
             rm -f /tmp/nt/tar /tmp/nt/gzip /tmp/nt/gunzip /tmp/nt/zcat && test -x /tmp/nt/sha256sum",
        );
        host.launcher = "PATH=/tmp/nt exec /tmp/nt/sh -c".into();
        host
    }

    /// put.sh for one file of `p`, its content `data`.
    fn put(&self, p: &Payload, run_id: &str, path: &str, data: &[u8]) -> Answer {
        let f = p.file(path);
        let mode = if f.exec { "755" } else { "644" };
        let digest = p.digest();
        let sum = sha256_hex(&f.data);
        self.script(
            PUT,
            "pushrun-put",
            &[BASE, &digest, run_id, "cache", &sum, mode, path],
            data,
        )
    }
}

#[test]
fn without_tar_check_says_so_and_put_installs_verified_files_one_by_one() {
    let host = Host::busybox_without_tar();
    let p = Payload::standard();
    let a = host.check_mode(&p, "r1", "cache");
    assert_eq!(a.code, 0, "{}", a.describe());
    let mut want = format!("base {BASE}\nlacks tar\nlacks gzip\n");
    for path in p.paths() {
        want.push_str(&format!("need {path}\n"));
    }
    want.push_str("checked 0\n");
    assert_eq!(a.text(), want, "{}", a.describe());

    // a file that arrives changed (same size) is not installed
    let mut bad = p.file("lib/data file.bin").data.clone();
    bad[7] ^= 1;
    let a = host.put(&p, "r1", "lib/data file.bin", &bad);
    a.assert_error(5, "upload of lib/data file.bin arrived corrupt");
    assert!(!host.cached(&p, "lib/data file.bin").exists());
    // nor one cut short
    let a = host.put(&p, "r1", "run", &p.file("run").data[..10]);
    a.assert_error(5, "upload of run arrived corrupt");

    // a symlink where one of the file's dirs belongs is not followed
    let elsewhere = host.local("/tmp/elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    // (the payload's dir, which the first put would make)
    std::fs::create_dir(host.local(&format!("{BASE}/cache/{}", p.digest()))).unwrap();
    std::os::unix::fs::symlink("/tmp/elsewhere", host.cached(&p, "lib")).unwrap();

    for f in &p.files {
        let a = host.put(&p, "r1", &f.path, &f.data);
        assert_eq!(
            (a.code, a.text()),
            (0, "installed 1\n".to_string()),
            "{}",
            a.describe()
        );
        let cached = host.cached(&p, &f.path);
        assert_eq!(std::fs::read(&cached).unwrap(), f.data, "{}", f.path);
        let mode = if f.exec { 0o755 } else { 0o644 };
        assert_eq!(file_mode(&cached), mode, "{}", f.path);
    }
    assert!(
        names_in(&elsewhere).is_empty(),
        "nothing went through the link"
    );
    assert!(!host.cached(&p, "lib").is_symlink());
    // no temp file left beside the stage dirs
    assert_eq!(host.cache_entries(), [p.digest()]);

    let a = host.check_mode(&p, "r2", "cache");
    assert_eq!(
        a.text(),
        format!("base {BASE}\nlacks tar\nlacks gzip\nchecked 4\n"),
        "{}",
        a.describe()
    );
}

#[test]
fn without_tar_collect_sends_plain_entries_byte_exact_and_removes_the_run() {
    let host = Host::busybox_without_tar();
    let p = Payload::standard();
    host.check_mode(&p, "r1", "cache");
    let out = host.run_dir("r1").join("out");
    let binary: Vec<u8> = (0..=255u8).chain(noise(5000, 3)).collect();
    std::fs::create_dir_all(out.join("d/e")).unwrap();
    std::fs::write(out.join("d/e/b in\nary"), &binary).unwrap();
    std::fs::write(out.join(".empty"), "").unwrap();
    std::os::unix::fs::symlink("d", out.join("link")).unwrap();
    for (f, mode) in [("d", 0o755), ("d/e", 0o700), ("d/e/b in\nary", 0o640)] {
        std::fs::set_permissions(out.join(f), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::set_permissions(out.join(".empty"), std::fs::Permissions::from_mode(0o600)).unwrap();

    let a = host.collect("r1");
    assert_eq!(a.code, 0, "{}", a.describe());
    let mut want = b"pushrun-plain 1\n".to_vec();
    want.extend_from_slice(b"d 755 1\nd\nd 700 3\nd/e\n");
    want.extend_from_slice(format!("f 640 {} 12\nd/e/b in\nary\n", binary.len()).as_bytes());
    want.extend_from_slice(&binary);
    want.extend_from_slice(format!("sum {}\n", sha256_hex(&binary)).as_bytes());
    want.extend_from_slice(b"l 4\nlink\n");
    want.extend_from_slice(format!("f 600 0 6\n.empty\nsum {}\n", sha256_hex(b"")).as_bytes());
    want.extend_from_slice(b"end\n");
    assert!(
        a.stdout == want,
        "{}\nwanted:\n{}",
        a.describe(),
        String::from_utf8_lossy(&want)
    );
    assert!(!host.run_dir("r1").exists());

    // a run that is gone: no entries
    let a = host.collect("never");
    assert_eq!(a.code, 0, "{}", a.describe());
    assert_eq!(a.text(), "pushrun-plain 1\nend\n");
}

#[test]
fn without_tar_fetch_sends_plain_entries_and_copy_goes_in_steps() {
    let host = Host::busybox_without_tar();
    let dir = host.local("/tmp/src");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/f"), b"\x00x\n").unwrap();
    std::fs::set_permissions(dir.join("sub"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::set_permissions(dir.join("sub/f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let a = host.script(FETCH, "pushrun-fetch", &["/tmp/src/"], b"");
    assert_eq!(a.code, 0, "{}", a.describe());
    let want = format!(
        "pushrun-plain 1\nd 755 3\nsrc\nd 750 7\nsrc/sub\nf 600 3 9\nsrc/sub/f\n\x00x\nsum {}\nend\n",
        sha256_hex(b"\x00x\n")
    );
    assert_eq!(a.text(), want, "{}", a.describe());
    // nothing is sent unless every path is there
    let a = host.script(FETCH, "pushrun-fetch", &["/tmp/src", "/tmp/nope"], b"");
    assert_eq!((a.code, a.text()), (1, String::new()), "{}", a.describe());

    // copy: begin, a file, finish, into a dest that has a file already
    std::fs::create_dir(host.local("/tmp/dest")).unwrap();
    std::fs::write(host.local("/tmp/dest/old"), b"old").unwrap();
    let step = |args: &[&str], input: &[u8]| {
        let a = host.script(COPY_PLAIN, "pushrun-copy-plain", args, input);
        assert_eq!((a.code, a.text()), (0, String::new()), "{}", a.describe());
    };
    let head = ["/tmp/dest", "1", "t1"];
    let with = |step: &str, rest: &[&str]| -> Vec<String> {
        let mut v = vec![step.to_string()];
        v.extend(head.iter().chain(rest).map(|s| s.to_string()));
        v
    };
    let begin = with(
        "begin",
        &["d", "700", "t", "d", "700", "t/s", "l", "x", "t/link"],
    );
    step(&refs(&begin), b"");
    let sum = sha256_hex(b"data\n");
    let file = with("file", &["640", &sum, "t/s/f"]);
    // a corrupt file is refused
    let a = host.script(COPY_PLAIN, "pushrun-copy-plain", &refs(&file), b"dat\n");
    assert_eq!(
        (a.code, a.text()),
        (1, "error t/s/f arrived corrupt\n".to_string()),
        "{}",
        a.describe()
    );
    step(&refs(&file), b"data\n");
    let finish = with("finish", &["d", "711", "t/s", "d", "755", "t", "--", "t"]);
    step(&refs(&finish), b"");
    let dest = host.local("/tmp/dest");
    assert_eq!(std::fs::read(dest.join("t/s/f")).unwrap(), b"data\n");
    assert_eq!(file_mode(&dest.join("t/s/f")), 0o640);
    assert_eq!(file_mode(&dest.join("t/s")), 0o711);
    assert_eq!(
        std::fs::read_link(dest.join("t/link")).unwrap(),
        PathBuf::from("x")
    );
    assert_eq!(names_in(&dest), ["old", "t"], "the stage dir is gone");
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
