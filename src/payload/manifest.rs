//! The manifest: the canonical text that says what a payload holds, one line
//! per file (`<sha256> <mode> <size> <path>`, sorted by the path's bytes) after
//! a `pushrun-manifest 1` header. Its sha256 is the payload's digest and the
//! remote sh scripts parse the same text, so it has exactly one spelling:
//! parsing accepts only what writing produces, and modes are reduced to the
//! two a copy can keep (755 and 644).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::PayloadError;
use super::archive::EXPECT_NAME;

/// First line of the canonical manifest text.
const MANIFEST_HEADER: &str = "pushrun-manifest 1\n";

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

impl ManifestEntry {
    /// The entry's line in the manifest text, newline included.
    pub(super) fn line(&self) -> String {
        format!(
            "{} {:03o} {} {}\n",
            self.sha256, self.mode, self.size, self.path
        )
    }
}

/// The canonical manifest text of `entries`, which must be sorted by path.
pub(super) fn text(entries: &[ManifestEntry]) -> String {
    let mut text = String::from(MANIFEST_HEADER);
    for e in entries {
        text.push_str(&e.line());
    }
    text
}

/// Parses a canonical manifest text, as produced by
/// [`Payload::manifest`](super::Payload::manifest).
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

/// Size and lowercase hex sha256 of a file, read in chunks.
pub(super) fn hash_file(path: &Path, buf: &mut [u8]) -> io::Result<(u64, String)> {
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

/// The manifest's mode for a file mode: 0o755 if any exec bit is set, else
/// 0o644.
pub(super) fn normal_mode(mode: u32) -> u32 {
    if mode & 0o111 != 0 { 0o755 } else { 0o644 }
}

/// Lowercase hex of `bytes`, as the manifest spells a sha256.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Checks that `path` can be a manifest path.
pub(super) fn check_path(path: &str) -> Result<(), &'static str> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::fixtures::{DATA_SHA, RUN_SHA};

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
