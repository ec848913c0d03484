//! `--diff`: output held back until every host is done, then each distinct
//! output shown as a unified diff against the most common one (like
//! `clush --diff`), under the folded lists of the hosts on either side.
//!
//! On a fleet that should be the same everywhere, the interesting part is
//! how the odd hosts differ from the rest, not what all of them say. Lines
//! are shown as in `--gather` (stderr marked `! `, bytes not UTF-8 as
//! `\xNN`); how each host ended is the summary's business.

use std::io;

use similar::TextDiff;

use super::escape;
use super::lines;
use super::{Hosts, Render, Screen};
use crate::events::{Event, HostOutcome, Status, Stream};
use crate::inventory::hostlist;

/// Holds every host's output as text, and shows the diffs at the end.
pub(super) struct Diff {
    /// Each host's output so far, by host id.
    kept: Vec<String>,
}

impl Diff {
    /// A renderer for `hosts` hosts.
    pub(super) fn new(hosts: usize) -> Diff {
        Diff {
            kept: vec![String::new(); hosts],
        }
    }

    /// Distinct outputs with their hosts, the most common first (ties: the
    /// first seen). Hosts that never ran and said nothing are left out.
    fn groups(&self, hosts: &Hosts, outcomes: &[Option<HostOutcome>]) -> Vec<(&str, Vec<String>)> {
        let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
        for (i, o) in outcomes.iter().enumerate() {
            let Some(o) = o else { continue };
            let silent = self.kept[i].is_empty();
            if silent && o.exit_code.is_none() && o.status != Status::Ok {
                continue;
            }
            let name = hosts.name(i).to_string();
            match groups.iter_mut().find(|(text, _)| *text == self.kept[i]) {
                Some((_, names)) => names.push(name),
                None => groups.push((&self.kept[i], vec![name])),
            }
        }
        // stable: equal counts keep the order they were first seen in
        groups.sort_by_key(|(_, names)| std::cmp::Reverse(names.len()));
        groups
    }

    /// The diffs of every other output against the most common one.
    fn text(&self, hosts: &Hosts, outcomes: &[Option<HostOutcome>]) -> String {
        let groups = self.groups(hosts, outcomes);
        let Some(((common, common_hosts), others)) = groups.split_first() else {
            return String::new();
        };
        let label = |names: &[String]| format!("{} ({})", hostlist::fold(names), names.len());
        let mut text = String::new();
        for (other, other_hosts) in others {
            let diff = TextDiff::from_lines(*common, *other);
            let shown = diff
                .unified_diff()
                .context_radius(3)
                .header(&label(common_hosts), &label(other_hosts))
                .to_string();
            text.push_str(&shown);
            if !shown.ends_with('\n') {
                text.push('\n');
            }
        }
        text
    }
}

impl Render for Diff {
    fn show(&mut self, screen: &mut Screen, hosts: &Hosts, event: &Event) -> io::Result<()> {
        match event {
            Event::Output {
                host,
                stream,
                line,
                complete,
            } => {
                let kept = &mut self.kept[*host];
                if *stream == Stream::Stderr {
                    kept.push_str("! ");
                }
                kept.push_str(&escape(line));
                if !*complete {
                    kept.push_str(" \\ (no newline)");
                }
                kept.push('\n');
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Timings;

    #[test]
    fn the_odd_host_is_a_diff_against_the_most_common_output() {
        let names: Vec<String> = (1..=4).map(|i| format!("node{i}")).collect();
        let hosts = Hosts::new(names, Vec::new());
        let mut d = Diff::new(4);
        for (i, text) in ["a\nb\n", "a\nb\n", "a\nc\n", "a\nb\n"].iter().enumerate() {
            d.kept[i] = (*text).to_string();
        }
        let ok = || Some(HostOutcome::ok(Timings::default()));
        let outcomes = vec![ok(), ok(), ok(), ok()];
        let text = d.text(&hosts, &outcomes);
        assert_eq!(
            text,
            "--- node[1-2,4] (3)\n+++ node3 (1)\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n"
        );
        // the same everywhere: nothing to show
        d.kept[2] = "a\nb\n".into();
        assert_eq!(d.text(&hosts, &outcomes), "");
    }
}
