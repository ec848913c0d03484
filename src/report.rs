//! Every byte pushrun writes to the terminal comes from here.
//!
//! The reporter consumes [`Event`]s in the order they arrive and renders
//! them in one of three modes: live lines prefixed with the host name,
//! gathered (identical outputs grouped under a folded host list, like
//! `clush -b`), or JSON lines. Whole lines only, so hosts never interleave
//! mid-line. A progress line is drawn on stderr when it is a terminal.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::events::{Event, HostId, HostOutcome, Status, Stream};
use crate::inventory::hostlist;

/// How output is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// Live lines, `host: text` (stderr lines `host! text`, on stderr).
    Lines,
    /// Identical outputs grouped, shown once every host is done.
    Gather,
    /// One JSON object per event on stdout.
    Json,
}

/// The run's totals, and the exit status they mean.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Hosts per status.
    pub counts: BTreeMap<Status, usize>,
    /// pushrun's exit status: 0 all ok, 1 a command failed, 3 a host
    /// unreachable or timed out, 4 payloads stopped at convergence, 130 interrupted.
    pub exit_status: i32,
}

/// What the run was, for summaries.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    /// The run's id.
    pub run_id: String,
    /// What ran, as JSON (`{"command": …}` or `{"payload": …, "digest": …}`).
    pub job: Value,
    /// The results root (`--results`), if results are kept.
    pub results: Option<PathBuf>,
    /// Also write what is shown to `<results>/<run-id>/run.log` (unattended runs).
    pub log: bool,
    /// Each host's place in the relay tree (`r1/node042`); `None` for a
    /// direct host (the list may be empty when no host has a relay).
    pub paths: Vec<Option<String>>,
}

/// The results dir of one run: `DIR/<run-id>/<host>/{stdout,stderr,exit_status,out/}`
/// and `DIR/<run-id>/summary.json`, with `DIR/latest` pointing at it.
struct ResultsDir {
    root: PathBuf,
    latest: PathBuf,
    folders: Vec<String>,
    open: HashMap<HostId, [Option<io::BufWriter<File>>; 2]>,
    problems: HashMap<HostId, String>,
}

impl ResultsDir {
    fn create(base: &Path, run_id: &str, names: &[String]) -> io::Result<ResultsDir> {
        let root = base.join(run_id);
        std::fs::create_dir_all(&root)?;
        // Host names become folder names: keep them to one path component.
        let folders = names
            .iter()
            .map(|n| {
                if n.starts_with('.') {
                    format!("_{n}")
                } else {
                    n.clone()
                }
                .replace(['/', '\\', '\0'], "_")
            })
            .collect();
        Ok(ResultsDir {
            root,
            latest: base.join("latest"),
            folders,
            open: HashMap::new(),
            problems: HashMap::new(),
        })
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

    fn finished(&mut self, id: HostId, outcome: &HostOutcome) -> io::Result<()> {
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

    fn finish(&self, summary: &Value) -> io::Result<()> {
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

/// Renders a run.
pub struct Reporter {
    mode: OutputMode,
    names: Vec<String>,
    width: usize,
    out: io::BufWriter<io::Stdout>,
    err: io::Stderr,
    started: Instant,
    outcomes: Vec<Option<HostOutcome>>,
    gathered: Vec<Vec<(Stream, Vec<u8>, bool)>>,
    in_flight: Vec<bool>,
    progress: Option<Progress>,
    interrupted: bool,
    info: RunInfo,
    results: Option<ResultsDir>,
    log: Option<io::BufWriter<File>>,
    relays: Vec<Value>,
}

struct Progress {
    drawn: bool,
    last: Option<Instant>,
}

impl Reporter {
    /// A reporter for hosts named `names` (in selection order); creates
    /// the results dir when `info` asks for one.
    pub fn new(mode: OutputMode, names: Vec<String>, info: RunInfo) -> io::Result<Reporter> {
        let results = match &info.results {
            Some(base) => Some(ResultsDir::create(base, &info.run_id, &names)?),
            None => None,
        };
        let log = match (&results, info.log) {
            (Some(r), true) => Some(io::BufWriter::new(File::create(r.root.join("run.log"))?)),
            _ => None,
        };
        let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
        let n = names.len();
        let progress = (io::stderr().is_terminal() && !info.log).then_some(Progress {
            drawn: false,
            last: None,
        });
        Ok(Reporter {
            mode,
            names,
            width,
            out: io::BufWriter::with_capacity(64 * 1024, io::stdout()),
            err: io::stderr(),
            started: Instant::now(),
            outcomes: vec![None; n],
            gathered: if mode == OutputMode::Gather {
                vec![Vec::new(); n]
            } else {
                Vec::new()
            },
            in_flight: vec![false; n],
            progress,
            interrupted: false,
            info,
            results,
            log,
            relays: Vec::new(),
        })
    }

    /// Writes one shown line to the run's log too, when it keeps one.
    fn log(&mut self, line: &str) -> io::Result<()> {
        if let Some(log) = &mut self.log {
            log.write_all(line.as_bytes())?;
            log.write_all(b"\n")?;
        }
        Ok(())
    }

    /// A line about the host that is not its output (`host ~ text`), on stderr.
    fn note(&mut self, id: HostId, text: &str) -> io::Result<()> {
        let name = &self.names[id];
        let w = self.width;
        let line = format!("{name:<w$}~ {text}");
        self.clear_progress()?;
        self.out.flush()?;
        writeln!(self.err, "{line}")?;
        self.log(&line)
    }

    /// Takes one event.
    pub fn handle(&mut self, event: Event) -> io::Result<()> {
        match event {
            Event::Connecting(id) => {
                self.in_flight[id] = true;
                if self.mode == OutputMode::Json {
                    self.json(id, json!({"event": "connecting"}))?;
                }
            }
            Event::Connected(id) => {
                if self.mode == OutputMode::Json {
                    self.json(id, json!({"event": "connected"}))?;
                }
            }
            Event::Output {
                host,
                stream,
                line,
                complete,
            } => {
                if let Some(r) = &mut self.results {
                    r.output(host, stream, &line, complete)?;
                }
                self.output(host, stream, line, complete)?
            }
            Event::Collected(id, archive) => {
                if let Some(r) = &mut self.results {
                    r.collected(id, &archive)?;
                }
            }
            Event::Busy(_) => {}
            Event::Record(id, line) => {
                if let Some(r) = &mut self.results {
                    r.record(id, &line)?;
                }
                match self.mode {
                    OutputMode::Json => {
                        let text = String::from_utf8_lossy(&line).into_owned();
                        let record =
                            serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
                        self.json(id, json!({"event": "record", "record": record}))?;
                    }
                    OutputMode::Lines => {
                        self.clear_progress()?;
                        let (name, w) = (&self.names[id], self.width);
                        let line = format!("{name:<w$}> {}", escape(&line));
                        writeln!(self.out, "{line}")?;
                        self.log(&line)?;
                    }
                    OutputMode::Gather => {}
                }
            }
            Event::Retrying {
                host,
                reason,
                delay,
            } => {
                let secs = delay.as_secs_f64();
                match self.mode {
                    OutputMode::Json => self.json(
                        host,
                        json!({"event": "retrying", "reason": reason, "delay_ms": delay.as_millis() as u64}),
                    )?,
                    _ => self.note(host, &format!("{reason}: trying again in {secs:.0}s"))?,
                }
            }
            Event::Repeated {
                host,
                run,
                changed,
                status,
            } => match self.mode {
                OutputMode::Json => self.json(
                    host,
                    json!({"event": "repeated", "run": run, "changed": changed, "status": status}),
                )?,
                _ => {
                    let what = if changed { "changed" } else { "unchanged" };
                    self.note(host, &format!("run {run}: {}, {what}", status.label()))?
                }
            },
            Event::Finished(id, outcome) => {
                self.in_flight[id] = false;
                if self.mode == OutputMode::Json {
                    let o = &outcome;
                    self.json(
                        id,
                        json!({
                            "event": "end",
                            "status": o.status,
                            "exit_code": o.exit_code,
                            "reason": o.reason,
                            "notes": o.notes,
                            "timings": o.timings,
                            "stage": o.stage,
                        }),
                    )?;
                }
                if let Some(r) = &mut self.results {
                    r.finished(id, &outcome)?;
                }
                self.outcomes[id] = Some(outcome);
            }
        }
        Ok(())
    }

    fn output(
        &mut self,
        id: HostId,
        stream: Stream,
        line: Vec<u8>,
        complete: bool,
    ) -> io::Result<()> {
        match self.mode {
            OutputMode::Gather => self.gathered[id].push((stream, line, complete)),
            OutputMode::Json => {
                let mut obj = json!({"event": "output", "stream": stream});
                match String::from_utf8(line) {
                    Ok(text) => obj["text"] = Value::String(text),
                    Err(e) => {
                        obj["data_b64"] = Value::String(
                            base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
                        )
                    }
                }
                if !complete {
                    obj["partial"] = Value::Bool(true);
                }
                self.json(id, obj)?;
            }
            OutputMode::Lines => {
                self.clear_progress()?;
                let name = &self.names[id];
                let text = escape(&line);
                let w = self.width;
                let line = match stream {
                    Stream::Stdout => {
                        let line = format!("{name:<w$}: {text}");
                        writeln!(self.out, "{line}")?;
                        line
                    }
                    Stream::Stderr => {
                        let line = format!("{name:<w$}! {text}");
                        self.out.flush()?;
                        writeln!(self.err, "{line}")?;
                        line
                    }
                };
                self.log(&line)?;
            }
        }
        Ok(())
    }

    /// What the relays did (`relay::RelayReport`s), for summary.json.
    pub fn relays<T: serde::Serialize>(&mut self, reports: &[T]) {
        self.relays = reports
            .iter()
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect();
    }

    fn path(&self, id: HostId) -> Option<&str> {
        self.info.paths.get(id).and_then(|p| p.as_deref())
    }

    fn json(&mut self, id: HostId, mut obj: Value) -> io::Result<()> {
        obj["host"] = Value::String(self.names[id].clone());
        if let Some(path) = self.path(id) {
            obj["path"] = json!(path);
        }
        obj["t_ms"] = json!(self.started.elapsed().as_millis() as u64);
        serde_json::to_writer(&mut self.out, &obj)?;
        self.out.write_all(b"\n")
    }

    /// Says, once, that the run is being interrupted.
    pub fn interrupted(&mut self) -> io::Result<()> {
        if !self.interrupted {
            self.interrupted = true;
            self.clear_progress()?;
            self.out.flush()?;
            writeln!(
                self.err,
                "pushrun: interrupted: stopping remote commands (Ctrl-C again to quit at once)"
            )?;
        }
        Ok(())
    }

    /// Writes out what is buffered, and redraws the progress line (at most 10 times a second).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()?;
        if let Some(log) = &mut self.log {
            log.flush()?;
        }
        let Some(p) = &self.progress else {
            return Ok(());
        };
        if p.last
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return Ok(());
        }
        let done = self.outcomes.iter().flatten().count();
        let failed = self
            .outcomes
            .iter()
            .flatten()
            .filter(|o| o.status != Status::Ok)
            .count();
        let line = format!(
            "[{done}/{} done, {failed} failed, {} running, {:.1}s]",
            self.names.len(),
            self.in_flight.iter().filter(|&&f| f).count(),
            self.started.elapsed().as_secs_f64()
        );
        write!(self.err, "\r\x1b[K{line}")?;
        self.err.flush()?;
        if let Some(p) = &mut self.progress {
            p.drawn = true;
            p.last = Some(Instant::now());
        }
        Ok(())
    }

    fn clear_progress(&mut self) -> io::Result<()> {
        if let Some(p) = &mut self.progress
            && p.drawn
        {
            self.out.flush()?;
            write!(self.err, "\r\x1b[K")?;
            p.drawn = false;
            p.last = None;
        }
        Ok(())
    }

    /// Writes what comes at the end (gathered output, the summary) and returns the totals.
    pub fn finish(mut self) -> io::Result<Summary> {
        self.clear_progress()?;
        self.progress = None;
        if self.mode == OutputMode::Gather {
            self.write_gathered()?;
        }
        let summary = self.summary();
        let elapsed = self.started.elapsed();
        if let Some(r) = &self.results {
            r.finish(&self.summary_json(&summary, elapsed))?;
        }
        if self.mode == OutputMode::Json {
            let mut obj = json!({
                "event": "summary",
                "hosts": self.names.len(),
                "elapsed_ms": elapsed.as_millis() as u64,
                "exit_status": summary.exit_status,
            });
            for status in Status::ALL {
                let key = serde_json::to_value(status)?
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                obj[key.as_str()] = json!(summary.counts.get(&status).copied().unwrap_or(0));
                obj["hosts_by_status"][key.as_str()] = json!(self.folded(|o| o.status == status));
            }
            serde_json::to_writer(&mut self.out, &obj)?;
            self.out.write_all(b"\n")?;
            self.out.flush()?;
        } else {
            self.out.flush()?;
            let text = self.summary_text(&summary, elapsed);
            self.err.write_all(text.as_bytes())?;
            if let Some(log) = &mut self.log {
                log.write_all(text.as_bytes())?;
                log.flush()?;
            }
        }
        Ok(summary)
    }

    fn summary_json(&self, summary: &Summary, elapsed: Duration) -> Value {
        let problems = self.results.as_ref().map(|r| &r.problems);
        let hosts: Vec<Value> = self
            .outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let mut h = json!({"name": self.names[i]});
                if let Some(path) = self.path(i) {
                    h["path"] = json!(path);
                }
                if let Some(r) = &self.results {
                    h["folder"] = json!(r.folders[i]);
                }
                if let Some(o) = o {
                    h["status"] = json!(o.status);
                    h["exit_code"] = json!(o.exit_code);
                    h["reason"] = json!(o.reason);
                    h["notes"] = json!(o.notes);
                    h["timings"] = json!(o.timings);
                    if let Some(st) = &o.stage {
                        h["cache_hit"] = json!(st.cache_hit);
                        h["files_sent"] = json!(st.files_sent);
                        h["bytes_sent"] = json!(st.bytes_sent);
                        h["bytes_received"] = json!(st.bytes_received);
                    }
                }
                if let Some(p) = problems.and_then(|p| p.get(&i)) {
                    h["results_problem"] = json!(p);
                }
                h
            })
            .collect();
        let mut counts = json!({});
        for status in Status::ALL {
            let key = serde_json::to_value(status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            counts[key.as_str()] = json!(summary.counts.get(&status).copied().unwrap_or(0));
        }
        let mut all = json!({
            "run_id": self.info.run_id,
            "job": self.info.job,
            "elapsed_ms": elapsed.as_millis() as u64,
            "exit_status": summary.exit_status,
            "counts": counts,
            "hosts": hosts,
        });
        if !self.relays.is_empty() {
            all["relays"] = json!(self.relays);
        }
        all
    }

    fn summary(&self) -> Summary {
        let mut counts = BTreeMap::new();
        for o in self.outcomes.iter().flatten() {
            *counts.entry(o.status).or_insert(0) += 1;
        }
        let has = |s| counts.get(&s).is_some_and(|&n| n > 0);
        let exit_status = if self.interrupted || has(Status::Cancelled) {
            130
        } else if has(Status::Unreachable) || has(Status::TimedOut) {
            3
        } else if has(Status::Failed) {
            1
        } else if has(Status::Stopped) {
            4
        } else {
            0
        };
        Summary {
            counts,
            exit_status,
        }
    }

    fn folded(&self, pick: impl Fn(&HostOutcome) -> bool) -> String {
        let names: Vec<String> = self
            .outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| o.as_ref().is_some_and(&pick))
            .map(|(i, _)| self.names[i].clone())
            .collect();
        hostlist::fold(&names)
    }

    fn summary_text(&self, summary: &Summary, elapsed: Duration) -> String {
        let mut s = format!(
            "pushrun: {} hosts in {:.2}s:",
            self.names.len(),
            elapsed.as_secs_f64()
        );
        let mut first = true;
        for status in Status::ALL {
            let n = summary.counts.get(&status).copied().unwrap_or(0);
            if n > 0 || status == Status::Ok {
                s.push_str(if first { " " } else { ", " });
                first = false;
                let _ = write!(s, "{n} {}", status.label());
            }
        }
        s.push('\n');
        // One line per distinct (status, reason), with the hosts folded.
        let mut groups: Vec<((Status, String), Vec<String>)> = Vec::new();
        for (i, o) in self.outcomes.iter().enumerate() {
            let Some(o) = o else { continue };
            let mut keys = Vec::new();
            if o.status != Status::Ok {
                keys.push((o.status, o.reason.clone().unwrap_or_default()));
            }
            for note in &o.notes {
                keys.push((Status::Ok, format!("note: {note}")));
            }
            for key in keys {
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, hosts)) => hosts.push(self.names[i].clone()),
                    None => groups.push((key, vec![self.names[i].clone()])),
                }
            }
        }
        if let Some(r) = &self.results {
            for (i, p) in &r.problems {
                groups.push((
                    (Status::Failed, format!("results: {p}")),
                    vec![self.names[*i].clone()],
                ));
            }
        }
        groups.sort_by_key(|g| g.0.0);
        for ((status, reason), hosts) in groups {
            let label = if status == Status::Ok {
                String::new()
            } else {
                format!("{}: ", status.label())
            };
            let _ = writeln!(s, "  {label}{}: {reason}", hostlist::fold(&hosts));
        }
        if let Some(r) = &self.results {
            let _ = writeln!(s, "  results: {}", r.root.display());
        }
        s
    }

    fn write_gathered(&mut self) -> io::Result<()> {
        // Group hosts whose whole output and end are the same.
        type Key<'a> = (&'a [(Stream, Vec<u8>, bool)], Option<i32>, Status);
        let mut groups: Vec<(Key<'_>, Vec<String>)> = Vec::new();
        for (i, o) in self.outcomes.iter().enumerate() {
            let Some(o) = o else { continue };
            if matches!(o.status, Status::Unreachable | Status::Cancelled)
                && self.gathered[i].is_empty()
            {
                continue;
            }
            let key: Key<'_> = (&self.gathered[i], o.exit_code, o.status);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, hosts)) => hosts.push(self.names[i].clone()),
                None => groups.push((key, vec![self.names[i].clone()])),
            }
        }
        let mut text = String::new();
        for ((lines, code, status), hosts) in &groups {
            let end = match (status, code) {
                (_, Some(c)) => format!("exit {c}"),
                (s, None) => s.label().to_string(),
            };
            let header = format!(
                "{} ({} host{}, {end})",
                hostlist::fold(hosts),
                hosts.len(),
                plural(hosts.len())
            );
            let rule = "-".repeat(header.chars().count().clamp(16, 79));
            let _ = writeln!(text, "{rule}\n{header}\n{rule}");
            for (stream, line, _) in lines.iter() {
                let mark = if *stream == Stream::Stderr { "! " } else { "" };
                let _ = writeln!(text, "{mark}{}", escape(line));
            }
        }
        self.out.write_all(text.as_bytes())
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Shows bytes as text; bytes that are not UTF-8 become `\xNN`.
pub fn escape(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return s.into();
    }
    let mut s = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        s.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    s.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_is_escaped_and_valid_text_kept() {
        assert_eq!(escape(b"plain \xc3\xa9"), "plain é");
        assert_eq!(escape(b"a\xffb\xfe"), "a\\xffb\\xfe");
    }
}
