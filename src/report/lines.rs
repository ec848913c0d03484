//! The default output: every line shown as it arrives, prefixed with its
//! host's name.
//!
//! The mark after the name says what the line is: `:` stdout, `!` stderr
//! (shown on stderr), `>` a record from `$PUSHRUN_TUNNEL`, `~` a note about
//! the host from pushrun itself. Names are padded to one width so the text
//! lines up, and bytes that are not UTF-8 are shown escaped rather than
//! dropped: the line is still the host's line, byte for byte.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io;

use super::summary::Ended;
use super::{Hosts, Render, Screen};
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

    fn summary(&mut self, screen: &mut Screen, ended: &Ended<'_>) -> io::Result<()> {
        screen.summary(&ended.text())
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

/// Shows bytes as text a terminal cannot act on: bytes that are not UTF-8
/// become `\xNN`, and so do control characters (C0 but tab, DEL), while C1
/// controls become `\u{NN}`. A host cannot move the cursor, rewrite its own
/// prefix, pose as another host or retitle the window; an escape sequence
/// shows as its text (`\x1b]0;title\x07`).
pub fn escape(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(bytes)
        && !s.chars().any(is_control)
    {
        return s.into();
    }
    let mut s = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if !is_control(c) {
                s.push(c);
            } else if c.is_ascii() {
                let _ = write!(s, "\\x{:02x}", u32::from(c));
            } else {
                let _ = write!(s, "\\u{{{:02x}}}", u32::from(c));
            }
        }
        for b in chunk.invalid() {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    s.into()
}

/// Whether a terminal would act on `c` rather than show it: C0 controls
/// but tab, DEL and the C1 controls.
fn is_control(c: char) -> bool {
    c.is_control() && c != '\t'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_is_escaped_and_valid_text_kept() {
        assert_eq!(escape(b"plain \xc3\xa9"), "plain é");
        assert_eq!(escape(b"a\xffb\xfe"), "a\\xffb\\xfe");
    }

    #[test]
    fn control_characters_show_as_text() {
        assert_eq!(escape(b"ok\rSPOOF"), "ok\\x0dSPOOF");
        assert_eq!(escape(b"\x1b]0;title\x07"), "\\x1b]0;title\\x07");
        assert_eq!(escape(b"a\tb\x7f"), "a\tb\\x7f");
        assert_eq!(escape("\u{9b}2J".as_bytes()), "\\u{9b}2J");
        assert_eq!(escape(b"\x1b\xff"), "\\x1b\\xff");
    }
}
