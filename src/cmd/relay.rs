//! `pushrun relay`: not for people. An initiator starts it over ssh on a
//! `via:` host, which then runs its subtree of the run (see [`crate::relay`]).

use crate::error::{Error, Exit};

/// Serves one plan from stdin; the exit status says whether its events got
/// back upstream.
pub fn run() -> Result<Exit, Error> {
    Ok(Exit::from_code(crate::relay::serve()))
}
