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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use sha2::{Digest, Sha256};

include!(concat!(env!("OUT_DIR"), "/builtin_payload.rs"));

/// First line of the canonical manifest text.
const MANIFEST_HEADER: &str = "pushrun-manifest 1\n";
/// Name of the first tar member, listing the files the archive holds.
const EXPECT_NAME: &str = ".pushrun-expect";
/// Optional configuration file at the top of a payload directory.
const CONFIG_NAME: &str = "pushrun.yaml";
/// Entry point when pushrun.yaml does not name one.
const DEFAULT_ENTRY: &str = "run";
/// Name of the builtin payload.
const BUILTIN_NAME: &str = "builtin collector";

/// One file of a payload, as listed in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Path relative to the payload directory, `/`-separated.
    pub path: String,
    /// 0o755 if the file has any exec bit, else 0o644.
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex sha256 of the content.
    pub sha256: String,
}

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
        /// The error (in the message, not as a source, to keep one line).
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
    Write(io::Error),
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
        let root = fs::canonicalize(dir).map_err(|e| io_err(dir, e))?;
        let mut walker = Walker {
            shown_root: dir,
            root: root.clone(),
            ancestors: Vec::new(),
            files: Vec::new(),
        };
        walker.walk(&root, "")?;
        let mut files = walker.files;
        files.sort_by(|a, b| a.0.cmp(&b.0));

        let config = match files.iter().find(|f| f.0 == CONFIG_NAME) {
            Some(f) => Some(fs::read(&f.1).map_err(|e| io_err(&dir.join(CONFIG_NAME), e))?),
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
        let listing: Vec<(&str, u32)> = files.iter().map(|f| (f.0.as_str(), f.2)).collect();
        let settings = settle(dir, &listing, config.as_deref())?;

        let mut entries = Vec::with_capacity(files.len());
        let mut sources = Vec::with_capacity(files.len());
        let mut buf = vec![0u8; 256 * 1024];
        for (path, source, mode) in files {
            let (size, sha256) =
                hash_file(&source, &mut buf).map_err(|e| io_err(&dir.join(&path), e))?;
            entries.push(ManifestEntry {
                path,
                mode,
                size,
                sha256,
            });
            sources.push(Source::Disk(source));
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
        let mut manifest = String::from(MANIFEST_HEADER);
        for e in &entries {
            manifest.push_str(&manifest_line(e));
        }
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

    /// A tar.gz stream (fast compression) with, first, a member named
    /// `.pushrun-expect` holding the manifest lines (no header line) of
    /// exactly the included files, then each included file (mode 0755/0644,
    /// mtime 0, uid/gid 0, no user/group names; parent directories with mode
    /// 0755 before their first file). `paths` selects files by manifest path,
    /// in any order; the archive is always in manifest order.
    pub fn tar_gz(&self, paths: &[&str]) -> Result<Vec<u8>, PayloadError> {
        self.write_tar_gz(paths, Vec::new())
    }

    /// [`Payload::tar_gz`] of every file.
    pub fn tar_gz_all(&self) -> Result<Vec<u8>, PayloadError> {
        let all: Vec<&str> = self.entries.iter().map(|e| e.path.as_str()).collect();
        self.tar_gz(&all)
    }

    /// [`Payload::tar_gz`] written to `out`, so that a big payload need not
    /// be held in memory. Returns `out` once the gzip stream is finished; on
    /// error, `out` may hold part of a stream.
    pub fn write_tar_gz<W: Write>(&self, paths: &[&str], out: W) -> Result<W, PayloadError> {
        let mut selected = BTreeSet::new();
        for &p in paths {
            match self.entries.binary_search_by(|e| e.path.as_str().cmp(p)) {
                Ok(i) => selected.insert(i),
                Err(_) => {
                    return Err(PayloadError::UnknownPath {
                        payload: self.name.clone(),
                        path: p.to_string(),
                    });
                }
            };
        }
        let expect: String = selected
            .iter()
            .map(|&i| manifest_line(&self.entries[i]))
            .collect();

        let mut tar = tar::Builder::new(GzEncoder::new(out, Compression::fast()));
        let mut header = tar_header(tar::EntryType::Regular, 0o644, expect.len() as u64);
        tar.append_data(&mut header, EXPECT_NAME, expect.as_bytes())
            .map_err(PayloadError::Write)?;
        let mut dirs = BTreeSet::new();
        for &i in &selected {
            let e = &self.entries[i];
            for (slash, _) in e.path.match_indices('/') {
                let parent = &e.path[..=slash];
                if dirs.insert(parent) {
                    let mut header = tar_header(tar::EntryType::Directory, 0o755, 0);
                    tar.append_data(&mut header, parent, io::empty())
                        .map_err(PayloadError::Write)?;
                }
            }
            let mut header = tar_header(tar::EntryType::Regular, e.mode, e.size);
            match &self.sources[i] {
                Source::Embedded(bytes) => {
                    tar.append_data(&mut header, &e.path, *bytes)
                        .map_err(PayloadError::Write)?;
                }
                Source::Disk(source) => {
                    let shown_path = || self.dir.as_deref().unwrap_or(Path::new("")).join(&e.path);
                    let file = File::open(source).map_err(|err| match err.kind() {
                        io::ErrorKind::NotFound => PayloadError::Changed(shown_path()),
                        _ => io_err(&shown_path(), err),
                    })?;
                    let mut reader = Verified::new(file, e);
                    if let Err(err) = tar.append_data(&mut header, &e.path, &mut reader) {
                        return Err(match reader.fault {
                            Fault::None => PayloadError::Write(err),
                            Fault::Changed => PayloadError::Changed(shown_path()),
                            Fault::Read => io_err(&shown_path(), err),
                        });
                    }
                }
            }
        }
        let gz = tar.into_inner().map_err(PayloadError::Write)?;
        gz.finish().map_err(PayloadError::Write)
    }
}

/// What pushrun.yaml and the entry point come to.
struct Settings {
    entry: String,
    timeout: Option<Duration>,
    env: BTreeMap<String, String>,
}

/// Checks the names of `files` (sorted `(path, normalized mode)`), parses
/// pushrun.yaml and checks the entry point. `base` is the payload as shown in
/// messages.
fn settle(
    base: &Path,
    files: &[(&str, u32)],
    config: Option<&[u8]>,
) -> Result<Settings, PayloadError> {
    for (path, _) in files {
        check_path(path).map_err(|_| PayloadError::BadName(base.join(path)))?;
    }
    let config_error = |line, message| PayloadError::Config {
        path: base.join(CONFIG_NAME),
        line,
        message,
    };
    let cfg = match config {
        Some(text) => parse_config(text).map_err(|(line, message)| config_error(line, message))?,
        None => Config::default(),
    };
    let entry = cfg
        .entry
        .clone()
        .unwrap_or_else(|| DEFAULT_ENTRY.to_string());
    let is_dir = files.iter().any(|(p, _)| {
        p.strip_prefix(entry.as_str())
            .is_some_and(|r| r.starts_with('/'))
    });
    match files.iter().find(|(p, _)| *p == entry) {
        Some((_, mode)) if mode & 0o111 == 0 => {
            return Err(PayloadError::NotExecutable(base.join(&entry)));
        }
        Some(_) => {}
        None if is_dir => return Err(PayloadError::EntryNotAFile(base.join(&entry))),
        None if cfg.entry.is_none() => return Err(PayloadError::NoEntry(base.to_path_buf())),
        None => {
            return Err(config_error(
                None,
                format!("entry {entry:?} is not a file in the payload"),
            ));
        }
    }
    Ok(Settings {
        entry,
        timeout: cfg.timeout,
        env: cfg.env,
    })
}

/// Parses a canonical manifest text, as produced by [`Payload::manifest`].
/// Anything that is not in the exact canonical form is an error, so that a
/// parsed manifest always prints back to the same text (and digest).
pub fn parse_manifest(text: &str) -> Result<Vec<ManifestEntry>, PayloadError> {
    let bad = |line: usize, message: &str| PayloadError::Manifest {
        line,
        message: message.to_string(),
    };
    let body = text
        .strip_prefix(MANIFEST_HEADER)
        .ok_or_else(|| bad(1, "expected \"pushrun-manifest 1\""))?;
    let mut entries: Vec<ManifestEntry> = Vec::new();
    for (i, line) in body.split_inclusive('\n').enumerate() {
        let n = i + 2;
        let line = line
            .strip_suffix('\n')
            .ok_or_else(|| bad(n, "missing newline at the end"))?;
        let mut fields = line.splitn(4, ' ');
        let (Some(sha256), Some(mode), Some(size), Some(path)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad(n, "expected \"<sha256> <mode> <size> <path>\""));
        };
        if sha256.len() != 64
            || !sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(bad(n, "sha256 must be 64 lowercase hex digits"));
        }
        let mode = match mode {
            "755" => 0o755,
            "644" => 0o644,
            _ => return Err(bad(n, "mode must be 755 or 644")),
        };
        let canonical_size = !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_digit())
            && (size == "0" || !size.starts_with('0'));
        let size = match size.parse::<u64>() {
            Ok(s) if canonical_size => s,
            _ => {
                return Err(bad(
                    n,
                    "size must be a decimal number without leading zeros",
                ));
            }
        };
        check_path(path).map_err(|m| bad(n, m))?;
        if entries
            .last()
            .is_some_and(|prev| prev.path.as_str() >= path)
        {
            return Err(bad(n, "paths must be sorted and unique"));
        }
        entries.push(ManifestEntry {
            path: path.to_string(),
            mode,
            size,
            sha256: sha256.to_string(),
        });
    }
    Ok(entries)
}

/// Recursive, symlink-following walk of a payload directory.
struct Walker<'a> {
    /// The directory as given, for messages.
    shown_root: &'a Path,
    /// Canonical payload directory.
    root: PathBuf,
    /// Canonical directories being walked, to detect symlink loops.
    ancestors: Vec<PathBuf>,
    /// (manifest path, path to read, normalized mode).
    files: Vec<(String, PathBuf, u32)>,
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
                self.files
                    .push((path, here, normal_mode(meta.permissions().mode())));
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
                    self.files
                        .push((path, target, normal_mode(meta.permissions().mode())));
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

/// What went wrong inside [`Verified`], told apart from archive write errors.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Changed,
    Read,
}

/// Reads exactly the manifest's size from a file and, at the end, checks
/// that the file ends there and has the manifest's hash.
struct Verified<'a> {
    file: File,
    hasher: Sha256,
    remaining: u64,
    expected: &'a str,
    done: bool,
    fault: Fault,
}

impl<'a> Verified<'a> {
    fn new(file: File, entry: &'a ManifestEntry) -> Self {
        Verified {
            file,
            hasher: Sha256::new(),
            remaining: entry.size,
            expected: &entry.sha256,
            done: false,
            fault: Fault::None,
        }
    }

    fn changed(&mut self) -> io::Error {
        self.fault = Fault::Changed;
        io::Error::other("changed while pushrun was running")
    }
}

impl Read for Verified<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            let mut probe = [0u8; 1];
            let n = self.file.read(&mut probe).inspect_err(|e| {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.fault = Fault::Read;
                }
            })?;
            if n != 0 || hex(&std::mem::take(&mut self.hasher).finalize()) != self.expected {
                return Err(self.changed());
            }
            self.done = true;
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..max]).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted {
                self.fault = Fault::Read;
            }
        })?;
        if n == 0 {
            return Err(self.changed());
        }
        self.hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn tar_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Size and lowercase hex sha256 of a file, read in chunks.
fn hash_file(path: &Path, buf: &mut [u8]) -> io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let n = match file.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

fn manifest_line(e: &ManifestEntry) -> String {
    format!("{} {:03o} {} {}\n", e.sha256, e.mode, e.size, e.path)
}

fn normal_mode(mode: u32) -> u32 {
    if mode & 0o111 != 0 { 0o755 } else { 0o644 }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Checks that `path` can be a manifest path.
fn check_path(path: &str) -> Result<(), &'static str> {
    if path.contains(['\n', '\r', '\\']) {
        return Err("path with a newline or backslash is not supported");
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("path must be relative, without empty, \".\" or \"..\" parts");
    }
    if path == EXPECT_NAME {
        return Err("the name .pushrun-expect is reserved for pushrun");
    }
    Ok(())
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

// ---------------------------------------------------------------------------
// pushrun.yaml
//
// Deserialized by hand (rather than with derive) so that every error, unknown
// and duplicate keys included, is raised while serde_yaml deserializes the
// offending key or value and therefore carries its line.
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Config {
    entry: Option<String>,
    timeout: Option<Duration>,
    env: BTreeMap<String, String>,
}

/// Parses pushrun.yaml; errors are (line, message).
fn parse_config(text: &[u8]) -> Result<Config, (Option<usize>, String)> {
    match serde_yaml::from_slice::<Option<Config>>(text) {
        Ok(cfg) => Ok(cfg.unwrap_or_default()),
        Err(e) => {
            let location = e.location();
            let mut message = e.to_string();
            if let Some(loc) = &location {
                // The line goes in front, as in "pushrun.yaml:3: ...".
                message = message.replacen(
                    &format!(" at line {} column {}", loc.line(), loc.column()),
                    "",
                    1,
                );
            }
            Err((location.map(|l| l.line()), message.replace('\n', " ")))
        }
    }
}

impl<'de> de::Deserialize<'de> for Config {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ConfigVisitor)
    }
}

struct ConfigVisitor;

impl<'de> Visitor<'de> for ConfigVisitor {
    type Value = Config;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping with keys entry, timeout, env")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Config, A::Error> {
        let mut cfg = Config::default();
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key_seed(KeySeed {
            env: false,
            seen: &mut seen,
        })? {
            match key.as_str() {
                "entry" => cfg.entry = Some(map.next_value::<EntryPath>()?.0),
                "timeout" => cfg.timeout = Some(map.next_value::<Timeout>()?.0),
                _ => cfg.env = map.next_value::<Env>()?.0,
            }
        }
        Ok(cfg)
    }
}

/// Reads a mapping key of pushrun.yaml (`env` false) or of `env:` (`env`
/// true), rejecting unknown or invalid and duplicate keys. The checks run in
/// `visit_str`, inside serde_yaml's handling of the key, so that errors carry
/// the key's line.
struct KeySeed<'a> {
    env: bool,
    seen: &'a mut BTreeSet<String>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.env {
            "a variable name"
        } else {
            "one of entry, timeout, env"
        })
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<String, E> {
        if self.env {
            let mut bytes = key.bytes();
            let valid = bytes
                .next()
                .is_some_and(|b| b == b'_' || b.is_ascii_alphabetic())
                && bytes.all(|b| b == b'_' || b.is_ascii_alphanumeric());
            if !valid {
                return Err(E::custom(format_args!(
                    "name {key:?} is not valid (letters, digits and _, not starting with a digit)"
                )));
            }
        } else if !["entry", "timeout", "env"].contains(&key) {
            return Err(E::custom(format_args!("unknown key {key:?}")));
        }
        if !self.seen.insert(key.to_string()) {
            return Err(E::custom(format_args!("duplicate key {key:?}")));
        }
        Ok(key.to_string())
    }
}

/// `entry:`, normalized ("./bin//run" is "bin/run").
struct EntryPath(String);

impl<'de> de::Deserialize<'de> for EntryPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(EntryVisitor)
    }
}

struct EntryVisitor;

impl Visitor<'_> for EntryVisitor {
    type Value = EntryPath;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a relative path")
    }

    fn visit_str<E: de::Error>(self, raw: &str) -> Result<EntryPath, E> {
        let parts: Vec<&str> = raw
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        let path = parts.join("/");
        if raw.starts_with('/')
            || parts.is_empty()
            || parts.contains(&"..")
            || check_path(&path).is_err()
        {
            return Err(E::custom(format_args!(
                "{raw:?} must be a relative path inside the payload"
            )));
        }
        Ok(EntryPath(path))
    }
}

/// `timeout:`, a number of seconds > 0.
struct Timeout(Duration);

const TIMEOUT_EXPECTED: &str = "a number of seconds > 0";

impl<'de> de::Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TimeoutVisitor)
    }
}

struct TimeoutVisitor;

impl Visitor<'_> for TimeoutVisitor {
    type Value = Timeout;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(TIMEOUT_EXPECTED)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timeout, E> {
        if v == 0 {
            return Err(E::invalid_value(
                de::Unexpected::Unsigned(v),
                &TIMEOUT_EXPECTED,
            ));
        }
        Ok(Timeout(Duration::from_secs(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timeout, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::invalid_value(
                de::Unexpected::Signed(v),
                &TIMEOUT_EXPECTED,
            )),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Timeout, E> {
        match Duration::try_from_secs_f64(v) {
            Ok(d) if !d.is_zero() => Ok(Timeout(d)),
            _ => Err(E::invalid_value(
                de::Unexpected::Float(v),
                &TIMEOUT_EXPECTED,
            )),
        }
    }
}

/// `env:`, NAME → scalar.
struct Env(BTreeMap<String, String>);

impl<'de> de::Deserialize<'de> for Env {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EnvVisitor)
    }
}

struct EnvVisitor;

impl<'de> Visitor<'de> for EnvVisitor {
    type Value = Env;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of variable names to values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Env, A::Error> {
        let mut env = BTreeMap::new();
        let mut seen = BTreeSet::new();
        while let Some(name) = map.next_key_seed(KeySeed {
            env: true,
            seen: &mut seen,
        })? {
            let value = map.next_value::<EnvValue>()?.0;
            env.insert(name, value);
        }
        Ok(Env(env))
    }
}

/// An env value: a string, number or boolean, as a string.
struct EnvValue(String);

impl<'de> de::Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EnvValueVisitor)
    }
}

struct EnvValueVisitor;

impl Visitor<'_> for EnvValueVisitor {
    type Value = EnvValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number or boolean")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
        if v.contains('\0') {
            return Err(E::custom("env value with a NUL byte is not supported"));
        }
        Ok(EnvValue(v.to_string()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
        Ok(EnvValue(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
        Ok(EnvValue(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
        Ok(EnvValue(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
        Ok(EnvValue(v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;

    const RUN: &[u8] = b"#!/bin/sh\necho hi\n";
    const RUN_SHA: &str = "299001868fb8c02fd431c336c6d058f5558c5dff5b5af5e6fe04b870a6a9cbba";
    const DATA_SHA: &str = "6667b2d1aab6a00caa5aee5af8ad9f1465e567abf1c209d15727d57b3e8f6e5f";
    const X_SHA: &str = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881";
    const U_SHA: &str = "607474ca475a9724d7360aba71a56d5df77e61350e3f724cfa1f46e857e2d85f";

    fn put(dir: &Path, rel: &str, bytes: &[u8], exec: bool) {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
        chmod(&path, if exec { 0o755 } else { 0o644 });
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A payload dir with an executable `run`.
    fn with_run() -> TempDir {
        let t = TempDir::new().unwrap();
        put(t.path(), "run", RUN, true);
        t
    }

    /// The small payload whose manifest is spelled out in `manifest_exact_text`.
    fn sample() -> TempDir {
        let t = with_run();
        put(t.path(), "sub/data.txt", b"data\n", false);
        put(t.path(), "with space.txt", b"x", false);
        put(t.path(), "é.txt", "ü".as_bytes(), false);
        t
    }

    const SAMPLE_LINES: &str = "\
299001868fb8c02fd431c336c6d058f5558c5dff5b5af5e6fe04b870a6a9cbba 755 18 run
6667b2d1aab6a00caa5aee5af8ad9f1465e567abf1c209d15727d57b3e8f6e5f 644 5 sub/data.txt
2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881 644 1 with space.txt
607474ca475a9724d7360aba71a56d5df77e61350e3f724cfa1f46e857e2d85f 644 2 é.txt
";

    fn err(dir: &Path) -> String {
        Payload::load(dir).unwrap_err().to_string()
    }

    fn d(t: &TempDir) -> String {
        t.path().display().to_string()
    }

    #[derive(Debug, PartialEq)]
    struct Member {
        path: String,
        kind: tar::EntryType,
        mode: u32,
        data: Vec<u8>,
    }

    /// Decompresses and lists an archive, checking the fixed header fields.
    fn untar(gz: &[u8]) -> Vec<Member> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
        let mut members = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let h = entry.header();
            assert_eq!(
                (h.mtime().unwrap(), h.uid().unwrap(), h.gid().unwrap()),
                (0, 0, 0)
            );
            assert_eq!(
                (h.username_bytes(), h.groupname_bytes()),
                (Some(&b""[..]), Some(&b""[..]))
            );
            let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let (kind, mode) = (h.entry_type(), h.mode().unwrap());
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            members.push(Member {
                path,
                kind,
                mode,
                data,
            });
        }
        members
    }

    fn file(path: &str, mode: u32, data: &[u8]) -> Member {
        Member {
            path: path.into(),
            kind: tar::EntryType::Regular,
            mode,
            data: data.to_vec(),
        }
    }

    fn dir(path: &str) -> Member {
        Member {
            path: path.into(),
            kind: tar::EntryType::Directory,
            mode: 0o755,
            data: Vec::new(),
        }
    }

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
    fn config_entry_timeout_env() {
        let t = TempDir::new().unwrap();
        put(t.path(), "bin/start", RUN, true);
        let yaml = "# settings\nentry: ./bin//start\ntimeout: 2.5\nenv:\n  FOO: bar baz\n  N: 3\n  NEG: -4\n  B: true\n  F: 1.5\n  _x9: ''\n";
        put(t.path(), "pushrun.yaml", yaml.as_bytes(), false);
        let p = Payload::load(t.path()).unwrap();
        assert_eq!(p.entry(), "bin/start");
        assert_eq!(p.timeout(), Some(Duration::from_millis(2500)));
        let env: Vec<(&str, &str)> = p
            .env()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("B", "true"),
                ("F", "1.5"),
                ("FOO", "bar baz"),
                ("N", "3"),
                ("NEG", "-4"),
                ("_x9", "")
            ]
        );
        // pushrun.yaml is part of the payload like any other file.
        assert_eq!(
            p.entries()
                .iter()
                .map(|e| e.path.as_str())
                .collect::<Vec<_>>(),
            ["bin/start", "pushrun.yaml"]
        );

        put(
            t.path(),
            "pushrun.yaml",
            b"timeout: 30\nentry: bin/start\n",
            false,
        );
        let p = Payload::load(t.path()).unwrap();
        assert_eq!(
            (p.timeout(), p.env().len()),
            (Some(Duration::from_secs(30)), 0)
        );

        // Empty or comment-only: defaults (and then `run` is required).
        let t = with_run();
        for text in ["", "# nothing\n", "~\n"] {
            put(t.path(), "pushrun.yaml", text.as_bytes(), false);
            let p = Payload::load(t.path()).unwrap();
            assert_eq!(
                (p.entry(), p.timeout(), p.env().len()),
                ("run", None, 0),
                "{text:?}"
            );
        }
    }

    #[test]
    fn config_errors_name_file_and_line() {
        let t = with_run();
        let f = format!("{}/pushrun.yaml", d(&t));
        let cases = [
            (
                "timeout: 5\nenv: {}\nentyr: run\n",
                format!("{f}:3: unknown key \"entyr\""),
            ),
            (
                "timeout: 5\ntimeout: 6\n",
                format!("{f}:2: duplicate key \"timeout\""),
            ),
            (
                "timeout: 0\n",
                format!(
                    "{f}:1: timeout: invalid value: integer `0`, expected a number of seconds > 0"
                ),
            ),
            (
                "\ntimeout: -1\n",
                format!(
                    "{f}:2: timeout: invalid value: integer `-1`, expected a number of seconds > 0"
                ),
            ),
            (
                "timeout: 1e-12\n",
                format!(
                    "{f}:1: timeout: invalid value: floating point `0.000000000001`, expected a number of seconds > 0"
                ),
            ),
            (
                "timeout: .inf\n",
                format!(
                    "{f}:1: timeout: invalid value: floating point `inf`, expected a number of seconds > 0"
                ),
            ),
            (
                "timeout: 30s\n",
                format!(
                    "{f}:1: timeout: invalid type: string \"30s\", expected a number of seconds > 0"
                ),
            ),
            (
                "env:\n  OK: 1\n  9X: 2\n",
                format!(
                    "{f}:3: env: name \"9X\" is not valid (letters, digits and _, not starting with a digit)"
                ),
            ),
            (
                "env:\n  A-B: 2\n",
                format!(
                    "{f}:2: env: name \"A-B\" is not valid (letters, digits and _, not starting with a digit)"
                ),
            ),
            (
                "env:\n  A: 1\n  A: 2\n",
                format!("{f}:3: env: duplicate key \"A\""),
            ),
            (
                "env:\n  A: [1]\n",
                format!(
                    "{f}:2: env.A: invalid type: sequence, expected a string, number or boolean"
                ),
            ),
            (
                "env: [A]\n",
                format!(
                    "{f}:1: env: invalid type: sequence, expected a mapping of variable names to values"
                ),
            ),
            (
                "entry: ../run\n",
                format!("{f}:1: entry: \"../run\" must be a relative path inside the payload"),
            ),
            (
                "entry: /bin/sh\n",
                format!("{f}:1: entry: \"/bin/sh\" must be a relative path inside the payload"),
            ),
            (
                "entry: nope\n",
                format!("{f}: entry \"nope\" is not a file in the payload"),
            ),
            (
                "- run\n",
                format!(
                    "{f}:1: invalid type: sequence, expected a mapping with keys entry, timeout, env"
                ),
            ),
            (
                "timeout: 5\nenv: {A: 1\n",
                format!(
                    "{f}:3: did not find expected ',' or '}}', while parsing a flow mapping at line 2 column 6"
                ),
            ),
            (
                "\tentry: run\n",
                format!(
                    "{f}:1: found character that cannot start any token, while scanning for the next token"
                ),
            ),
        ];
        for (yaml, want) in cases {
            put(t.path(), "pushrun.yaml", yaml.as_bytes(), false);
            assert_eq!(err(t.path()), want, "{yaml:?}");
        }
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

    #[test]
    fn tar_gz_all_members() {
        let t = sample();
        let long = format!("{}/{}.txt", "d".repeat(60), "f".repeat(60));
        put(t.path(), &long, b"long", false);
        let p = Payload::load(t.path()).unwrap();
        let gz = p.tar_gz_all().unwrap();
        assert_eq!(
            (gz[0], gz[1], gz[8]),
            (0x1f, 0x8b, 4),
            "gzip, fastest level"
        );
        let long_line = format!("{} 644 4 {long}\n", hex(&Sha256::digest(b"long")));
        let expect = format!("{long_line}{SAMPLE_LINES}");
        assert_eq!(
            untar(&gz),
            [
                file(".pushrun-expect", 0o644, expect.as_bytes()),
                dir(&format!("{}/", "d".repeat(60))),
                file(&long, 0o644, b"long"),
                file("run", 0o755, RUN),
                dir("sub/"),
                file("sub/data.txt", 0o644, b"data\n"),
                file("with space.txt", 0o644, b"x"),
                file("é.txt", 0o644, "ü".as_bytes()),
            ]
        );
        assert_eq!(
            parse_manifest(&format!("pushrun-manifest 1\n{expect}")).unwrap(),
            p.entries()
        );
    }

    #[test]
    fn tar_gz_subset() {
        let t = sample();
        put(t.path(), "sub/deeper/x", b"x", true);
        let p = Payload::load(t.path()).unwrap();
        let gz = p
            .tar_gz(&["sub/deeper/x", "é.txt", "sub/deeper/x"])
            .unwrap();
        assert_eq!(gz, p.tar_gz(&["é.txt", "sub/deeper/x"]).unwrap());
        let expect = format!("{X_SHA} 755 1 sub/deeper/x\n{U_SHA} 644 2 é.txt\n");
        assert_eq!(
            untar(&gz),
            [
                file(".pushrun-expect", 0o644, expect.as_bytes()),
                dir("sub/"),
                dir("sub/deeper/"),
                file("sub/deeper/x", 0o755, b"x"),
                file("é.txt", 0o644, "ü".as_bytes()),
            ]
        );
        assert_eq!(
            untar(&p.tar_gz(&[]).unwrap()),
            [file(".pushrun-expect", 0o644, b"")]
        );
    }

    #[test]
    fn tar_gz_unknown_path() {
        let t = sample();
        let p = Payload::load(t.path()).unwrap();
        let e = p.tar_gz(&["run", "sub"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}: no file \"sub\" in the payload", d(&t))
        );
    }

    #[test]
    fn tar_gz_detects_changes() {
        let t = sample();
        let p = Payload::load(t.path()).unwrap();
        let data = t.path().join("sub/data.txt");
        let want = format!("{}/sub/data.txt: changed while pushrun was running", d(&t));
        for bytes in [&b"dat4\n"[..], b"data\nmore", b"dat"] {
            fs::write(&data, bytes).unwrap();
            assert_eq!(
                p.tar_gz(&["sub/data.txt"]).unwrap_err().to_string(),
                want,
                "{bytes:?}"
            );
        }
        fs::remove_file(&data).unwrap();
        assert_eq!(p.tar_gz_all().unwrap_err().to_string(), want);
        fs::write(&data, b"data\n").unwrap();
        assert_eq!(
            untar(&p.tar_gz_all().unwrap())[3],
            file("sub/data.txt", 0o644, b"data\n")
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

    #[test]
    fn parse_manifest_rejects_non_canonical_text() {
        let line = format!("{RUN_SHA} 755 18 run\n");
        let cases = [
            (
                String::new(),
                "manifest line 1: expected \"pushrun-manifest 1\"",
            ),
            (
                format!("pushrun-manifest 2\n{line}"),
                "manifest line 1: expected \"pushrun-manifest 1\"",
            ),
            (
                format!("pushrun-manifest 1\n{}", line.trim_end()),
                "manifest line 2: missing newline at the end",
            ),
            (
                format!("pushrun-manifest 1\n{line}{line}"),
                "manifest line 3: paths must be sorted and unique",
            ),
            (
                format!("pushrun-manifest 1\n{line}{DATA_SHA} 644 5 a\n"),
                "manifest line 3: paths must be sorted and unique",
            ),
            (
                format!("pushrun-manifest 1\n{RUN_SHA} 700 18 run\n"),
                "manifest line 2: mode must be 755 or 644",
            ),
            (
                format!("pushrun-manifest 1\n{RUN_SHA} 755 018 run\n"),
                "manifest line 2: size must be a decimal number without leading zeros",
            ),
            (
                format!("pushrun-manifest 1\n{RUN_SHA} 755 +18 run\n"),
                "manifest line 2: size must be a decimal number without leading zeros",
            ),
            (
                format!(
                    "pushrun-manifest 1\n{} 755 18 run\n",
                    RUN_SHA.to_uppercase()
                ),
                "manifest line 2: sha256 must be 64 lowercase hex digits",
            ),
            (
                format!("pushrun-manifest 1\n{RUN_SHA} 755 18\n"),
                "manifest line 2: expected \"<sha256> <mode> <size> <path>\"",
            ),
            (
                format!("pushrun-manifest 1\n{RUN_SHA} 755 18 /run\n"),
                "manifest line 2: path must be relative, without empty, \".\" or \"..\" parts",
            ),
            (
                format!("pushrun-manifest 1\n{RUN_SHA} 755 18 a/../b\n"),
                "manifest line 2: path must be relative, without empty, \".\" or \"..\" parts",
            ),
            (
                format!("pushrun-manifest 1\n{RUN_SHA} 755 18 a\\b\n"),
                "manifest line 2: path with a newline or backslash is not supported",
            ),
            (
                format!("pushrun-manifest 1\n{RUN_SHA} 755 18 a\r\n"),
                "manifest line 2: path with a newline or backslash is not supported",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(
                parse_manifest(&text).unwrap_err().to_string(),
                want,
                "{text:?}"
            );
        }
        let ok = format!("pushrun-manifest 1\n{RUN_SHA} 755 18 a b/c d\n{DATA_SHA} 644 0 run\n");
        let parsed = parse_manifest(&ok).unwrap();
        assert_eq!(
            parsed,
            [
                ManifestEntry {
                    path: "a b/c d".into(),
                    mode: 0o755,
                    size: 18,
                    sha256: RUN_SHA.into()
                },
                ManifestEntry {
                    path: "run".into(),
                    mode: 0o644,
                    size: 0,
                    sha256: DATA_SHA.into()
                },
            ]
        );
        assert_eq!(parse_manifest("pushrun-manifest 1\n").unwrap(), []);
    }
}
