//! `--gather` (`-b`): output held back until every host is done, then shown
//! once per distinct result, under the folded list of the hosts that had
//! it (like `clush -b`).
//!
//! On a large fleet most hosts say the same thing; folding them turns
//! thousands of lines into a few blocks, and the odd host out stands
//! alone. Two hosts share a block only when their whole output (streams,
//! bytes, line ends) and their end (exit code, status) are the same.

use std::fmt::Write as _;
use std::io;

use super::lines::{self, escape};
use super::summary::Ended;
use super::{Hosts, Render, Screen};
use crate::events::{Event, HostOutcome, Status, Stream};
use crate::inventory::hostlist;

/// One line of a host's output, kept until the end.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    stream: Stream,
    bytes: Vec<u8>,
    /// Whether a newline ended it.
    complete: bool,
}

/// Holds every host's output, and shows it grouped at the end.
pub(super) struct Gather {
    /// Each host's output so far, by host id.
    kept: Vec<Vec<Piece>>,
}

impl Gather {
    /// A renderer for `hosts` hosts.
    pub(super) fn new(hosts: usize) -> Gather {
        Gather {
            kept: vec![Vec::new(); hosts],
        }
    }
}

impl Render for Gather {
    fn show(&mut self, screen: &mut Screen, hosts: &Hosts, event: &Event) -> io::Result<()> {
        match event {
            Event::Output {
                host,
                stream,
                line,
                complete,
            } => {
                self.kept[*host].push(Piece {
                    stream: *stream,
                    bytes: line.clone(),
                    complete: *complete,
                });
                Ok(())
            }
            Event::Retrying { .. } | Event::Repeated { .. } => lines::note(screen, hosts, event),
            _ => Ok(()),
        }
    }

    fn ended(
        &mut self,
        screen: &mut Screen,
        hosts: &Hosts,
        outcomes: &[Option<HostOutcome>],
    ) -> io::Result<()> {
        screen.write_out(&self.text(hosts, outcomes))
    }

    fn summary(&mut self, screen: &mut Screen, ended: &Ended<'_>) -> io::Result<()> {
        screen.summary(&ended.text())
    }
}

/// What makes two hosts' results the same: their output and how they ended.
type Key<'a> = (&'a [Piece], Option<i32>, Status);

impl Gather {
    /// The blocks, each under a ruled header naming its hosts.
    fn text(&self, hosts: &Hosts, outcomes: &[Option<HostOutcome>]) -> String {
        let mut text = String::new();
        for ((pieces, code, status), names) in self.groups(hosts, outcomes) {
            let end = match (status, code) {
                (_, Some(c)) => format!("exit {c}"),
                (s, None) => s.label().to_string(),
            };
            let header = format!(
                "{} ({} host{}, {end})",
                hostlist::fold(&names),
                names.len(),
                plural(names.len())
            );
            let rule = "-".repeat(header.chars().count().clamp(16, 79));
            let _ = writeln!(text, "{rule}\n{header}\n{rule}");
            for piece in pieces {
                let mark = if piece.stream == Stream::Stderr {
                    "! "
                } else {
                    ""
                };
                let _ = writeln!(text, "{mark}{}", escape(&piece.bytes));
            }
        }
        text
    }

    /// The hosts grouped by identical results, in the order each result
    /// first appeared. A host that never connected and said nothing is
    /// left to the summary.
    fn groups<'a>(
        &'a self,
        hosts: &Hosts,
        outcomes: &[Option<HostOutcome>],
    ) -> Vec<(Key<'a>, Vec<String>)> {
        let mut groups: Vec<(Key<'a>, Vec<String>)> = Vec::new();
        for (i, o) in outcomes.iter().enumerate() {
            let Some(o) = o else { continue };
            if matches!(
                o.status,
                Status::Unreachable | Status::Cancelled | Status::Skipped
            ) && self.kept[i].is_empty()
            {
                continue;
            }
            let key: Key<'a> = (&self.kept[i], o.exit_code, o.status);
            let name = hosts.name(i).to_string();
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, names)) => names.push(name),
                None => groups.push((key, vec![name])),
            }
        }
        groups
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
