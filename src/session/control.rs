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
    text.push_str(&format!("# included: {}\n", included_digest(&text)));
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

/// A digest of the files named by the `Include` lines of `text` (missing
/// ones count as empty).
fn included_digest(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for line in text.lines() {
        if let Some(file) = line.strip_prefix("Include ") {
            let file = file.trim_matches('"');
            digest.update(file.as_bytes());
            digest.update(std::fs::read(file).unwrap_or_default());
        }
    }
    crate::payload::hex(&digest.finalize()[..16])
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
