//! `--gather` (`-b`): output held back until every host is done, then shown
//! once per distinct result, under the folded list of the hosts that had
//! it (like `clush -b`).
//!
//! On a large fleet most hosts say the same thing; folding them turns
//! thousands of lines into a few blocks, and the odd host out stands
//! alone. Two hosts share a block only when their whole output (streams,
//! bytes, line ends) and their end (exit code, status) are the same. Each
//! host's output is kept as a digest plus its first [`SAMPLE`] bytes, so
//! a host that prints gigabytes costs no more memory than one that prints
//! a line.

use std::fmt::Write as _;
use std::io;

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::escape;
use super::lines;
use super::{Hosts, Render, Screen};
use crate::events::{Event, HostId, HostOutcome, Status, Stream};
use crate::inventory::hostlist;

/// One line of a host's output, kept until the end.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    stream: Stream,
    bytes: Vec<u8>,
    /// Whether a newline ended it.
    complete: bool,
}

/// The most of one host's output kept to be shown: the first lines up to
/// this many bytes. The rest is only digested (and counted), so that
/// memory stays bounded whatever a host prints; `--results` keeps all of
/// it.
const SAMPLE: usize = 16 * 1024;

/// What is kept of one host's output: a digest of all of it, and the first
/// of it.
#[derive(Clone, Default)]
struct Kept {
    digest: Sha256,
    /// The first pieces, at most [`SAMPLE`] bytes.
    sample: Vec<Piece>,
    sample_bytes: usize,
    /// Pieces and bytes past the sample.
    more_lines: u64,
    more_bytes: u64,
}

impl Kept {
    fn push(&mut self, piece: Piece) {
        self.digest.update([
            u8::from(piece.stream == Stream::Stderr),
            u8::from(piece.complete),
        ]);
        self.digest.update((piece.bytes.len() as u64).to_le_bytes());
        self.digest.update(&piece.bytes);
        if self.more_lines == 0 && self.sample_bytes + piece.bytes.len() <= SAMPLE {
            self.sample_bytes += piece.bytes.len();
            self.sample.push(piece);
        } else {
            self.more_lines += 1;
            self.more_bytes += piece.bytes.len() as u64;
        }
    }

    fn is_empty(&self) -> bool {
        self.sample.is_empty() && self.more_lines == 0
    }
}

/// Holds every host's output (a digest and a sample), and shows it grouped
/// at the end.
pub(super) struct Gather {
    /// What is kept of each host's output so far, by host id.
    kept: Vec<Kept>,
}

impl Gather {
    /// A renderer for `hosts` hosts.
    pub(super) fn new(hosts: usize) -> Gather {
        Gather {
            kept: vec![Kept::default(); hosts],
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
}

/// What makes two hosts' results the same: their output (its digest) and
/// how they ended.
type Key = ([u8; 32], Option<i32>, Status);

impl Gather {
    /// The blocks, each under a ruled header naming its hosts.
    fn text(&self, hosts: &Hosts, outcomes: &[Option<HostOutcome>]) -> String {
        let mut text = String::new();
        for ((_, code, status), first, names) in self.groups(hosts, outcomes) {
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
            let kept = &self.kept[first];
            for piece in &kept.sample {
                let mark = if piece.stream == Stream::Stderr {
                    "! "
                } else {
                    ""
                };
                let _ = writeln!(text, "{mark}{}", escape(&piece.bytes));
            }
            if kept.more_lines > 0 {
                let _ = writeln!(
                    text,
                    "[{} more line{} ({} bytes) not shown]",
                    kept.more_lines,
                    plural(kept.more_lines as usize),
                    kept.more_bytes
                );
            }
        }
        text
    }

    /// The hosts grouped by identical results, in the order each result
    /// first appeared, each group with its first host's id. A host that
    /// never connected and said nothing is left to the summary.
    fn groups(
        &self,
        hosts: &Hosts,
        outcomes: &[Option<HostOutcome>],
    ) -> Vec<(Key, HostId, Vec<String>)> {
        let mut groups: Vec<(Key, HostId, Vec<String>)> = Vec::new();
        let mut index: HashMap<Key, usize> = HashMap::new();
        for (i, o) in outcomes.iter().enumerate() {
            let Some(o) = o else { continue };
            if matches!(
                o.status,
                Status::Unreachable | Status::Cancelled | Status::Skipped
            ) && self.kept[i].is_empty()
            {
                continue;
            }
            let key: Key = (
                self.kept[i].digest.clone().finalize().into(),
                o.exit_code,
                o.status,
            );
            let name = hosts.name(i).to_string();
            match index.get(&key) {
                Some(&g) => groups[g].2.push(name),
                None => {
                    index.insert(key, groups.len());
                    groups.push((key, i, vec![name]));
                }
            }
        }
        groups
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
