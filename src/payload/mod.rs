//! Payloads: a directory with an entry point that pushrun copies to each host
//! and runs there.
//!
//! A payload is described by a canonical, line-based manifest (sha256, mode,
//! size and path of every file) whose sha256 is the payload's digest. The
//! remote POSIX sh scripts parse the same text, so a host can tell which files
//! it already has and pushrun sends only the rest, as a tar.gz whose first
//! member (`.pushrun-expect`) says exactly what the archive holds. Files are
//! hashed once when loading and read again (and checked) only when archived,
//! because a payload can be hundreds of MB. The default collector is embedded
//! in the binary by `build.rs` and follows the same rules.
//!
//! Here: [`Payload`] (loading, the digest) and [`PayloadError`]. The parts:
//! `walk` lists a directory's files, `config` reads pushrun.yaml and settles
//! the entry point, `manifest` writes and parses the canonical text, and
//! `archive` builds the tar.gz of a set of files.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

mod archive;
mod config;
#[cfg(test)]
mod fixtures;
mod manifest;
mod walk;

pub(crate) use archive::unnamed_file;
pub use archive::{FileSource, is_gzip};
pub use manifest::{ManifestEntry, parse_manifest};

use config::{CONFIG_NAME, Settings, settle};
pub(crate) use manifest::hex;
use manifest::{hash_file, normal_mode};

include!(concat!(env!("OUT_DIR"), "/builtin_payload.rs"));

/// Name of the builtin payload.
const BUILTIN_NAME: &str = "builtin collector";

/// Errors from loading a payload, parsing a manifest or building an archive.
/// Each displays as one line that names the path concerned.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The payload directory does not exist.
    #[error("{}: payload directory not found", shown(.0))]
    NotFound(PathBuf),
    /// The payload path is not a directory.
    #[error("{}: payload is not a directory", shown(.0))]
    NotADirectory(PathBuf),
    /// There is no `run` file and pushrun.yaml names no entry point.
    #[error(
        "{}: no entry point \"run\" (add an executable run file, or set entry: in pushrun.yaml)",
        shown(.0)
    )]
    NoEntry(PathBuf),
    /// The entry point is a directory.
    #[error("{}: entry point is not a regular file", shown(.0))]
    EntryNotAFile(PathBuf),
    /// The entry point has no exec bit.
    #[error("{}: entry point is not executable (chmod +x)", shown(.0))]
    NotExecutable(PathBuf),
    /// A symlink resolves to a path outside the payload directory.
    #[error("{}: symlink points outside the payload", shown(.0))]
    SymlinkOutside(PathBuf),
    /// A symlink's target does not exist.
    #[error("{}: broken symlink", shown(.0))]
    BrokenSymlink(PathBuf),
    /// A symlink leads back to a directory that contains it.
    #[error("{}: symlink loop", shown(.0))]
    SymlinkLoop(PathBuf),
    /// A fifo, socket or device file.
    #[error("{}: {kind} is not supported (only files, directories and symlinks)", shown(.path))]
    SpecialFile {
        /// The file.
        path: PathBuf,
        /// "fifo", "socket", "block device" or "character device".
        kind: &'static str,
    },
    /// A file name that is not UTF-8.
    #[error("{}: file name is not valid UTF-8", shown(.0))]
    NonUtf8Name(PathBuf),
    /// A file name with `\n`, `\r` or `\`, which the manifest cannot carry.
    #[error("{}: file name with a newline or backslash is not supported", shown(.0))]
    BadName(PathBuf),
    /// A top-level `.pushrun-expect` file.
    #[error("{}: the name .pushrun-expect is reserved for pushrun", shown(.0))]
    ReservedName(PathBuf),
    /// pushrun.yaml is invalid.
    #[error("{}{}: {message}", shown(.path), line_suffix(*.line))]
    Config {
        /// The pushrun.yaml file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// Reading a file or directory failed.
    #[error("{}: {err}", shown(.path))]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error. It is also in the message, which callers show alone.
        #[source]
        err: io::Error,
    },
    /// A file's size or content differs from its manifest entry.
    #[error("{}: changed while pushrun was running", shown(.0))]
    Changed(PathBuf),
    /// `tar_gz` was asked for a path that is not in the manifest.
    #[error("{}: no file {path:?} in the payload", shown(Path::new(.payload)))]
    UnknownPath {
        /// The payload's name.
        payload: String,
        /// The requested path.
        path: String,
    },
    /// Writing the archive failed.
    #[error("writing the payload archive: {0}")]
    Write(#[source] io::Error),
    /// A manifest text is not canonical.
    #[error("manifest line {line}: {message}")]
    Manifest {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Where a file's bytes come from when it is archived.
#[derive(Clone)]
enum Source {
    /// Read from this path (a symlink's canonical target for followed links).
    Disk(PathBuf),
    /// Embedded in the binary.
    Embedded(&'static [u8]),
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Disk(p) => f.debug_tuple("Disk").field(p).finish(),
            Source::Embedded(b) => write!(f, "Embedded({} bytes)", b.len()),
        }
    }
}

/// A loaded payload: its files, manifest, digest and settings.
#[derive(Debug, Clone)]
pub struct Payload {
    name: String,
    /// The directory as given; `None` for the builtin payload.
    dir: Option<PathBuf>,
    entry: String,
    timeout: Option<Duration>,
    env: BTreeMap<String, String>,
    entries: Vec<ManifestEntry>,
    /// Parallel to `entries`.
    sources: Vec<Source>,
    manifest: String,
    digest: String,
    total_size: u64,
}

impl Payload {
    /// Loads the payload in `dir`: walks it, reads `pushrun.yaml` if there is
    /// one, checks the entry point, then hashes every file.
    pub fn load(dir: &Path) -> Result<Payload, PayloadError> {
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(PayloadError::NotADirectory(dir.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(PayloadError::NotFound(dir.to_path_buf()));
            }
            Err(err) => return Err(io_err(dir, err)),
        }
        let files = walk::files(dir)?;

        let config = match files.iter().find(|f| f.path == CONFIG_NAME) {
            Some(f) => {
                let text = fs::read(&f.read_from);
                Some(text.map_err(|e| io_err(&dir.join(CONFIG_NAME), e))?)
            }
            None if fs::symlink_metadata(dir.join(CONFIG_NAME)).is_ok() => {
                return Err(PayloadError::Config {
                    path: dir.join(CONFIG_NAME),
                    line: None,
                    message: "not a regular file".into(),
                });
            }
            None => None,
        };
        // Settle the entry point before hashing, which can take a while.
        let listing: Vec<(&str, u32)> = files.iter().map(|f| (f.path.as_str(), f.mode)).collect();
        let settings = settle(dir, &listing, config.as_deref())?;

        let mut entries = Vec::with_capacity(files.len());
        let mut sources = Vec::with_capacity(files.len());
        let mut buf = vec![0u8; 256 * 1024];
        for f in files {
            let (size, sha256) =
                hash_file(&f.read_from, &mut buf).map_err(|e| io_err(&dir.join(&f.path), e))?;
            entries.push(ManifestEntry {
                path: f.path,
                mode: f.mode,
                size,
                sha256,
            });
            sources.push(Source::Disk(f.read_from));
        }
        Ok(Payload::assemble(
            dir.display().to_string(),
            Some(dir.to_path_buf()),
            settings,
            entries,
            sources,
        ))
    }

    /// The default collector, embedded in the binary at build time.
    pub fn builtin() -> Payload {
        let listing: Vec<(&str, u32)> = BUILTIN_FILES
            .iter()
            .map(|&(path, mode, _)| (path, normal_mode(mode)))
            .collect();
        let config = BUILTIN_FILES
            .iter()
            .find(|f| f.0 == CONFIG_NAME)
            .map(|f| f.2);
        // build.rs checks `run`; `settle` checks the rest. A failure here is a
        // broken build, which the unit tests catch.
        let settings = match settle(Path::new(BUILTIN_NAME), &listing, config) {
            Ok(s) => s,
            Err(e) => panic!("the builtin payload is invalid: {e}"),
        };
        let entries = BUILTIN_FILES
            .iter()
            .map(|&(path, mode, bytes)| ManifestEntry {
                path: path.to_string(),
                mode: normal_mode(mode),
                size: bytes.len() as u64,
                sha256: hex(&Sha256::digest(bytes)),
            })
            .collect();
        let sources = BUILTIN_FILES
            .iter()
            .map(|f| Source::Embedded(f.2))
            .collect();
        Payload::assemble(BUILTIN_NAME.to_string(), None, settings, entries, sources)
    }

    /// A payload of one executable file, named `name` in it and its entry
    /// point: how a relay receives the pushrun binary, checked and cached
    /// like any payload.
    pub fn single_file(path: &Path, name: &str) -> Result<Payload, PayloadError> {
        let mut buf = vec![0u8; 256 * 1024];
        let (size, sha256) = hash_file(path, &mut buf).map_err(|e| io_err(path, e))?;
        let entry = ManifestEntry {
            path: name.to_string(),
            mode: 0o755,
            size,
            sha256,
        };
        let settings = Settings {
            entry: name.to_string(),
            timeout: None,
            env: BTreeMap::new(),
        };
        Ok(Payload::assemble(
            path.display().to_string(),
            Some(path.to_path_buf()),
            settings,
            vec![entry],
            vec![Source::Disk(path.to_path_buf())],
        ))
    }

    /// Computes the manifest. `entries` must be sorted by path.
    fn assemble(
        name: String,
        dir: Option<PathBuf>,
        settings: Settings,
        entries: Vec<ManifestEntry>,
        sources: Vec<Source>,
    ) -> Payload {
        let manifest = manifest::text(&entries);
        let digest = hex(&Sha256::digest(manifest.as_bytes()));
        let total_size = entries.iter().map(|e| e.size).sum();
        Payload {
            name,
            dir,
            entry: settings.entry,
            timeout: settings.timeout,
            env: settings.env,
            entries,
            sources,
            manifest,
            digest,
            total_size,
        }
    }

    /// Whether this is the embedded default collector.
    pub fn is_builtin(&self) -> bool {
        self.dir.is_none()
    }

    /// The directory as given to [`Payload::load`], or "builtin collector".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Manifest path of the entry point.
    pub fn entry(&self) -> &str {
        &self.entry
    }

    /// `timeout:` from pushrun.yaml.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// `env:` from pushrun.yaml, values as strings.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// The files, sorted by path.
    pub fn entries(&self) -> &[ManifestEntry] {
        &self.entries
    }

    /// The canonical manifest text.
    pub fn manifest(&self) -> &str {
        &self.manifest
    }

    /// Lowercase hex sha256 of [`Payload::manifest`].
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Sum of the file sizes.
    pub fn total_size(&self) -> u64 {
        self.total_size
    }
}

fn io_err(path: &Path, err: io::Error) -> PayloadError {
    PayloadError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// A path for a one-line message: control characters are escaped.
fn shown(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use tempfile::TempDir;

    use super::*;
    use crate::payload::fixtures::*;

    #[test]
    fn manifest_exact_text() {
        let t = sample();
        let p = Payload::load(t.path()).unwrap();
        assert_eq!(p.manifest(), format!("pushrun-manifest 1\n{SAMPLE_LINES}"));
        assert_eq!(
            p.digest(),
            "2edeb2ebf0eda20d5b64d84638d1565d8ddeb70e8f57014d72b9fb66a5ac97af"
        );
        assert_eq!(p.total_size(), 18 + 5 + 1 + 2);
        assert_eq!(p.entry(), "run");
        assert_eq!(p.name(), d(&t));
        assert!(!p.is_builtin());
        assert_eq!((p.timeout(), p.env().len()), (None, 0));
        assert_eq!(
            p.entries()[1],
            ManifestEntry {
                path: "sub/data.txt".into(),
                mode: 0o644,
                size: 5,
                sha256: DATA_SHA.into()
            }
        );
        let shas: Vec<&str> = p.entries().iter().map(|e| e.sha256.as_str()).collect();
        assert_eq!(shas, [RUN_SHA, DATA_SHA, X_SHA, U_SHA]);
        assert_eq!(parse_manifest(p.manifest()).unwrap(), p.entries());
    }

    #[test]
    fn digest_follows_bytes_and_exec_bit_not_mtime() {
        let t = sample();
        let data = t.path().join("sub/data.txt");
        let before = Payload::load(t.path()).unwrap().digest().to_string();

        let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        File::options()
            .write(true)
            .open(&data)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(Payload::load(t.path()).unwrap().digest(), before);

        fs::write(&data, b"dat4\n").unwrap();
        let changed = Payload::load(t.path()).unwrap();
        assert_ne!(changed.digest(), before);
        assert_eq!(changed.entries()[1].size, 5);
        fs::write(&data, b"data\n").unwrap();
        assert_eq!(Payload::load(t.path()).unwrap().digest(), before);

        chmod(&data, 0o744); // owner x only: still "executable"
        let exec = Payload::load(t.path()).unwrap();
        assert_ne!(exec.digest(), before);
        assert_eq!(exec.entries()[1].mode, 0o755);
        assert!(
            exec.manifest()
                .contains(&format!("{DATA_SHA} 755 5 sub/data.txt\n"))
        );
        chmod(&data, 0o600); // other non-exec modes normalize to 644
        assert_eq!(Payload::load(t.path()).unwrap().digest(), before);
    }

    #[test]
    fn entry_point_errors() {
        let t = TempDir::new().unwrap();
        put(t.path(), "README.md", b"hi", false);
        assert_eq!(
            err(t.path()),
            format!(
                "{}: no entry point \"run\" (add an executable run file, or set entry: in pushrun.yaml)",
                d(&t)
            )
        );
        put(t.path(), "run", RUN, false);
        assert_eq!(
            err(t.path()),
            format!("{}/run: entry point is not executable (chmod +x)", d(&t))
        );
        fs::remove_file(t.path().join("run")).unwrap();
        put(t.path(), "run/x", RUN, true);
        assert_eq!(
            err(t.path()),
            format!("{}/run: entry point is not a regular file", d(&t))
        );

        let t = with_run();
        put(t.path(), "bin/go", RUN, false);
        put(t.path(), "pushrun.yaml", b"entry: bin/go\n", false);
        assert_eq!(
            err(t.path()),
            format!("{}/bin/go: entry point is not executable (chmod +x)", d(&t))
        );
    }

    #[test]
    fn directory_errors() {
        let t = TempDir::new().unwrap();
        let missing = t.path().join("nope");
        assert_eq!(
            err(&missing),
            format!("{}/nope: payload directory not found", d(&t))
        );
        put(t.path(), "f", b"", false);
        assert_eq!(
            err(&t.path().join("f")),
            format!("{}/f: payload is not a directory", d(&t))
        );
    }

    #[test]
    fn builtin_collector() {
        let a = Payload::builtin();
        let b = Payload::builtin();
        assert!(a.is_builtin());
        assert_eq!(
            (a.name(), a.entry(), a.timeout()),
            ("builtin collector", "run", None)
        );
        let run = a.entries().iter().find(|e| e.path == "run").unwrap();
        assert_eq!(run.mode, 0o755);
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.digest(), hex(&Sha256::digest(a.manifest().as_bytes())));
        // Exactly what loading the crate's payload/ directory gives.
        let on_disk =
            Payload::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("payload")).unwrap();
        assert_eq!(a.manifest(), on_disk.manifest());
        let members = untar(&a.tar_gz(&["run"]).unwrap());
        assert_eq!(
            members[1],
            file(
                "run",
                0o755,
                &fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("payload/run")).unwrap()
            )
        );
    }
}
