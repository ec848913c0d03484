//! How the run went, once every host is done: the totals and exit status
//! ([`Summary`]), the text summary on stderr, and `summary.json`.
//!
//! The text summary is for a person: one line of counts, then one line per
//! distinct (status, reason) with the hosts folded, so a thousand hosts
//! refusing the same way take one line. `summary.json` is for programs: a
//! record per host with its status, timings and staging figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use super::Hosts;
use super::results::ResultsDir;
use crate::error::Exit;
use crate::events::{HostId, HostOutcome, Status};
use crate::inventory::hostlist;

/// The run's totals, and the exit status they mean.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Hosts per status.
    pub counts: BTreeMap<Status, usize>,
    /// pushrun's exit status: the worst one a host's status means
    /// (cancelled is [`Exit::Interrupted`], unreachable or timed out is
    /// [`Exit::Unreachable`], ...), or [`Exit::Interrupted`] when the run was.
    pub exit_status: Exit,
}

impl Default for Summary {
    fn default() -> Summary {
        Summary {
            counts: BTreeMap::new(),
            exit_status: Exit::Ok,
        }
    }
}

impl Summary {
    /// The totals of hosts that ended as `outcomes` say (`None`: not ended).
    pub(super) fn of(outcomes: &[Option<HostOutcome>], interrupted: bool) -> Summary {
        let mut counts = BTreeMap::new();
        for o in outcomes.iter().flatten() {
            *counts.entry(o.status).or_insert(0) += 1;
        }
        let worst = counts.keys().map(|&s| exit_for(s)).max();
        let exit_status = if interrupted {
            Exit::Interrupted
        } else {
            worst.unwrap_or(Exit::Ok)
        };
        Summary {
            counts,
            exit_status,
        }
    }

    /// How many hosts ended with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.counts.get(&status).copied().unwrap_or(0)
    }
}

/// The exit status a host's status alone would mean.
fn exit_for(status: Status) -> Exit {
    match status {
        Status::Ok => Exit::Ok,
        // a host never started because others failed: the run did not do its job
        Status::Failed | Status::Skipped => Exit::Failed,
        Status::Stopped => Exit::Stopped,
        Status::TimedOut | Status::Unreachable => Exit::Unreachable,
        Status::Cancelled => Exit::Interrupted,
    }
}

/// The ended run, as the summaries see it.
pub(super) struct Ended<'a> {
    /// The run's hosts.
    pub(super) hosts: &'a Hosts,
    /// How each host ended (`None`: it never did).
    pub(super) outcomes: &'a [Option<HostOutcome>],
    /// The totals.
    pub(super) summary: &'a Summary,
    /// How long the run took.
    pub(super) elapsed: Duration,
    /// The results dir, if results were kept.
    pub(super) results: Option<&'a ResultsDir>,
    /// What the relays did (as in summary.json).
    pub(super) relays: &'a [Value],
}

impl Ended<'_> {
    /// The hosts that ended with `status`, folded (`node[01-03]`).
    pub(super) fn folded(&self, status: Status) -> String {
        let names: Vec<String> = self
            .outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| o.as_ref().is_some_and(|o| o.status == status))
            .map(|(i, _)| self.hosts.name(i).to_string())
            .collect();
        hostlist::fold(&names)
    }

    /// The text summary: counts, then one line per distinct reason.
    pub(super) fn text(&self) -> String {
        let mut s = format!(
            "pushrun: {} hosts in {:.2}s:",
            self.hosts.len(),
            self.elapsed.as_secs_f64()
        );
        let mut first = true;
        for status in Status::ALL {
            let n = self.summary.count(status);
            if n > 0 || status == Status::Ok {
                s.push_str(if first { " " } else { ", " });
                first = false;
                let _ = write!(s, "{n} {}", status.label());
            }
        }
        s.push('\n');
        for ((status, reason), hosts) in self.reasons() {
            let label = if status == Status::Ok {
                String::new()
            } else {
                format!("{}: ", status.label())
            };
            let reason = super::escape(reason.as_bytes());
            let _ = writeln!(s, "  {label}{}: {reason}", hostlist::fold(&hosts));
        }
        if let Some(r) = self.results {
            let _ = writeln!(s, "  results: {}", r.root().display());
        }
        s
    }

    /// Hosts grouped by (status, reason), ordered by status: why hosts did
    /// not end well, notes about hosts that did (under `Ok`), and results
    /// that could not be kept (under `Failed`).
    fn reasons(&self) -> Vec<((Status, String), Vec<String>)> {
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
                let name = self.hosts.name(i).to_string();
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, hosts)) => hosts.push(name),
                    None => groups.push((key, vec![name])),
                }
            }
        }
        if let Some(r) = self.results {
            for (i, p) in r.problems() {
                groups.push((
                    (Status::Failed, format!("results: {p}")),
                    vec![self.hosts.name(i).to_string()],
                ));
            }
        }
        groups.sort_by_key(|g| g.0.0);
        groups
    }

    /// `summary.json`: the run, its totals, each host, and the relays.
    pub(super) fn document(&self, run_id: &str, job: &Value, relays: &[Value]) -> Value {
        let hosts: Vec<Value> = (0..self.hosts.len()).map(|i| self.host(i)).collect();
        let mut counts = json!({});
        for status in Status::ALL {
            counts[status.as_str()] = json!(self.summary.count(status));
        }
        let mut all = json!({
            "run_id": run_id,
            "job": job,
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "exit_status": self.summary.exit_status.code(),
            "counts": counts,
            "hosts": hosts,
        });
        if !relays.is_empty() {
            all["relays"] = json!(relays);
        }
        all
    }

    /// Host `i`'s record in `summary.json`.
    fn host(&self, i: HostId) -> Value {
        let mut h = json!({"name": self.hosts.name(i)});
        if let Some(path) = self.hosts.path(i) {
            h["path"] = json!(path);
        }
        if let Some(r) = self.results {
            h["folder"] = json!(r.folder(i));
        }
        if let Some(o) = &self.outcomes[i] {
            h["status"] = json!(o.status.as_str());
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
        if let Some(p) = self.results.and_then(|r| r.problem(i)) {
            h["results_problem"] = json!(p);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Timings;

    fn ended(status: Status) -> Option<HostOutcome> {
        Some(HostOutcome::without_exit(status, "why", Timings::default()))
    }

    #[test]
    fn exit_status_is_the_worst_present() {
        let run = |statuses: &[Status], interrupted| {
            let outcomes: Vec<_> = statuses.iter().map(|&s| ended(s)).collect();
            Summary::of(&outcomes, interrupted).exit_status
        };
        assert_eq!(run(&[], false), Exit::Ok);
        assert_eq!(run(&[Status::Ok, Status::Ok], false), Exit::Ok);
        assert_eq!(run(&[Status::Ok, Status::Stopped], false), Exit::Stopped);
        assert_eq!(run(&[Status::Stopped, Status::Failed], false), Exit::Failed);
        assert_eq!(
            run(&[Status::Failed, Status::TimedOut], false),
            Exit::Unreachable
        );
        assert_eq!(
            run(&[Status::Unreachable, Status::Failed], false),
            Exit::Unreachable
        );
        assert_eq!(
            run(&[Status::Unreachable, Status::Cancelled], false),
            Exit::Interrupted
        );
        assert_eq!(run(&[Status::Ok], true), Exit::Interrupted);
    }

    #[test]
    fn counts_leave_out_hosts_still_running() {
        let summary = Summary::of(&[ended(Status::Failed), None, ended(Status::Failed)], false);
        assert_eq!(summary.count(Status::Failed), 2);
        assert_eq!(summary.count(Status::Ok), 0);
    }
}
