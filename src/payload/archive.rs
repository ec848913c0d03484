//! The tar.gz that carries a payload's files to a host. Its first member,
//! `.pushrun-expect`, lists exactly the files that follow, so the remote
//! script can check it received what was meant. Headers are fixed (mtime 0,
//! root owner, no names) so that the same files give the same bytes, and
//! files on disk are re-read through a check of size and sha256 against the
//! manifest, because a payload can change between loading and sending.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

use super::manifest::{ManifestEntry, hex};
use super::{Payload, PayloadError, Source, io_err};

/// Name of the first tar member, listing the files the archive holds.
pub(super) const EXPECT_NAME: &str = ".pushrun-expect";

impl Payload {
    /// A tar.gz stream (fast compression), or a plain tar when the files
    /// do not compress (see [`is_gzip`]), with, first, a member named
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

    /// [`Payload::tar_gz`] spooled to a file of its own that has no name
    /// (in the temp dir; gone once closed), read back from its start: a big
    /// payload is sent from disk, not held in memory.
    pub fn spool_tar_gz(&self, paths: &[&str]) -> Result<File, PayloadError> {
        let file = unnamed_file().map_err(PayloadError::Write)?;
        let mut file = self
            .write_tar_gz(paths, io::BufWriter::new(file))?
            .into_inner()
            .map_err(|e| PayloadError::Write(e.into_error()))?;
        io::Seek::rewind(&mut file).map_err(PayloadError::Write)?;
        Ok(file)
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
        match self.level(&selected) {
            Some(level) => {
                let gz = self.write_tar(&selected, GzEncoder::new(out, level))?;
                gz.finish().map_err(PayloadError::Write)
            }
            None => self.write_tar(&selected, out),
        }
    }

    /// The tar of [`Payload::tar_gz`] for the entries `selected`, written to `out`.
    fn write_tar<W: Write>(&self, selected: &BTreeSet<usize>, out: W) -> Result<W, PayloadError> {
        let expect: String = selected.iter().map(|&i| self.entries[i].line()).collect();
        let mut tar = tar::Builder::new(out);
        let mut header = tar_header(tar::EntryType::Regular, 0o644, expect.len() as u64);
        tar.append_data(&mut header, EXPECT_NAME, expect.as_bytes())
            .map_err(PayloadError::Write)?;
        let mut dirs = BTreeSet::new();
        for &i in selected {
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
        tar.into_inner().map_err(PayloadError::Write)
    }

    /// The gzip level for the files `selected`: the fastest, or no gzip at
    /// all (`None`: a plain tar) when a sample of the biggest files does not
    /// shrink by a tenth. Compressing what does not compress costs the
    /// initiator once and every host again on `gzip -d` (even stored blocks
    /// are a copy through one more process and a checksum on each host,
    /// whose files are checked by their sha256 anyway).
    fn level(&self, selected: &BTreeSet<usize>) -> Option<Compression> {
        const PER_FILE: u64 = 64 * 1024;
        const SAMPLE: usize = 1024 * 1024;
        let mut biggest: Vec<usize> = selected.iter().copied().collect();
        biggest.sort_by_key(|&i| std::cmp::Reverse(self.entries[i].size));
        let mut sample = Vec::new();
        for i in biggest {
            if sample.len() >= SAMPLE {
                break;
            }
            match &self.sources[i] {
                Source::Embedded(bytes) => {
                    sample.extend_from_slice(&bytes[..bytes.len().min(PER_FILE as usize)]);
                }
                Source::Disk(path) => {
                    if let Ok(file) = File::open(path) {
                        let _ = file.take(PER_FILE).read_to_end(&mut sample);
                    }
                }
            }
        }
        if sample.len() < 4096 {
            return Some(Compression::fast());
        }
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        let packed = gz
            .write_all(&sample)
            .and_then(|()| gz.finish())
            .map_or(0, |v| v.len());
        (packed * 10 <= sample.len() * 9).then(Compression::fast)
    }
}

/// Whether an archive of [`Payload::tar_gz`] is gzip (else a plain tar,
/// whose first member's name starts where gzip's magic bytes would be).
pub fn is_gzip(archive: &[u8]) -> bool {
    archive.starts_with(&[0x1f, 0x8b])
}

/// Where one payload file's bytes are read from, to send it alone (to a
/// host without tar, file by file; the host checks its sha256).
#[derive(Debug, Clone, Copy)]
pub enum FileSource<'a> {
    /// A file on disk.
    Disk(&'a Path),
    /// Bytes embedded in the binary (the builtin payload).
    Embedded(&'static [u8]),
}

impl Payload {
    /// The manifest entry of `path` and where its bytes are, if the
    /// payload has that file.
    pub fn file_source(&self, path: &str) -> Option<(&ManifestEntry, FileSource<'_>)> {
        let i = self
            .entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()?;
        let source = match &self.sources[i] {
            Source::Disk(p) => FileSource::Disk(p),
            Source::Embedded(b) => FileSource::Embedded(b),
        };
        Some((&self.entries[i], source))
    }
}

/// A new file readable and writable by this user only, with no name: Linux's
/// `O_TMPFILE` in the temp dir, or else a file made there and unlinked at once.
pub(crate) fn unnamed_file() -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir();
    let unnamed = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(&dir);
    if let Ok(file) = unnamed {
        return Ok(file);
    }
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!(".pushrun-upload-{}-{n}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
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

/// A header with the fixed fields every member has.
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

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::payload::fixtures::*;
    use crate::payload::parse_manifest;

    #[test]
    fn incompressible_files_go_as_a_plain_tar() {
        let t = sample();
        // bytes of a linear congruential sequence: nothing for deflate to find
        let mut x: u32 = 12345;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 23) as u8
            })
            .collect();
        put(t.path(), "lib/noise.bin", &noise, false);
        let p = Payload::load(t.path()).unwrap();
        let tar = p.tar_gz_all().unwrap();
        assert!(!is_gzip(&tar), "a plain tar");
        assert!(
            tar.len() > noise.len() && &tar[257..262] == b"ustar",
            "{}",
            tar.len()
        );
        assert!(untar(&tar).contains(&file("lib/noise.bin", 0o644, &noise)));
        // the same files but text compress
        let t = sample();
        put(
            t.path(),
            "lib/text.txt",
            "all work and no play\n".repeat(10_000).as_bytes(),
            false,
        );
        let gz = Payload::load(t.path()).unwrap().tar_gz_all().unwrap();
        assert!(
            is_gzip(&gz) && gz.len() < 50_000,
            "compressed: {}",
            gz.len()
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
}
