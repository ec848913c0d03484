//! The command line: one file per subcommand, each with its flags and its
//! `run`.
//!
//! Parsing happens in two steps, as in ripgrep: clap fills [`Cli`], then a
//! subcommand loads and checks the inventory and builds a [`Plan`] before
//! any host is contacted. Every error up to there is a usage error (exit
//! status 2) and nothing has touched the network. The flags are clap's
//! business only: the enums clap parses live here and are mapped onto the
//! domain's ([`crate::fleet::PtyMode`], [`crate::session::Kex`], …), so the
//! rest of pushrun knows nothing of clap.
//!
//! [`Plan`]: crate::run::Plan

use std::time::Duration;

use clap::builder::{EnumValueParser, TypedValueParser};
use clap::{Parser, Subcommand, ValueEnum};

use crate::report::OutputMode;

mod access;
mod args;
pub mod clean;
pub mod completions;
pub mod copy;
pub mod disconnect;
pub mod exec;
pub mod fetch;
pub mod hosts;
pub mod relay;
mod rerun;
mod waves;

pub use args::{ConnectArgs, SelectArgs};

const EXIT_CODES: &str = "\
Exit status:
  0    every host ran the command and it exited 0
  1    the command exited non-zero (or was killed) on some host, or
       --max-fail skipped hosts
  2    usage or inventory error; no host was contacted
  3    some host was unreachable, refused authentication or timed out
  4    --converged-timeout: the run converged while some payload still ran (stopped)
  130  interrupted (Ctrl-C, SIGTERM or SIGHUP)";

/// Runs commands on many hosts over SSH, with nothing to install on them.
#[derive(Debug, Parser)]
#[command(name = "pushrun", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// pushrun's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command, or push and run a payload, on every selected host.
    #[command(after_help = EXIT_CODES)]
    Exec(exec::ExecArgs),
    /// List the selected hosts and their settings, contacting none.
    Hosts(hosts::HostsArgs),
    /// Remove pushrun's directory (payload cache, leftover runs) from the selected hosts.
    #[command(after_help = EXIT_CODES)]
    Clean(clean::CleanArgs),
    /// Copy files and directories to every selected host.
    #[command(after_help = EXIT_CODES, override_usage = "pushrun copy [OPTIONS] SRC... DEST")]
    Copy(copy::CopyArgs),
    /// Fetch files and directories from every selected host into LOCAL_DIR/HOST/.
    #[command(
        after_help = EXIT_CODES,
        override_usage = "pushrun fetch [OPTIONS] REMOTE... LOCAL_DIR"
    )]
    Fetch(fetch::FetchArgs),
    /// Print a shell completion script: `source <(pushrun completions bash)`.
    Completions {
        /// The shell.
        shell: completions::CompletionShell,
    },
    /// Print the man page (roff): `pushrun man | man -l -`.
    Man,
    /// End the connections that runs left up (--persist) now.
    Disconnect(disconnect::DisconnectArgs),
    /// Serve a subtree for an initiator: a framed plan on stdin, framed events on stdout.
    #[command(hide = true)]
    Relay,
}

/// How to show the run: `--json` wins over `--gather`.
fn output_mode(gather: bool, json: bool) -> OutputMode {
    match (gather, json) {
        (_, true) => OutputMode::Json,
        (true, false) => OutputMode::Gather,
        _ => OutputMode::Lines,
    }
}

/// A number of seconds, fractions allowed, more than 0.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err(format!("`{s}`: seconds must be more than 0"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Parses a flag's value as the clap-side enum `F`, and hands the program
/// the domain type `T` it stands for.
fn onto<F, T>() -> impl TypedValueParser<Value = T>
where
    F: ValueEnum + Clone + Send + Sync + 'static,
    T: From<F> + Clone + Send + Sync + 'static,
{
    EnumValueParser::<F>::new().map(T::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_accept_fractions_and_refuse_nonsense() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("ten").is_err());
    }
}
