//! `--rerun failed|unreachable|not-ok`: the hosts that ended so in the
//! latest run of a results dir, with the settings that run gave them.
//!
//! Rerunning what failed is the most asked-for thing after a big run; it
//! must need nothing but the results dir, so each run records in its
//! summary.json where its hosts came from (`selection`), and the rerun
//! reads that inventory again and picks the hosts by name.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use serde_json::Value;

use super::args::{Pick, Source, select_hosts};
use crate::error::Error;
use crate::inventory::Host;

/// Which hosts of the latest run to run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Rerun {
    /// Hosts whose command or payload failed (`failed`, `timed_out`).
    Failed,
    /// Hosts that could not be reached.
    Unreachable,
    /// Every host that did not end `ok`.
    NotOk,
}

impl Rerun {
    fn takes(self, status: &str) -> bool {
        match self {
            Rerun::Failed => matches!(status, "failed" | "timed_out"),
            Rerun::Unreachable => status == "unreachable",
            Rerun::NotOk => status != "ok",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Rerun::Failed => "--rerun failed",
            Rerun::Unreachable => "--rerun unreachable",
            Rerun::NotOk => "--rerun not-ok",
        }
    }
}

/// The hosts to run again, their hops, the selection to record again,
/// and the ssh config the run used (if it named one).
pub(super) struct Again {
    pub(super) hosts: Vec<Host>,
    pub(super) hops: Vec<Host>,
    pub(super) selection: Value,
    pub(super) ssh_config: Option<PathBuf>,
}

/// Reads `results/latest/summary.json` and picks the hosts `which` names.
pub(super) fn again(which: Rerun, results: &Path) -> Result<Again, Error> {
    let path = results.join("latest").join("summary.json");
    let fail = |why: String| Error::Usage(format!("{}: {}: {why}", which.flag(), path.display()));
    let text = std::fs::read_to_string(&path).map_err(|e| fail(format!("no run to read ({e})")))?;
    let summary: Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("not a summary: {e}")))?;
    let selection = summary["selection"].clone();
    let source: Source = serde_json::from_value(selection["source"].clone()).map_err(|_| {
        fail("the run does not record where its hosts came from: give -w or --hosts".into())
    })?;
    let run_id = summary["run_id"].as_str().unwrap_or("?");
    let names: Vec<String> = summary["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["status"].as_str().is_some_and(|s| which.takes(s)))
        .filter_map(|h| h["name"].as_str().map(str::to_owned))
        .collect();
    if names.is_empty() {
        let none = match which {
            Rerun::Failed => "no host failed",
            Rerun::Unreachable => "no host was unreachable",
            Rerun::NotOk => "every host was ok",
        };
        return Err(fail(format!("{none} in run {run_id}: nothing to rerun")));
    }
    let (hosts, hops) = select_hosts(source.load()?, Pick::Names(&names))?;
    let ssh_config = selection["ssh_config"].as_str().map(PathBuf::from);
    Ok(Again {
        hosts,
        hops,
        selection,
        ssh_config,
    })
}
