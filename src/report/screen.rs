//! Where every renderer writes: stdout, stderr, the progress line drawn on
//! stderr, and the run's log.
//!
//! The renderers differ in what they show, not in how it reaches the user:
//! a shown line first clears the progress line, a line on stderr first
//! flushes stdout so the two streams keep their order on a terminal, and a
//! line the user sees is copied to run.log (unattended runs). Keeping these
//! rules in one place keeps the three output modes from drifting apart.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The progress line on stderr (`[3/10 done, 0 failed, 7 running, 1.2s]`).
struct Progress {
    /// Whether it is on the screen now (and must be cleared before a line).
    drawn: bool,
    /// When it was last drawn, to draw it at most 10 times a second.
    last: Option<Instant>,
}

/// The user's terminal (or whatever stdout and stderr are) and run.log.
pub(super) struct Screen {
    out: io::BufWriter<io::Stdout>,
    err: io::Stderr,
    progress: Option<Progress>,
    log: Option<io::BufWriter<File>>,
}

impl Screen {
    /// A screen that copies shown lines to `log`, and draws a progress line
    /// when `progress` says so (stderr is a terminal, nobody reads a log).
    pub(super) fn new(log: Option<io::BufWriter<File>>, progress: bool) -> Screen {
        Screen {
            out: io::BufWriter::with_capacity(64 * 1024, io::stdout()),
            err: io::stderr(),
            progress: progress.then_some(Progress {
                drawn: false,
                last: None,
            }),
            log,
        }
    }

    /// Shows a line on stdout, and logs it.
    pub(super) fn print(&mut self, line: &str) -> io::Result<()> {
        self.clear_progress()?;
        writeln!(self.out, "{line}")?;
        self.log(line)
    }

    /// Shows a line on stderr, and logs it.
    pub(super) fn eprint(&mut self, line: &str) -> io::Result<()> {
        self.tell(line)?;
        self.log(line)
    }

    /// Shows a line from pushrun itself on stderr; the log does not get it.
    pub(super) fn tell(&mut self, line: &str) -> io::Result<()> {
        self.clear_progress()?;
        self.out.flush()?;
        writeln!(self.err, "{line}")
    }

    /// Writes one JSON object as a line on stdout.
    pub(super) fn json(&mut self, obj: &Value) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, obj)?;
        self.out.write_all(b"\n")
    }

    /// Writes text as it is to stdout.
    pub(super) fn write_out(&mut self, text: &str) -> io::Result<()> {
        self.out.write_all(text.as_bytes())
    }

    /// Writes out what stdout holds.
    pub(super) fn flush_out(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Shows the closing text summary on stderr, and logs it.
    pub(super) fn summary(&mut self, text: &str) -> io::Result<()> {
        self.out.flush()?;
        self.err.write_all(text.as_bytes())?;
        if let Some(log) = &mut self.log {
            log.write_all(text.as_bytes())?;
            log.flush()?;
        }
        Ok(())
    }

    /// Writes out what is buffered, and redraws the progress line as
    /// `progress` makes it (at most 10 times a second).
    pub(super) fn flush(&mut self, progress: impl FnOnce() -> String) -> io::Result<()> {
        self.out.flush()?;
        if let Some(log) = &mut self.log {
            log.flush()?;
        }
        let Some(p) = &mut self.progress else {
            return Ok(());
        };
        if p.last
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return Ok(());
        }
        write!(self.err, "\r\x1b[K{}", progress())?;
        self.err.flush()?;
        p.drawn = true;
        p.last = Some(Instant::now());
        Ok(())
    }

    /// Clears the progress line for good: the run is ending.
    pub(super) fn end_progress(&mut self) -> io::Result<()> {
        self.clear_progress()?;
        self.progress = None;
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

    fn log(&mut self, line: &str) -> io::Result<()> {
        if let Some(log) = &mut self.log {
            log.write_all(line.as_bytes())?;
            log.write_all(b"\n")?;
        }
        Ok(())
    }
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
