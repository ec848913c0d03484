//! The default output: every line shown as it arrives, prefixed with its
//! host's name.
//!
//! The mark after the name says what the line is: `:` stdout, `!` stderr
//! (shown on stderr), `>` a record from `$PUSHRUN_TUNNEL`, `~` a note about
//! the host from pushrun itself. Names are padded to one width so the text
//! lines up, and bytes that are not UTF-8 are shown escaped rather than
//! dropped: the line is still the host's line, byte for byte.

use std::io;

use super::{Hosts, Render, Screen, escape};
use crate::events::{Event, Stream};

/// Shows each line as it arrives (`host: text`, `host! text`).
pub(super) struct Lines;

impl Render for Lines {
    fn show(&mut self, screen: &mut Screen, hosts: &Hosts, event: &Event) -> io::Result<()> {
        match event {
            Event::Output {
                host, stream, line, ..
            } => match stream {
                Stream::Stdout => screen.print(&hosts.prefixed(*host, ':', &escape(line))),
                Stream::Stderr => screen.eprint(&hosts.prefixed(*host, '!', &escape(line))),
            },
            Event::Record(id, line) => screen.print(&hosts.prefixed(*id, '>', &escape(line))),
            Event::Retrying { .. } | Event::Repeated { .. } => note(screen, hosts, event),
            _ => Ok(()),
        }
    }
}

/// Shows a note about a host (`host~ text`) on stderr for the events that
/// make one (a retry, a repeated run's end); other events show nothing.
pub(super) fn note(screen: &mut Screen, hosts: &Hosts, event: &Event) -> io::Result<()> {
    let (host, text) = match event {
        Event::Retrying {
            host,
            reason,
            delay,
        } => {
            let secs = delay.as_secs_f64();
            (*host, format!("{reason}: trying again in {secs:.0}s"))
        }
        Event::Repeated {
            host,
            run,
            changed,
            status,
        } => {
            let what = if *changed { "changed" } else { "unchanged" };
            (*host, format!("run {run}: {}, {what}", status.label()))
        }
        _ => return Ok(()),
    };
    screen.eprint(&hosts.prefixed(host, '~', &text))
}
