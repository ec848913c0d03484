//! Every byte pushrun writes to the terminal comes from here.
//!
//! Host tasks never print: the [`Reporter`] takes their [`Event`]s in the
//! order they arrive, keeps the run's state (who is running, how each host
//! ended, the results dir) and hands each event to the renderer of the
//! chosen [`OutputMode`]. One renderer per mode (live lines, gathered, JSON
//! lines), all writing whole lines through one screen, so hosts never
//! interleave mid-line and the progress line never garbles a shown one.

mod diff;
mod gather;
mod json;
mod lines;
mod results;
mod screen;
mod summary;

use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::time::Instant;

use serde_json::Value;

use crate::events::{Event, HostId, HostOutcome, Status};
use diff::Diff;
use gather::Gather;
use json::Json;
use lines::Lines;
use results::ResultsDir;
pub use results::folder_name;
use screen::Screen;
pub use screen::escape;
use summary::Ended;
pub use summary::Summary;

/// How output is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// Live lines, `host: text` (stderr lines `host! text`, on stderr).
    Lines,
    /// Identical outputs grouped, shown once every host is done.
    Gather,
    /// One JSON object per event on stdout.
    Json,
    /// Each distinct output as a unified diff against the most common one,
    /// shown once every host is done.
    Diff,
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
    /// Where the hosts came from, for summary.json's `selection` (what
    /// `--rerun` reads back); `Null` to leave it out.
    pub selection: Value,
}

/// What one output mode shows of the run.
trait Render {
    /// Shows an event as it arrives (or keeps it for the end).
    fn show(&mut self, screen: &mut Screen, hosts: &Hosts, event: &Event) -> io::Result<()>;

    /// Every host is done: shows what was kept for the end.
    fn ended(
        &mut self,
        _screen: &mut Screen,
        _hosts: &Hosts,
        _outcomes: &[Option<HostOutcome>],
    ) -> io::Result<()> {
        Ok(())
    }

    /// Shows the closing summary: the text one, unless the mode has its own.
    fn summary(&mut self, screen: &mut Screen, ended: &Ended<'_>) -> io::Result<()> {
        screen.summary(&ended.text())
    }
}

/// The run's hosts, as output names them.
struct Hosts {
    /// Names, by host id (selection order).
    names: Vec<String>,
    /// Each host's place in the relay tree, when it has one.
    paths: Vec<Option<String>>,
    /// The longest name's width in characters, so live lines line up.
    width: usize,
}

impl Hosts {
    fn new(names: Vec<String>, paths: Vec<Option<String>>) -> Hosts {
        let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
        Hosts {
            names,
            paths,
            width,
        }
    }

    fn len(&self) -> usize {
        self.names.len()
    }

    fn name(&self, id: HostId) -> &str {
        &self.names[id]
    }

    fn path(&self, id: HostId) -> Option<&str> {
        self.paths.get(id).and_then(|p| p.as_deref())
    }

    /// `text` after host `id`'s name, padded, and `mark` (`node1 : text`).
    fn prefixed(&self, id: HostId, mark: char, text: &str) -> String {
        let w = self.width;
        format!("{:<w$}{mark} {text}", self.names[id])
    }
}

/// Renders a run.
pub struct Reporter {
    render: Box<dyn Render>,
    screen: Screen,
    hosts: Hosts,
    run_id: String,
    job: Value,
    started: Instant,
    /// How each host ended, once it has.
    outcomes: Vec<Option<HostOutcome>>,
    /// Which hosts hold a `--forks` slot now.
    in_flight: Vec<bool>,
    interrupted: bool,
    results: Option<ResultsDir>,
    /// What the relays did, for summary.json.
    relays: Vec<Value>,
    /// See [`RunInfo::selection`].
    selection: Value,
}

impl Reporter {
    /// A reporter for hosts named `names` (in selection order); creates
    /// the results dir when `info` asks for one.
    pub fn new(mode: OutputMode, names: Vec<String>, info: RunInfo) -> io::Result<Reporter> {
        let RunInfo {
            run_id,
            job,
            results,
            log,
            paths,
            selection,
        } = info;
        let results = match &results {
            Some(base) => Some(ResultsDir::create(base, &run_id, &names)?),
            None => None,
        };
        let run_log = match (&results, log) {
            (Some(r), true) => Some(r.create_log()?),
            _ => None,
        };
        let n = names.len();
        let started = Instant::now();
        let render: Box<dyn Render> = match mode {
            OutputMode::Lines => Box::new(Lines),
            OutputMode::Gather => Box::new(Gather::new(n)),
            OutputMode::Json => Box::new(Json::new(started)),
            OutputMode::Diff => Box::new(Diff::new(n)),
        };
        Ok(Reporter {
            render,
            screen: Screen::new(run_log, io::stderr().is_terminal() && !log),
            hosts: Hosts::new(names, paths),
            run_id,
            job,
            started,
            outcomes: vec![None; n],
            in_flight: vec![false; n],
            interrupted: false,
            results,
            relays: Vec::new(),
            selection,
        })
    }

    /// Takes one event.
    pub fn handle(&mut self, mut event: Event) -> io::Result<()> {
        if let Some(r) = &mut self.results {
            r.keep(&event)?;
            // results that could not all be kept fail the host: never an
            // `ok` with results missing
            if let Event::Finished(id, outcome) = &mut event
                && let Some(problem) = r.problem(*id)
                && outcome.status == Status::Ok
            {
                outcome.status = Status::Failed;
                outcome.reason = Some(problem.to_string());
            }
        }
        self.render.show(&mut self.screen, &self.hosts, &event)?;
        match event {
            Event::Connecting(id) => self.in_flight[id] = true,
            Event::Finished(id, outcome) => {
                self.in_flight[id] = false;
                if let Some(r) = &mut self.results {
                    r.finished(id, &outcome)?;
                }
                self.outcomes[id] = Some(outcome);
            }
            _ => {}
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

    /// Says, once, that the run is being interrupted.
    pub fn interrupted(&mut self) -> io::Result<()> {
        if !self.interrupted {
            self.interrupted = true;
            self.screen.tell(
                "pushrun: interrupted: stopping remote commands (Ctrl-C again to quit at once)",
            )?;
        }
        Ok(())
    }

    /// Writes out what is buffered, and redraws the progress line (at most 10 times a second).
    pub fn flush(&mut self) -> io::Result<()> {
        self.screen.flush(|| {
            let ended = self.outcomes.iter().flatten();
            let done = ended.clone().count();
            let failed = ended.filter(|o| o.status != Status::Ok).count();
            format!(
                "[{done}/{} done, {failed} failed, {} running, {:.1}s]",
                self.hosts.len(),
                self.in_flight.iter().filter(|&&f| f).count(),
                self.started.elapsed().as_secs_f64()
            )
        })
    }

    /// Writes what comes at the end (gathered output, the summary) and returns the totals.
    pub fn finish(mut self) -> io::Result<Summary> {
        self.screen.end_progress()?;
        self.render
            .ended(&mut self.screen, &self.hosts, &self.outcomes)?;
        let summary = Summary::of(&self.outcomes, self.interrupted);
        let ended = Ended {
            hosts: &self.hosts,
            outcomes: &self.outcomes,
            summary: &summary,
            elapsed: self.started.elapsed(),
            results: self.results.as_ref(),
            relays: &self.relays,
        };
        if let Some(r) = &self.results {
            let mut document = ended.document(&self.run_id, &self.job, &self.relays);
            if !self.selection.is_null() {
                document["selection"] = self.selection.clone();
            }
            r.finish(&document)?;
        }
        self.render.summary(&mut self.screen, &ended)?;
        Ok(summary)
    }
}
