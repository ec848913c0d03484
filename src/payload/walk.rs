//! Walking a payload directory into the list of its files. Symlinks are
//! followed, because a payload that links in a shared script means to ship
//! its content, but only inside the payload: a link that leaves it, dangles
//! or loops is refused, and so are fifos, sockets and devices, which have no
//! content to copy. Names must fit on a manifest line, and the top-level
//! `.pushrun-expect` is kept for the archive's own first member.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::archive::EXPECT_NAME;
use super::manifest::normal_mode;
use super::{PayloadError, io_err};

/// A regular file found in a payload directory.
#[derive(Debug)]
pub(super) struct FoundFile {
    /// Manifest path: relative to the payload directory, `/`-separated.
    pub(super) path: String,
    /// Where to read it: the canonical target for a followed symlink.
    pub(super) read_from: PathBuf,
    /// Normalized mode, 0o755 or 0o644.
    pub(super) mode: u32,
}

/// The files under the payload directory `dir`, sorted by manifest path.
/// `dir` is shown as given in messages.
pub(super) fn files(dir: &Path) -> Result<Vec<FoundFile>, PayloadError> {
    let root = fs::canonicalize(dir).map_err(|e| io_err(dir, e))?;
    let mut walker = Walker {
        shown_root: dir,
        root: root.clone(),
        ancestors: Vec::new(),
        files: Vec::new(),
    };
    walker.walk(&root, "")?;
    let mut files = walker.files;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Recursive, symlink-following walk of a payload directory.
struct Walker<'a> {
    /// The directory as given, for messages.
    shown_root: &'a Path,
    /// Canonical payload directory.
    root: PathBuf,
    /// Canonical directories being walked, to detect symlink loops.
    ancestors: Vec<PathBuf>,
    /// The files found so far.
    files: Vec<FoundFile>,
}

impl Walker<'_> {
    /// Walks the canonical directory `real`, whose manifest path is `rel`
    /// (empty, or ending with `/`).
    fn walk(&mut self, real: &Path, rel: &str) -> Result<(), PayloadError> {
        let shown_dir = self.shown_root.join(rel);
        let mut items = Vec::new();
        for item in fs::read_dir(real).map_err(|e| io_err(&shown_dir, e))? {
            let item = item.map_err(|e| io_err(&shown_dir, e))?;
            items.push((
                item.file_name(),
                item.file_type().map_err(|e| io_err(&item.path(), e))?,
            ));
        }
        items.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));

        self.ancestors.push(real.to_path_buf());
        for (name, file_type) in items {
            let shown = shown_dir.join(&name);
            let name = name
                .to_str()
                .ok_or_else(|| PayloadError::NonUtf8Name(shown.clone()))?;
            if name.contains(['\n', '\r', '\\']) {
                return Err(PayloadError::BadName(shown));
            }
            if rel.is_empty() && name == EXPECT_NAME {
                return Err(PayloadError::ReservedName(shown));
            }
            let path = format!("{rel}{name}");
            let here = real.join(name);
            if file_type.is_dir() {
                self.walk(&here, &format!("{path}/"))?;
            } else if file_type.is_file() {
                let meta = fs::symlink_metadata(&here).map_err(|e| io_err(&shown, e))?;
                self.files.push(FoundFile {
                    path,
                    read_from: here,
                    mode: normal_mode(meta.permissions().mode()),
                });
            } else if file_type.is_symlink() {
                let target = match fs::canonicalize(&here) {
                    Ok(t) => t,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(PayloadError::BrokenSymlink(shown));
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                        return Err(PayloadError::SymlinkLoop(shown));
                    }
                    Err(e) => return Err(io_err(&shown, e)),
                };
                if !target.starts_with(&self.root) {
                    return Err(PayloadError::SymlinkOutside(shown));
                }
                let meta = fs::metadata(&target).map_err(|e| io_err(&shown, e))?;
                if meta.is_dir() {
                    if self.ancestors.contains(&target) {
                        return Err(PayloadError::SymlinkLoop(shown));
                    }
                    self.walk(&target, &format!("{path}/"))?;
                } else if meta.is_file() {
                    self.files.push(FoundFile {
                        path,
                        read_from: target,
                        mode: normal_mode(meta.permissions().mode()),
                    });
                } else {
                    return Err(PayloadError::SpecialFile {
                        path: shown,
                        kind: special_kind(meta.file_type()),
                    });
                }
            } else {
                return Err(PayloadError::SpecialFile {
                    path: shown,
                    kind: special_kind(file_type),
                });
            }
        }
        self.ancestors.pop();
        Ok(())
    }
}

/// How a file that is not a file, directory or symlink is named in messages.
fn special_kind(t: fs::FileType) -> &'static str {
    if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else {
        "file type"
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;

    use tempfile::TempDir;

    use super::*;
    use crate::payload::fixtures::*;
    use crate::payload::{ManifestEntry, Payload};

    #[test]
    fn paths_sort_bytewise() {
        let t = with_run();
        for name in ["b", "a/z", "a.txt", "A", "a/b/c", "_", "a-", "ab"] {
            put(t.path(), name, b"", false);
        }
        let p = Payload::load(t.path()).unwrap();
        let paths: Vec<&str> = p.entries().iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["A", "_", "a-", "a.txt", "a/b/c", "a/z", "ab", "b", "run"]
        );
        let e3b = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            p.entries()[0],
            ManifestEntry {
                path: "A".into(),
                mode: 0o644,
                size: 0,
                sha256: e3b.into()
            }
        );
    }

    #[test]
    fn symlinks_inside_are_followed() {
        let t = with_run();
        put(t.path(), "lib/data.txt", b"data\n", true);
        symlink("data.txt", t.path().join("lib/link")).unwrap();
        symlink("lib", t.path().join("alias")).unwrap();
        symlink("lib/link", t.path().join("start")).unwrap();
        put(t.path(), "pushrun.yaml", b"entry: start\n", false);
        let p = Payload::load(t.path()).unwrap();
        let got: Vec<(&str, u32, &str)> = p
            .entries()
            .iter()
            .map(|e| (e.path.as_str(), e.mode, e.sha256.as_str()))
            .collect();
        let yaml_sha = "472f8e52d941f53769e5ea1ed9d27d9df5cd77fcdd49f75ced1f077c8250fabf";
        assert_eq!(
            got,
            [
                ("alias/data.txt", 0o755, DATA_SHA),
                ("alias/link", 0o755, DATA_SHA),
                ("lib/data.txt", 0o755, DATA_SHA),
                ("lib/link", 0o755, DATA_SHA),
                ("pushrun.yaml", 0o644, yaml_sha),
                ("run", 0o755, RUN_SHA),
                ("start", 0o755, DATA_SHA),
            ]
        );
        assert_eq!(p.entry(), "start");
        let members = untar(&p.tar_gz(&["alias/link"]).unwrap());
        assert_eq!(members[2], file("alias/link", 0o755, b"data\n"));
    }

    #[test]
    fn symlink_errors() {
        let outside = TempDir::new().unwrap();
        put(outside.path(), "secret", b"s", false);
        let t = with_run();
        fs::create_dir(t.path().join("lib")).unwrap();
        symlink(outside.path().join("secret"), t.path().join("lib/link")).unwrap();
        assert_eq!(
            err(t.path()),
            format!("{}/lib/link: symlink points outside the payload", d(&t))
        );
        fs::remove_file(t.path().join("lib/link")).unwrap();

        symlink("..", t.path().join("lib/up")).unwrap();
        assert_eq!(err(t.path()), format!("{}/lib/up: symlink loop", d(&t)));
        fs::remove_file(t.path().join("lib/up")).unwrap();

        symlink("../..", t.path().join("lib/out")).unwrap();
        assert_eq!(
            err(t.path()),
            format!("{}/lib/out: symlink points outside the payload", d(&t))
        );
        fs::remove_file(t.path().join("lib/out")).unwrap();

        symlink("gone", t.path().join("lib/dangling")).unwrap();
        assert_eq!(
            err(t.path()),
            format!("{}/lib/dangling: broken symlink", d(&t))
        );
        fs::remove_file(t.path().join("lib/dangling")).unwrap();

        symlink("self", t.path().join("lib/self")).unwrap();
        assert_eq!(err(t.path()), format!("{}/lib/self: symlink loop", d(&t)));
    }

    #[test]
    fn special_files_are_errors() {
        let t = with_run();
        let fifo = std::ffi::CString::new(t.path().join("pipe").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        assert_eq!(
            err(t.path()),
            format!(
                "{}/pipe: fifo is not supported (only files, directories and symlinks)",
                d(&t)
            )
        );
        fs::remove_file(t.path().join("pipe")).unwrap();

        let _sock = std::os::unix::net::UnixListener::bind(t.path().join("sock")).unwrap();
        assert_eq!(
            err(t.path()),
            format!(
                "{}/sock: socket is not supported (only files, directories and symlinks)",
                d(&t)
            )
        );
        // Followed symlinks are checked the same way.
        symlink("sock", t.path().join("a-link")).unwrap();
        assert_eq!(
            err(t.path()),
            format!(
                "{}/a-link: socket is not supported (only files, directories and symlinks)",
                d(&t)
            )
        );
    }

    #[test]
    fn bad_names_are_errors() {
        let t = with_run();
        put(t.path(), "d/a\nb", b"", false);
        assert_eq!(
            err(t.path()),
            format!(
                "{}/d/a\\nb: file name with a newline or backslash is not supported",
                d(&t)
            )
        );
        fs::remove_dir_all(t.path().join("d")).unwrap();

        put(t.path(), "a\\b", b"", false);
        assert_eq!(
            err(t.path()),
            format!(
                "{}/a\\b: file name with a newline or backslash is not supported",
                d(&t)
            )
        );
        fs::remove_file(t.path().join("a\\b")).unwrap();

        fs::write(t.path().join(OsStr::from_bytes(b"x\xff")), b"").unwrap();
        assert_eq!(
            err(t.path()),
            format!("{}/x\u{fffd}: file name is not valid UTF-8", d(&t))
        );
        fs::remove_file(t.path().join(OsStr::from_bytes(b"x\xff"))).unwrap();

        put(t.path(), ".pushrun-expect", b"", false);
        assert_eq!(
            err(t.path()),
            format!(
                "{}/.pushrun-expect: the name .pushrun-expect is reserved for pushrun",
                d(&t)
            )
        );
        fs::remove_file(t.path().join(".pushrun-expect")).unwrap();

        // Only at the top, where the archive puts its own.
        put(t.path(), "sub/.pushrun-expect", b"", false);
        assert_eq!(
            Payload::load(t.path()).unwrap().entries()[1].path,
            "sub/.pushrun-expect"
        );
    }
}
