//! What the payload module's unit tests share: payload directories built in
//! a temporary directory, the hashes of their files, and a reader of archives
//! that checks the fixed tar header fields.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tempfile::TempDir;

use super::Payload;

/// Content of the `run` entry point in test payloads.
pub(super) const RUN: &[u8] = b"#!/bin/sh\necho hi\n";
/// sha256 of [`RUN`].
pub(super) const RUN_SHA: &str = "299001868fb8c02fd431c336c6d058f5558c5dff5b5af5e6fe04b870a6a9cbba";
/// sha256 of `data\n`.
pub(super) const DATA_SHA: &str =
    "6667b2d1aab6a00caa5aee5af8ad9f1465e567abf1c209d15727d57b3e8f6e5f";
/// sha256 of `x`.
pub(super) const X_SHA: &str = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881";
/// sha256 of `ü`.
pub(super) const U_SHA: &str = "607474ca475a9724d7360aba71a56d5df77e61350e3f724cfa1f46e857e2d85f";

/// Writes `bytes` to `rel` under `dir`, creating parents, mode 755 or 644.
pub(super) fn put(dir: &Path, rel: &str, bytes: &[u8], exec: bool) {
    let path = dir.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, bytes).unwrap();
    chmod(&path, if exec { 0o755 } else { 0o644 });
}

/// Sets the permission bits of `path`.
pub(super) fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A payload dir with an executable `run`.
pub(super) fn with_run() -> TempDir {
    let t = TempDir::new().unwrap();
    put(t.path(), "run", RUN, true);
    t
}

/// The small payload whose manifest is spelled out in `manifest_exact_text`.
pub(super) fn sample() -> TempDir {
    let t = with_run();
    put(t.path(), "sub/data.txt", b"data\n", false);
    put(t.path(), "with space.txt", b"x", false);
    put(t.path(), "é.txt", "ü".as_bytes(), false);
    t
}

/// The manifest lines of [`sample`], without the header.
pub(super) const SAMPLE_LINES: &str = "\
299001868fb8c02fd431c336c6d058f5558c5dff5b5af5e6fe04b870a6a9cbba 755 18 run
6667b2d1aab6a00caa5aee5af8ad9f1465e567abf1c209d15727d57b3e8f6e5f 644 5 sub/data.txt
2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881 644 1 with space.txt
607474ca475a9724d7360aba71a56d5df77e61350e3f724cfa1f46e857e2d85f 644 2 é.txt
";

/// The message of loading `dir`, which must fail.
pub(super) fn err(dir: &Path) -> String {
    Payload::load(dir).unwrap_err().to_string()
}

/// The temporary directory as messages show it.
pub(super) fn d(t: &TempDir) -> String {
    t.path().display().to_string()
}

/// One member of an archive, as [`untar`] reads it.
#[derive(Debug, PartialEq)]
pub(super) struct Member {
    pub(super) path: String,
    pub(super) kind: tar::EntryType,
    pub(super) mode: u32,
    pub(super) data: Vec<u8>,
}

/// Decompresses and lists an archive, checking the fixed header fields.
pub(super) fn untar(gz: &[u8]) -> Vec<Member> {
    let stream: Box<dyn std::io::Read + '_> = if super::is_gzip(gz) {
        Box::new(flate2::read::GzDecoder::new(gz))
    } else {
        Box::new(gz)
    };
    let mut archive = tar::Archive::new(stream);
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

/// A regular file member.
pub(super) fn file(path: &str, mode: u32, data: &[u8]) -> Member {
    Member {
        path: path.into(),
        kind: tar::EntryType::Regular,
        mode,
        data: data.to_vec(),
    }
}

/// A directory member (mode 755).
pub(super) fn dir(path: &str) -> Member {
    Member {
        path: path.into(),
        kind: tar::EntryType::Directory,
        mode: 0o755,
        data: Vec::new(),
    }
}
