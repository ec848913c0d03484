//! `--results DIR`: the run kept on disk, one folder per host.
//!
//! `DIR/<run-id>/<host>/` holds `stdout`, `stderr`, `exit_status`, the
//! payload's `$PUSHRUN_OUT` unpacked in `out/` and its records in
//! `records.jsonl`; `DIR/<run-id>/summary.json` says how the run went and
//! `DIR/latest` points at the newest run. Files are written as events
//! arrive, whatever the output mode, so a run cut short still leaves what
//! it got. Unattended runs also keep `run.log`, a copy of what was shown.

use std::collections::{BTreeMap, HashMap};
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
    /// Hosts whose results could not all be kept, and why.
    problems: BTreeMap<HostId, String>,
}

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
            Event::Collected(id, archive) => self.collected(*id, archive),
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

    fn collected(&mut self, id: HostId, archive: &[u8]) -> io::Result<()> {
        let out = self.host_dir(id)?.join("out");
        // a repeated run's results replace the previous run's
        if out.exists() {
            std::fs::remove_dir_all(&out)?;
        }
        std::fs::create_dir_all(&out)?;
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
        tar.set_preserve_permissions(true);
        if let Err(e) = tar.unpack(&out) {
            self.problems
                .insert(id, format!("results archive could not be unpacked: {e}"));
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

/// A host name as a folder name: one path component, never hidden.
pub fn folder_name(name: &str) -> String {
    if name.starts_with('.') {
        format!("_{name}")
    } else {
        name.to_string()
    }
    .replace(['/', '\\', '\0'], "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_become_single_visible_folder_names() {
        assert_eq!(folder_name("node01"), "node01");
        assert_eq!(folder_name("../etc"), "_.._etc");
        assert_eq!(folder_name("a\\b\0c"), "a_b_c");
    }
}
