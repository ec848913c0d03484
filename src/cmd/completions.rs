//! `pushrun completions SHELL` and `pushrun man`: what a shell and `man`
//! need, generated from the same clap definitions the parser uses, so they
//! never drift from the flags.

use std::io::{self, Write};

use clap::{CommandFactory, ValueEnum};
use clap_complete::Shell;

use super::Cli;
use crate::error::{Error, Exit};

/// Shells pushrun writes completions for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompletionShell {
    /// bash: `source <(pushrun completions bash)`.
    Bash,
    /// zsh: save as `_pushrun` in a directory of `$fpath`.
    Zsh,
    /// fish: save as `~/.config/fish/completions/pushrun.fish`.
    Fish,
}

/// Writes the completion script for `shell` on stdout.
pub fn completions(shell: CompletionShell) -> Result<Exit, Error> {
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut out = io::stdout().lock();
    clap_complete::generate(shell, &mut Cli::command(), "pushrun", &mut out);
    out.flush().map_err(Error::Output)?;
    Ok(Exit::Ok)
}

/// Writes the man page (roff) on stdout: `pushrun man | man -l -`.
pub fn man() -> Result<Exit, Error> {
    let mut out = io::stdout().lock();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .and_then(|()| out.flush())
        .map_err(Error::Output)?;
    Ok(Exit::Ok)
}
