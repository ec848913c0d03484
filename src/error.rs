//! pushrun's exit statuses, in one place.
//!
//! A failed host is a result, not an error of the run: the run goes on and
//! the summary's [`Exit`] says at the end how it went (like ripgrep). Errors
//! of the run itself (bad flags, an inventory that does not parse, a control
//! dir that cannot be made) end it at once with [`Exit::Usage`] or
//! [`Exit::Failed`]; the top-level [`Error`] knows which.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::inventory::InventoryError;
use crate::payload::PayloadError;

/// What pushrun's exit status says, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    /// Every host ran the command and it exited 0.
    Ok,
    /// The run converged (`--converged-timeout`) with a host still running.
    Stopped,
    /// A command failed on a host (or output could not be written).
    Failed,
    /// Bad flags or inventory: nothing ran.
    Usage,
    /// A host could not be reached, or timed out.
    Unreachable,
    /// The run was interrupted (Ctrl-C, SIGTERM, SIGHUP).
    Interrupted,
}

impl Exit {
    /// The number the process exits with.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Unreachable => 3,
            Exit::Stopped => 4,
            Exit::Interrupted => 130,
        }
    }

    /// The exit status that a number means (relays send theirs as a number).
    pub fn from_code(code: u8) -> Exit {
        match code {
            0 => Exit::Ok,
            2 => Exit::Usage,
            3 => Exit::Unreachable,
            4 => Exit::Stopped,
            130 => Exit::Interrupted,
            _ => Exit::Failed,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

/// What ends a run before it starts, or stops it writing: printed once, as
/// `pushrun: <message>: <cause>…`, by `main`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Flags that do not go together, or name what is not there.
    #[error("{0}")]
    Usage(String),
    /// The inventory does not load, or the selection is wrong.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// The payload does not load.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// The relays (`via:`) do not make a tree.
    #[error("{0}")]
    Relays(String),
    /// A password could not be read for `flag`.
    #[error("{flag}: cannot read the password")]
    Password {
        /// `--ask-pass` or `--ask-become-pass`.
        flag: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The inventory names a password variable that is not set.
    #[error("host {host}: {key} names {var}, which is not set in the environment")]
    PasswordEnv {
        /// The host whose entry names it.
        host: String,
        /// `password_env` or `become_password_env`.
        key: &'static str,
        /// The variable.
        var: String,
    },
    /// The async runtime could not be built.
    #[error("cannot start")]
    Runtime(#[source] io::Error),
    /// The private directory for ssh's sockets and password files.
    #[error("cannot create a control directory")]
    ControlDir(#[source] io::Error),
    /// The results dir (`--results`) could not be made.
    #[error("{}: cannot create the results dir", .dir.display())]
    ResultsDir {
        /// The results root, as given.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The run's output could not be written.
    #[error("cannot write output")]
    Output(#[source] io::Error),
}

impl Error {
    /// The exit status this error ends pushrun with.
    pub fn exit(&self) -> Exit {
        match self {
            // The run took place: only showing it failed.
            Error::Output(_) => Exit::Failed,
            _ => Exit::Usage,
        }
    }

    /// The message and its causes, one after the other: what `main` prints
    /// after `pushrun: `.
    pub fn with_causes(&self) -> String {
        let mut message = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            message.push_str(": ");
            message.push_str(&c.to_string());
            cause = c.source();
        }
        message
    }
}
