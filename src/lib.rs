//! pushrun: run commands and payloads on many Linux hosts over SSH, with
//! nothing installed on them but sshd, a POSIX shell and coreutils.
//!
//! The pipeline: [`inventory`] selects hosts, [`cmd`] turns flags into a
//! checked plan that [`run`] carries out: [`fleet`] runs one task per host
//! over a [`session`], host tasks send [`events`], and [`report`] alone
//! writes what the user sees.

pub mod auth;
pub mod cmd;
pub mod encoding;
pub mod error;
pub mod events;
pub mod fleet;
pub mod inventory;
pub mod payload;
pub mod relay;
pub mod remote;
pub mod report;
pub mod run;
pub mod session;
