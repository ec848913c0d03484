//! pushrun's exit statuses, in one place.
//!
//! A failed host is a result, not an error of the run: the run goes on and
//! the summary's [`Exit`] says at the end how it went (like ripgrep). Errors
//! of the run itself (bad flags, an inventory that does not parse, a control
//! dir that cannot be made) end it at once with [`Exit::Usage`] or
//! [`Exit::Failed`]; the top-level [`Error`] knows which.

use std::process::ExitCode;

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
