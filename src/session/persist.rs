//! Connections that outlive a run (`--persist`): each host's master stays
//! up, idle, for a while after the run, and the next run attaches to it
//! instead of connecting again.
//!
//! Persisted masters live in one private 0700 directory per user (under
//! `$XDG_RUNTIME_DIR` when set, else `$TMPDIR`, /dev/shm or /tmp: see
//! `control::scratch_base`). A socket's name is
//! a digest of everything that shapes the connection (the ssh arguments of
//! the host: user, port, jump, identity, ssh options, host key policy, and
//! the run's ssh config with the content of the files it includes), so a
//! run never attaches to a master that another configuration made. Beside
//! each socket, `KEY.host` names the host (for `pushrun disconnect` and
//! `pushrun hosts`), `KEY.log` is the master's log and `KEY.lock` keeps two
//! runs from starting the same master at once. ssh ends a master itself
//! once it has been idle for the persist time (`ControlPersist`).

use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::mux;

/// The per-user directory of persisted masters.
#[derive(Debug, Clone)]
pub struct PersistDir {
    path: PathBuf,
}

/// A persisted master, as its files describe it.
#[derive(Debug, Clone)]
pub struct Persisted {
    /// Its control socket.
    pub ctl: PathBuf,
    /// The inventory name of its host.
    pub name: String,
    /// The address it is connected to.
    pub address: String,
}

impl PersistDir {
    /// The directory, created 0700 if missing; refused when it is not a
    /// directory of ours that only we can enter.
    pub fn open() -> io::Result<PersistDir> {
        let path = persist_base();
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let meta = path.symlink_metadata()?;
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
            return Err(io::Error::other(format!(
                "{}: not a private directory of this user (want mode 0700)",
                path.display()
            )));
        }
        Ok(PersistDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The control socket for a connection made with `args` (every ssh
    /// argument but the config file's path) and the config text `config`.
    pub fn socket_for(&self, args: &[OsString], config: &str) -> PathBuf {
        let mut digest = Sha256::new();
        for a in args {
            digest.update(a.as_encoded_bytes());
            digest.update([0]);
        }
        digest.update(config.as_bytes());
        self.path
            .join(crate::payload::hex(&digest.finalize()[..10]))
    }

    /// Removes the lock files of sockets that are gone (left by masters
    /// that expired).
    pub fn sweep_locks(&self) {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "lock")
                && path.with_extension("").symlink_metadata().is_err()
            {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Every persisted master whose files are here, live or not.
    pub fn list(&self) -> Vec<Persisted> {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "host") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let mut lines = text.lines();
            let (Some(name), Some(address)) = (lines.next(), lines.next()) else {
                continue;
            };
            found.push(Persisted {
                ctl: path.with_extension(""),
                name: name.to_string(),
                address: address.to_string(),
            });
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        found
    }
}

impl Persisted {
    /// Whether a master answers on the socket.
    pub async fn is_live(&self) -> bool {
        mux::alive(&self.ctl).await.is_ok()
    }

    /// Ends the master (the mux protocol's exit request) and removes its
    /// files; false when no master was there. A master that holds the
    /// socket but does not answer (stopped, say) is ended by a signal, so
    /// that no process is left that nothing could reach any more.
    pub async fn disconnect(&self) -> bool {
        let ended = match mux::request_exit(&self.ctl).await {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => mux::end_silent(&self.ctl),
            Err(_) => false,
        };
        forget(&self.ctl);
        let _ = std::fs::remove_file(self.ctl.with_extension("lock"));
        ended
    }
}

/// Writes who a persisted socket is connected to.
pub(super) fn describe(ctl: &Path, name: &str, address: &str) -> io::Result<()> {
    std::fs::write(ctl.with_extension("host"), format!("{name}\n{address}\n"))
}

/// Removes a persisted socket and the files beside it (the lock stays: a
/// run may hold it).
pub(super) fn forget(ctl: &Path) {
    for ext in ["host", "log"] {
        let _ = std::fs::remove_file(ctl.with_extension(ext));
    }
    let _ = std::fs::remove_file(ctl);
}

/// An exclusive lock on `KEY.lock`, held while a run connects to the host
/// (released on drop, or when the process ends).
#[derive(Debug)]
pub(super) struct ConnectLock {
    _file: std::fs::File,
}

impl ConnectLock {
    /// Takes the lock, waiting up to `limit` for another run to release it.
    pub(super) async fn take(ctl: &Path, limit: Duration) -> io::Result<ConnectLock> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(ctl.with_extension("lock"))?;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // SAFETY: flock(2) on a descriptor we own.
            let got = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if got == 0 {
                return Ok(ConnectLock { _file: file });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "another pushrun is still connecting to this host",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What a run finds on a persisted socket ([`look`]).
#[derive(Debug)]
pub(super) enum Found {
    /// A master that answers: attach to it.
    Live,
    /// Nothing (any more): a socket no master was behind is removed.
    Cleared,
    /// A master that took the connection but did not answer in time
    /// (stopped, or a machine too busy): it is left as it is, socket and
    /// all, and this run connects on its own.
    Silent,
}

/// What is on `ctl`: see [`Found`].
pub(super) async fn look(ctl: &Path) -> Found {
    if ctl.symlink_metadata().is_err() {
        // ssh removed the socket of a master that expired; its notes stay.
        forget(ctl);
        return Found::Cleared;
    }
    match mux::alive(ctl).await {
        Ok(_) => Found::Live,
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Found::Silent,
        Err(_) => {
            forget(ctl);
            Found::Cleared
        }
    }
}

fn persist_base() -> PathBuf {
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty() && d.len() < 48)
    {
        return Path::new(&run).join("pushrun");
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    super::control::scratch_base().join(format!("pushrun-persist-{uid}"))
}
