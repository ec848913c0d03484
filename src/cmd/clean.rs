//! `pushrun clean`: removes pushrun's directory (payload cache, runs left
//! behind) from the selected hosts, as a run of its own so it is reported,
//! interrupted and relayed like any other.

use clap::Args;

use super::access::access_for;
use super::args::OneShot;
use super::{ConnectArgs, SelectArgs, output_mode};
use crate::error::{Error, Exit};
use crate::fleet::Job;
use crate::run::{self, Plan};

/// Flags of `pushrun clean`.
#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Which hosts.
    #[command(flatten)]
    pub select: SelectArgs,
    /// How to reach them.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// One JSON object per event on stdout, and a final summary object.
    #[arg(long)]
    pub json: bool,
}

/// Runs `pushrun clean`.
pub fn run(args: &CleanArgs) -> Result<Exit, Error> {
    run::run(args.plan()?)
}

impl CleanArgs {
    /// Checks everything and builds the plan.
    pub fn plan(&self) -> Result<Plan, Error> {
        let ssh = self.connect.check()?;
        let (hosts, hops) = self.select.select_with_hops()?;
        let (hosts, hops) = (self.connect.apply(hosts), self.connect.apply(hops));
        let login = self.connect.login_password()?;
        let access = access_for(&hosts, login, None, None, None)?;
        let shot = OneShot {
            job: Job::Clean,
            timeout: None,
            waves: None,
            output: output_mode(false, self.json),
        };
        Ok(self.connect.one_shot_plan(ssh, (hosts, hops), access, shot))
    }
}
