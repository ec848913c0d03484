//! `--results DIR`: the run kept on disk, one folder per host.
//!
//! `DIR/<run-id>/<host>/` holds `stdout`, `stderr`, `exit_status`, the
//! payload's `$PUSHRUN_OUT` unpacked in `out/` and its records in
//! `records.jsonl`; `DIR/<run-id>/summary.json` says how the run went and
//! `DIR/latest` points at the newest run. Files are written as events
//! arrive, whatever the output mode, so a run cut short still leaves what
//! it got. Unattended runs also keep `run.log`, a copy of what was shown.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::events::{Event, HostId, HostOutcome, Stream};

/// The results dir of one run.
pub(super) struct ResultsDir {
    /// `DIR/<run-id>`.
    root: PathBuf,
    /// `DIR/latest`.
    latest: PathBuf,
    /// Each host's folder name, by host id.
    folders: Vec<String>,
    /// The stdout and stderr files being written, by host.
    open: HashMap<HostId, [Option<io::BufWriter<File>>; 2]>,
    /// Each collecting host's results archive, spooled to disk as it
    /// arrives (`<host>/out.tar.gz.part`) until it is whole and unpacked.
    spools: HashMap<HostId, io::BufWriter<File>>,
    /// Hosts whose results could not all be kept, and why.
    problems: BTreeMap<HostId, String>,
}

/// The spooled archive's name in a host's folder, while it arrives.
const SPOOL: &str = "out.tar.gz.part";

impl ResultsDir {
    /// Creates `base/<run_id>` for hosts named `names`.
    pub(super) fn create(base: &Path, run_id: &str, names: &[String]) -> io::Result<ResultsDir> {
        let root = base.join(run_id);
        std::fs::create_dir_all(&root)?;
        Ok(ResultsDir {
            root,
            latest: base.join("latest"),
            folders: names.iter().map(|n| folder_name(n)).collect(),
            open: HashMap::new(),
            spools: HashMap::new(),
            problems: BTreeMap::new(),
        })
    }

    /// Creates `run.log`, for a copy of what is shown.
    pub(super) fn create_log(&self) -> io::Result<io::BufWriter<File>> {
        Ok(io::BufWriter::new(File::create(self.root.join("run.log"))?))
    }

    /// `DIR/<run-id>`.
    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    /// Host `id`'s folder name.
    pub(super) fn folder(&self, id: HostId) -> &str {
        &self.folders[id]
    }

    /// Why host `id`'s results could not all be kept, if they could not.
    pub(super) fn problem(&self, id: HostId) -> Option<&str> {
        self.problems.get(&id).map(String::as_str)
    }

    /// Every host whose results could not all be kept, and why.
    pub(super) fn problems(&self) -> impl Iterator<Item = (HostId, &str)> {
        self.problems.iter().map(|(&id, p)| (id, p.as_str()))
    }

    /// Keeps what an event brought: output, the collected archive, a record.
    /// A host's end is [`ResultsDir::finished`].
    pub(super) fn keep(&mut self, event: &Event) -> io::Result<()> {
        match event {
            Event::Output {
                host,
                stream,
                line,
                complete,
            } => self.output(*host, *stream, line, *complete),
            Event::ResultsPart(id, part) => self.results_part(*id, part),
            Event::Collected(id) => self.collected(*id),
            Event::Record(id, line) => self.record(*id, line),
            _ => Ok(()),
        }
    }

    fn host_dir(&self, id: HostId) -> io::Result<PathBuf> {
        let dir = self.root.join(&self.folders[id]);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    fn output(
        &mut self,
        id: HostId,
        stream: Stream,
        line: &[u8],
        complete: bool,
    ) -> io::Result<()> {
        let slot = if stream == Stream::Stdout { 0 } else { 1 };
        if self.open.get(&id).is_none_or(|f| f[slot].is_none()) {
            let file =
                File::create(
                    self.host_dir(id)?
                        .join(if slot == 0 { "stdout" } else { "stderr" }),
                )?;
            self.open.entry(id).or_default()[slot] = Some(io::BufWriter::new(file));
        }
        let Some(Some(w)) = self.open.get_mut(&id).map(|f| f[slot].as_mut()) else {
            return Ok(());
        };
        w.write_all(line)?;
        if complete {
            w.write_all(b"\n")?;
        }
        Ok(())
    }

    fn results_part(&mut self, id: HostId, part: &[u8]) -> io::Result<()> {
        if !self.spools.contains_key(&id) {
            let file = File::create(self.host_dir(id)?.join(SPOOL))?;
            self.spools.insert(id, io::BufWriter::new(file));
        }
        match self.spools.get_mut(&id) {
            Some(w) => w.write_all(part),
            None => Ok(()),
        }
    }

    /// Host `id`'s results archive is whole: unpacks it into `out/`.
    fn collected(&mut self, id: HostId) -> io::Result<()> {
        let dir = self.host_dir(id)?;
        let spool = dir.join(SPOOL);
        match self.spools.remove(&id) {
            Some(mut w) => w.flush()?,
            // an empty archive never sent a piece
            None => drop(File::create(&spool)?),
        }
        let out = dir.join("out");
        // a repeated run's results replace the previous run's
        if out.exists() {
            std::fs::remove_dir_all(&out)?;
        }
        std::fs::create_dir_all(&out)?;
        let archive = io::BufReader::new(File::open(&spool)?);
        let unpacked = unpack(flate2::read::GzDecoder::new(archive), &out);
        std::fs::remove_file(&spool)?;
        match unpacked {
            Err(e) => {
                let why = format!("results archive could not be unpacked: {e}");
                self.problems.insert(id, why);
            }
            // a repeated run's whole results replace an earlier run's problem
            Ok(()) => drop(self.problems.remove(&id)),
        }
        Ok(())
    }

    fn record(&mut self, id: HostId, line: &[u8]) -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.host_dir(id)?.join("records.jsonl"))?;
        f.write_all(line)?;
        f.write_all(b"\n")
    }

    /// Host `id` is done: closes its stdout and stderr (creating them empty
    /// if it wrote nothing) and writes its `exit_status`.
    pub(super) fn finished(&mut self, id: HostId, outcome: &HostOutcome) -> io::Result<()> {
        let dir = self.host_dir(id)?;
        // a collect cut short: its pieces are no results
        if self.spools.remove(&id).is_some() {
            std::fs::remove_file(dir.join(SPOOL))?;
        }
        let mut files = self.open.remove(&id).unwrap_or_default();
        for (slot, name) in ["stdout", "stderr"].iter().enumerate() {
            match files[slot].take() {
                Some(mut w) => w.flush()?,
                None => drop(File::create(dir.join(name))?),
            }
        }
        let status = match (outcome.exit_code, &outcome.reason) {
            (Some(code), _) => format!("{code}\n"),
            (None, Some(reason)) => format!("{}: {reason}\n", outcome.status.label()),
            (None, None) => format!("{}\n", outcome.status.label()),
        };
        std::fs::write(dir.join("exit_status"), status)
    }

    /// The run is done: writes `summary.json` and points `latest` here.
    pub(super) fn finish(&self, summary: &Value) -> io::Result<()> {
        let mut text = serde_json::to_vec_pretty(summary)?;
        text.push(b'\n');
        std::fs::write(self.root.join("summary.json"), text)?;
        let _ = std::fs::remove_file(&self.latest);
        if let Some(name) = self.root.file_name() {
            std::os::unix::fs::symlink(name, &self.latest)?;
        }
        Ok(())
    }
}

/// Unpacks a host's results archive into `out` as data, not as a
/// filesystem image: only regular files and dirs are made, each below
/// `out`, owned by whoever runs pushrun, with the permission bits a host
/// may not choose masked off (setuid, setgid, sticky, group and world
/// write) and the umask applied on top; content is kept byte for byte.
/// Anything else (links, devices, fifos) is left out, and said so.
fn unpack(archive: impl io::Read, out: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let mut tar = tar::Archive::new(archive);
    let mut skipped = Vec::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        // the archive's own top (`./`) is `out` itself
        let top = path
            .components()
            .all(|c| matches!(c, std::path::Component::CurDir));
        if top && entry.header().entry_type() == tar::EntryType::Directory {
            continue;
        }
        let Some(rel) = inside(&path) else {
            skipped.push(path.display().to_string());
            continue;
        };
        let dest = out.join(&rel);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o755;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&dest)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = dest.parent() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o755)
                        .create(parent)?;
                }
                // never write through what is already there
                if std::fs::symlink_metadata(&dest).is_ok() {
                    std::fs::remove_file(&dest)?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&dest)?;
                io::copy(&mut entry, &mut file)?;
            }
            _ => skipped.push(path.display().to_string()),
        }
    }
    match skipped.as_slice() {
        [] => Ok(()),
        [one] => Err(io::Error::other(format!(
            "{one}: not a regular file or dir, left out"
        ))),
        [first, rest @ ..] => Err(io::Error::other(format!(
            "{first} and {} more: not regular files or dirs, left out",
            rest.len()
        ))),
    }
}

/// `path` as a path below the results dir, if it stays there: only plain
/// names (`./` dropped), no `..`, no root.
fn inside(path: &Path) -> Option<PathBuf> {
    let mut rel = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::Normal(n) => rel.push(n),
            std::path::Component::CurDir => {}
            _ => return None,
        }
    }
    (!rel.as_os_str().is_empty()).then_some(rel)
}

/// Names pushrun gives its own files in a run's folder; no host folder
/// may take them.
const OWN_FILES: [&str; 2] = ["summary.json", "run.log"];

/// A host name as a folder name: one path component, never hidden, never
/// one of pushrun's own files, and one name per host. Bytes that cannot
/// stand in a file name or that a terminal would act on (`/`, `\`, NUL,
/// controls, DEL), `%` itself, a leading `.` and the first byte of a
/// name pushrun uses become `%XX`, so `host_name` gives the name back.
pub fn folder_name(name: &str) -> String {
    let reserved = OWN_FILES.contains(&name);
    let mut folder = String::with_capacity(name.len());
    for (i, c) in name.char_indices() {
        let encode = matches!(c, '/' | '\\' | '%' | '\u{7f}')
            || c.is_ascii_control()
            || (i == 0 && (c == '.' || reserved));
        if encode {
            let _ = write!(folder, "%{:02X}", u32::from(c));
        } else {
            folder.push(c);
        }
    }
    folder
}

/// The host name a folder name stands for: [`folder_name`] undone.
#[cfg_attr(not(test), allow(dead_code))]
fn host_name(folder: &str) -> Option<String> {
    let bytes = folder.as_bytes();
    let mut name = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = folder.get(i + 1..i + 3)?;
            name.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            name.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_become_single_visible_folder_names() {
        assert_eq!(folder_name("node01"), "node01");
        assert_eq!(folder_name("../etc"), "%2E.%2Fetc");
        assert_eq!(folder_name("a\\b\0c"), "a%5Cb%00c");
        assert_eq!(folder_name("summary.json"), "%73ummary.json");
        assert_eq!(folder_name("run.log"), "%72un.log");
    }

    #[test]
    fn folder_names_are_unique_and_reversible() {
        let names = [
            "a/b",
            "a_b",
            "a%2Fb",
            "%",
            ".x",
            "%2Ex",
            "summary.json",
            "\x1bq",
            "é/ü",
        ];
        let folders: std::collections::HashSet<_> = names.iter().map(|n| folder_name(n)).collect();
        assert_eq!(folders.len(), names.len());
        for n in names {
            assert_eq!(host_name(&folder_name(n)).as_deref(), Some(n));
        }
    }

    #[test]
    fn results_are_unpacked_as_plain_data() {
        use std::os::unix::fs::PermissionsExt;
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append_data(&mut h, path, data).unwrap();
        };
        add("d", tar::EntryType::Directory, 0o1777, b"");
        add("d/suid", tar::EntryType::Regular, 0o4777, b"\x00\x01binary");
        add("g", tar::EntryType::Regular, 0o2666, b"g");
        add("fifo", tar::EntryType::Fifo, 0o644, b"");
        let tar = b.into_inner().unwrap();
        let dir = std::env::temp_dir().join(format!("pushrun-unpack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let err = unpack(&tar[..], &dir).unwrap_err().to_string();
        assert!(err.contains("fifo: not a regular file or dir"), "{err}");
        let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("d") & !0o755, 0, "dir mode {:o}", mode("d"));
        assert_eq!(mode("d/suid") & !0o755, 0, "file mode {:o}", mode("d/suid"));
        assert_eq!(mode("g") & !0o644, 0);
        assert_eq!(
            std::fs::read(dir.join("d/suid")).unwrap(),
            b"\x00\x01binary"
        );
        assert!(!dir.join("fifo").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_archives_own_top_dir_is_the_results_dir_and_no_problem() {
        // collect.sh archives `.`: its first entry is `./`
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in [
            ("./", tar::EntryType::Directory, &b""[..]),
            ("./f", tar::EntryType::Regular, &b"data"[..]),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(0o755);
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append_data(&mut h, path, data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let dir = std::env::temp_dir().join(format!("pushrun-top-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        unpack(&tar[..], &dir).unwrap();
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"data");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
