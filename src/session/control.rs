//! The private directory of a run's control sockets, logs and password
//! files, and the ssh config written into it.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use std::process::Stdio;

use super::{Kex, SshOptions};

/// A private directory for control sockets and ssh logs, removed on drop.
///
/// Kept short (`/dev/shm/pushrun-PID-N/`, see `scratch_base`): Unix
/// socket paths are limited to 108 bytes. The pid in the name lets a later run remove directories left by a
/// pushrun that was killed.
#[derive(Debug)]
pub struct ControlDir {
    path: PathBuf,
}

/// Writes the run's ssh config into `dir` and returns its path.
///
/// It includes the user's configuration first (for ssh the first value
/// wins, so everything the user set stands), then adds pushrun's defaults.
/// One file for all hosts; each master is started with `-F` on it.
pub fn write_ssh_config(dir: &ControlDir, opts: &SshOptions) -> io::Result<PathBuf> {
    let mut text = String::from("# written by pushrun for one run\n");
    match &opts.config_file {
        Some(file) => {
            let file = std::fs::canonicalize(file)?;
            text.push_str(&format!("Include \"{}\"\n", file.display()));
        }
        None => {
            if let Some(home) = std::env::var_os("HOME") {
                let user = Path::new(&home).join(".ssh/config");
                text.push_str(&format!("Include \"{}\"\n", user.display()));
            }
            text.push_str("Include /etc/ssh/ssh_config\n");
        }
    }
    // Persisted masters are keyed by this text: a change in an included
    // file must change it too.
    let home = std::env::var_os("HOME").map(PathBuf::from);
    text.push_str(&format!(
        "# included: {}\n",
        included_digest(&text, home.as_deref())
    ));
    let base = text.clone();
    if opts.kex == Kex::Fast {
        text.push_str(&format!(
            "Host *\n  KexAlgorithms ^{}\n",
            fast_kex().join(",")
        ));
    }
    let path = dir.path().join("ssh_config");
    std::fs::write(&path, &text)?;
    // Older clients (before OpenSSH 8.7) do not know the `^` prefix: then
    // leave the order to ssh rather than fail every host.
    if opts.kex == Kex::Fast {
        let check = std::process::Command::new("ssh")
            .arg("-G")
            .arg("-F")
            .arg(&path)
            .arg("pushrun-config-check")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !check.is_ok_and(|s| s.success()) {
            std::fs::write(&path, &base)?;
        }
    }
    Ok(path)
}

/// The text by which persisted masters are told apart ([`super::persist`]):
/// the run's config without its own `Include` lines, whose files are in it
/// by their content (the `# included:` digest), not by their paths. The
/// same settings under another path, as a wrapper that writes a fresh
/// temporary config for each run gives, are the same connection.
pub(super) fn identity(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with("Include "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// How deep ssh follows `Include` (readconf.c: READCONF_MAX_DEPTH).
const INCLUDE_DEPTH: usize = 16;

/// A digest of the content ssh reads through the `Include` lines of the
/// run's config `text`: each file, then the files its own `Include` lines
/// name (globs expanded in lexical order; a relative path is in ~/.ssh
/// for a user's file, in /etc/ssh for the system's, as ssh_config(5)
/// says), as deep as ssh goes. A file that is missing counts as such; the
/// paths themselves do not count.
fn included_digest(text: &str, home: Option<&Path>) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for line in text.lines() {
        if let Some(file) = line.strip_prefix("Include ") {
            let file = Path::new(file.trim_matches('"'));
            // the one system file pushrun names; `--ssh-config` is a user one
            let system = file == Path::new("/etc/ssh/ssh_config");
            hash_config(&mut digest, file, system, home, 0);
        }
    }
    crate::payload::hex(&digest.finalize()[..16])
}

fn hash_config(
    digest: &mut sha2::Sha256,
    file: &Path,
    system: bool,
    home: Option<&Path>,
    depth: usize,
) {
    use sha2::Digest;
    // a regular file only (a FIFO or a device named there would never end)
    let regular = std::fs::metadata(file).is_ok_and(|m| m.is_file());
    let Some(bytes) = regular.then(|| std::fs::read(file).ok()).flatten() else {
        digest.update(b"missing\0");
        return;
    };
    digest.update((bytes.len() as u64).to_be_bytes());
    digest.update(&bytes);
    if depth + 1 >= INCLUDE_DEPTH {
        return;
    }
    for pattern in include_args(&String::from_utf8_lossy(&bytes)) {
        for path in expand_include(&pattern, system, home) {
            hash_config(digest, &path, system, home, depth + 1);
        }
    }
}

/// The paths named by the `Include` lines of a config file's text: the
/// keyword in any case, after spaces or `=`, each argument possibly in
/// double quotes.
fn include_args(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        let end = line
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(line.len());
        if !line[..end].eq_ignore_ascii_case("include") {
            continue;
        }
        let mut rest = line[end..].trim_start();
        if let Some(r) = rest.strip_prefix('=') {
            rest = r.trim_start();
        }
        let mut word = String::new();
        let mut quoted = false;
        let mut started = false;
        for c in rest.chars() {
            match c {
                '"' => {
                    quoted = !quoted;
                    started = true;
                }
                c if c.is_whitespace() && !quoted => {
                    if started {
                        found.push(std::mem::take(&mut word));
                        started = false;
                    }
                }
                '#' if !quoted && !started => break,
                c => {
                    word.push(c);
                    started = true;
                }
            }
        }
        if started {
            found.push(word);
        }
    }
    found
}

/// The files an `Include` argument names, in the order ssh reads them.
fn expand_include(pattern: &str, system: bool, home: Option<&Path>) -> Vec<PathBuf> {
    let path = match (pattern.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) if !system => home.join(rest),
        _ if pattern.starts_with('/') => PathBuf::from(pattern),
        _ if system => Path::new("/etc/ssh").join(pattern),
        _ => match home {
            Some(home) => home.join(".ssh").join(pattern),
            None => return Vec::new(),
        },
    };
    let Ok(paths) = glob::glob(&path.to_string_lossy()) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = paths.flatten().collect();
    paths.sort();
    paths
}

/// The cheap key exchanges, best first: ML-KEM's hybrid (post-quantum, and
/// about as cheap as curve25519) where this ssh offers it (OpenSSH 9.9 and
/// later), then curve25519-sha256 (not post-quantum).
fn fast_kex() -> Vec<&'static str> {
    const MLKEM: &str = "mlkem768x25519-sha256";
    let offered = std::process::Command::new("ssh")
        .args(["-Q", "kex"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim() == MLKEM)
        })
        .unwrap_or(false);
    if offered {
        vec![MLKEM, "curve25519-sha256"]
    } else {
        vec!["curve25519-sha256"]
    }
}

impl ControlDir {
    /// Creates a new 0700 directory, first removing stale ones of dead
    /// pushruns. A run's connections need open files (about 8 per host at
    /// once: the mux socket and a command's pipes), so this also raises the
    /// soft limit on them to the hard one, as far as it goes.
    pub fn create() -> io::Result<ControlDir> {
        raise_open_files_limit();
        let base = control_base();
        sweep_stale(&base);
        let pid = std::process::id();
        for n in 0..1000u32 {
            let path = base.join(format!("pushrun-{pid}-{n}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(ControlDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("no free control directory name"))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory now (also done on drop).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl Drop for ControlDir {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (many systems start
/// programs at a soft 1024 under a far higher hard limit).
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The soft limit on open files, for error messages.
pub(super) fn open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        0
    }
}

fn control_base() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(run) if !run.is_empty() && run.len() < 48 => PathBuf::from(run),
        _ => scratch_base(),
    }
}

/// Where pushrun makes its private dirs (a run's control dir, persisted
/// masters) when `XDG_RUNTIME_DIR` is not set: `$TMPDIR` when set, else
/// `/dev/shm` when it is a shared tmpfs (world-writable and sticky, like
/// /tmp), else /tmp.
///
/// A run makes and removes a socket and a log per host; on a disk-backed
/// /tmp each of those is an inode allocated and freed on disk (measured on
/// ext4: 0.15 s of pushrun's CPU for 100 hosts), on a tmpfs a few
/// microseconds. The dirs are 0700 and checked as under /tmp.
///
/// Found once per process: every persisted host asks.
pub(super) fn scratch_base() -> PathBuf {
    static BASE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        if let Some(t) = std::env::var_os("TMPDIR").filter(|t| !t.is_empty() && t.len() < 48) {
            return PathBuf::from(t);
        }
        let shm = Path::new("/dev/shm");
        if is_shared_tmpfs(shm) {
            return shm.to_path_buf();
        }
        PathBuf::from("/tmp")
    })
    .clone()
}

/// Whether `dir` is a real directory on a tmpfs, world-writable and sticky.
fn is_shared_tmpfs(dir: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(meta) = dir.symlink_metadata() else {
        return false;
    };
    if !meta.is_dir() || meta.mode() & 0o1777 != 0o1777 {
        return false;
    }
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs with a NUL-terminated path and a zeroed local struct.
    unsafe {
        let mut fs: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut fs) == 0 && fs.f_type as i64 == TMPFS_MAGIC
    }
}

/// Removes `pushrun-PID-N` directories of ours whose process is gone.
fn sweep_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let uid = unsafe { libc::getuid() };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("pushrun-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if meta.is_dir() && meta.uid() == uid && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn run_config(user_file: &Path) -> String {
        format!("Include \"{}\"\n", user_file.display())
    }

    #[test]
    fn include_lines_are_read_as_ssh_reads_them() {
        let text = "Host a\n  Include  one \"two words\" # note\n\
                    include=three\n  INCLUDE = four five\n# Include six\nIncludeX seven\n";
        assert_eq!(
            include_args(text),
            ["one", "two words", "three", "four", "five"]
        );
    }

    #[test]
    fn the_same_settings_under_another_path_are_the_same_connection() {
        let home = tempfile::tempdir().unwrap();
        let (a, b) = (home.path().join("a.conf"), home.path().join("b.conf"));
        write(&a, "Host *\n  Include extra/*.conf\n");
        write(&b, "Host *\n  Include extra/*.conf\n");
        write(&home.path().join(".ssh/extra/1.conf"), "Port 22\n");
        let h = Some(home.path());
        let (ta, tb) = (run_config(&a), run_config(&b));
        assert_eq!(included_digest(&ta, h), included_digest(&tb, h));
        let with = |t: &str| identity(&format!("{t}# included: {}\n", included_digest(t, h)));
        assert_eq!(with(&ta), with(&tb));
        assert!(!with(&ta).contains("a.conf"));
    }

    #[test]
    fn a_change_in_a_file_included_from_an_included_file_is_another_connection() {
        let home = tempfile::tempdir().unwrap();
        let main = home.path().join("main.conf");
        let h = Some(home.path());
        let text = run_config(&main);
        write(&main, "Include ~/conf.d/*\n");
        write(&home.path().join("conf.d/a"), "Include deeper\n");
        write(&home.path().join(".ssh/deeper"), "User one\n");
        let before = included_digest(&text, h);
        assert_eq!(before, included_digest(&text, h), "stable");
        write(&home.path().join(".ssh/deeper"), "User two\n");
        let changed = included_digest(&text, h);
        assert_ne!(before, changed, "a file two includes down");
        write(&home.path().join("conf.d/b"), "Port 2\n");
        assert_ne!(
            changed,
            included_digest(&text, h),
            "a new file the glob matches"
        );
    }

    /// A config at `path` (under a fresh HOME) with `text`, read to its
    /// end: the digest comes back, twice the same.
    fn read_to_its_end(path: &str, text: &str) {
        let home = tempfile::tempdir().unwrap();
        let main = home.path().join(path);
        write(&main, text);
        let run = run_config(&main);
        let h = Some(home.path());
        assert_eq!(included_digest(&run, h), included_digest(&run, h));
    }

    #[test]
    fn an_include_of_something_that_is_not_a_file_is_not_read() {
        read_to_its_end("main.conf", "Include /dev/zero /dev/stdin ~/\n");
    }

    #[test]
    fn a_config_that_includes_itself_is_read_to_sshs_depth_only() {
        read_to_its_end(".ssh/loop", "Include loop\n");
    }
}
