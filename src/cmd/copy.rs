//! `pushrun copy`: files and directories to every selected host, over each
//! host's one connection.
//!
//! The sources are read into one archive (on disk, in a file with no name)
//! before any host is contacted, so every host gets the same bytes and a
//! missing source costs nothing. Hosts behind a relay get it from their
//! relay, to which it is sent once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::access::SudoArgs;
use super::args::OneShot;
use super::waves::WaveArgs;
use super::{ConnectArgs, SelectArgs, output_mode, parse_secs};
use crate::error::{Error, Exit};
use crate::fleet::{CopyJob, Job};
use crate::run::{self, Plan};

/// Flags of `pushrun copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Which hosts.
    #[command(flatten)]
    pub select: SelectArgs,
    /// How to reach them.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Rolling run: waves of hosts.
    #[command(flatten)]
    pub waves: WaveArgs,
    /// Through sudo.
    #[command(flatten)]
    pub sudo: SudoArgs,
    /// Gather identical answers under one folded host list.
    #[arg(long, short = 'b', conflicts_with = "json")]
    pub gather: bool,
    /// One JSON object per event on stdout, and a final summary object.
    #[arg(long)]
    pub json: bool,
    /// Seconds a host's transfer may take; then it is stopped (status timed out).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub timeout: Option<Duration>,
    /// Local files and directories (recursive), then DEST on the hosts: a
    /// directory to put them in or, for one source, its new name. Modes are
    /// kept, owners are not; each file is replaced atomically.
    #[arg(required = true, num_args = 2.., value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// Runs `pushrun copy`.
pub fn run(args: &CopyArgs) -> Result<Exit, Error> {
    run::run(args.plan()?)
}

impl CopyArgs {
    /// Checks everything, reads the sources and builds the plan.
    pub fn plan(&self) -> Result<Plan, Error> {
        let ssh = self.connect.check()?;
        let Some((dest, sources)) = self.paths.split_last() else {
            return Err(Error::Usage("copy: give SRC… DEST".into()));
        };
        let dest = dest
            .to_str()
            .filter(|d| !d.is_empty())
            .ok_or_else(|| Error::Usage(format!("{}: not a usable DEST", dest.display())))?;
        let job = CopyJob::new(sources, dest.to_string())
            .map_err(|e| Error::Usage(format!("copy: {e}")))?;
        let (hosts, hops) = self.select.select_with_hops()?;
        let (hosts, hops) = (self.connect.apply(hosts), self.connect.apply(hops));
        let login = self.connect.login_password()?;
        let access = self.sudo.access(&hosts, login)?;
        let waves = self.waves.waves(&hosts)?;
        let shot = OneShot {
            job: Job::Copy(Arc::new(job)),
            timeout: self.timeout,
            waves,
            output: output_mode(self.gather, self.json),
        };
        Ok(self.connect.one_shot_plan(ssh, (hosts, hops), access, shot))
    }
}
