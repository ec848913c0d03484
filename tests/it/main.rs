//! pushrun's integration tests, as one test binary: one link of the crate instead of
//! one per file, and the shared test hosts (`common`) compiled once, where the
//! compiler can tell a helper that no test uses any more.
//!
//! Most tests start real sshd hosts on loopback (see `common`); filter them by module
//! with `cargo nextest run --test it access::` (or `cargo test --test it access::`).

mod common;

mod access;
mod collector;
mod connections;
mod exec;
mod harness;
mod hostile;
mod hosts;
mod inventory;
mod payload;
mod relay;
mod remote_scripts;
mod transfer;
mod unattended;
mod waves;
