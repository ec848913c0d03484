//! `pushrun fetch`: files and directories from every selected host into
//! `LOCAL_DIR/<host>/`, the host folders named as the results dir names them.
//!
//! What a host sends is untrusted (see `fleet::transfer`): bounded by
//! `--max-bytes`, regular files and directories only, modes masked.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::access::SudoArgs;
use super::args::OneShot;
use super::{ConnectArgs, SelectArgs, output_mode, parse_secs};
use crate::error::{Error, Exit};
use crate::fleet::{FetchJob, Job};
use crate::report::folder_name;
use crate::run::{self, Plan};

/// Flags of `pushrun fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Which hosts.
    #[command(flatten)]
    pub select: SelectArgs,
    /// How to reach them.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Through sudo.
    #[command(flatten)]
    pub sudo: SudoArgs,
    /// The most one host may send, in bytes (suffixes K, M, G); a host
    /// sending more fails and what it sent is dropped.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = super::args::parse_size)]
    pub max_bytes: u64,
    /// One JSON object per event on stdout, and a final summary object.
    #[arg(long)]
    pub json: bool,
    /// Seconds a host's transfer may take; then it is stopped (status timed out).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub timeout: Option<Duration>,
    /// Paths on the hosts (files or directories), then the local directory
    /// to put them in: `LOCAL_DIR/<host>/<name>`.
    #[arg(required = true, num_args = 2.., value_name = "PATH")]
    pub paths: Vec<String>,
}

/// Runs `pushrun fetch`.
pub fn run(args: &FetchArgs) -> Result<Exit, Error> {
    run::run(args.plan()?)
}

impl FetchArgs {
    /// Checks everything and builds the plan.
    pub fn plan(&self) -> Result<Plan, Error> {
        let ssh = self.connect.check()?;
        let Some((local, remote)) = self.paths.split_last() else {
            return Err(Error::Usage("fetch: give REMOTE… LOCAL_DIR".into()));
        };
        let mut names = Vec::new();
        for p in remote {
            let name = p.trim_end_matches('/').rsplit('/').next().unwrap_or("");
            if name.is_empty() || name == "." || name == ".." {
                return Err(Error::Usage(format!(
                    "{p}: name a file or directory to fetch"
                )));
            }
            if names.contains(&name) {
                return Err(Error::Usage(format!(
                    "{p}: a second path named {name} would land on the first"
                )));
            }
            names.push(name);
        }
        let (hosts, hops) = self.select.select_with_hops()?;
        let (hosts, hops) = (self.connect.apply(hosts), self.connect.apply(hops));
        let local = PathBuf::from(local);
        std::fs::create_dir_all(&local)
            .map_err(|e| Error::Usage(format!("{}: {e}", local.display())))?;
        let folders: HashMap<String, PathBuf> = hosts
            .iter()
            .map(|h| (h.name.clone(), local.join(folder_name(&h.name))))
            .collect();
        let login = self.connect.login_password()?;
        let access = self.sudo.access(&hosts, login)?;
        let job = FetchJob {
            paths: remote.to_vec(),
            folders,
            max_bytes: self.max_bytes,
            forward: false,
        };
        let shot = OneShot {
            job: Job::Fetch(Arc::new(job)),
            timeout: self.timeout,
            waves: None,
            output: output_mode(false, self.json),
        };
        Ok(self.connect.one_shot_plan(ssh, (hosts, hops), access, shot))
    }
}

#[cfg(test)]
mod tests {
    use super::super::args::parse_size;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("10"), Ok(10));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert!(parse_size("1X").is_err());
    }
}
