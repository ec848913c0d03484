//! The flag groups several subcommands share: which hosts, and how to reach
//! them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{onto, parse_secs};
use crate::auth::Secret;
use crate::error::Error;
use crate::inventory::{Host, Inventory};
use crate::session::{HostKeyChecking, Kex, SshOptions};

/// Which hosts.
#[derive(Debug, Args)]
pub struct SelectArgs {
    /// Inventory file (hosts.yaml).
    #[arg(long, value_name = "FILE")]
    pub hosts: Option<PathBuf>,
    /// Hosts to use, as a comma list with ranges (`node[01-10],db1`), like pdsh/clush -w.
    /// With --hosts, selects these hosts from the inventory.
    #[arg(short = 'w', value_name = "LIST")]
    pub wlist: Vec<String>,
    /// Select hosts: names, ranges, globs, @group, !exclusion, comma lists.
    #[arg(long, value_name = "PATTERN")]
    pub limit: Vec<String>,
}

/// How hosts are reached.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Log in as USER on hosts whose inventory entry names no user (like ssh/pdsh/clush -l).
    #[arg(long = "user", short = 'l', value_name = "USER")]
    pub user: Option<String>,
    /// How many hosts at once.
    #[arg(long, short = 'f', default_value_t = 64, value_name = "N")]
    pub forks: usize,
    /// ssh configuration file (ssh -F).
    #[arg(long, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
    /// Seconds to wait for a host to answer.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_secs)]
    pub connect_timeout: Duration,
    /// Key exchange: `fast` prefers curve25519-sha256 (a tenth of the CPU per
    /// host of OpenSSH 9's post-quantum default); `default` keeps ssh's order.
    #[arg(long, default_value = "fast", value_name = "KEX", value_parser = onto::<KexFlag, Kex>())]
    pub kex: Kex,
    /// Host key policy. Default: what ssh_config says (never a prompt).
    #[arg(long, value_name = "MODE", value_parser = onto::<HostKeyCheckingFlag, HostKeyChecking>())]
    pub host_key_checking: Option<HostKeyChecking>,
    /// Ask for the login password once (on the terminal; without one, the
    /// first line of stdin) and give it to every host that asks for one.
    /// Per host: `password_env: VAR` in the inventory.
    #[arg(long, short = 'k')]
    pub ask_pass: bool,
    /// The pushrun executable to stage on relays (`via:` hosts), when they
    /// need another build than this one (another OS or architecture).
    #[arg(long, value_name = "PATH")]
    pub relay_binary: Option<PathBuf>,
    /// The directory on hosts that holds pushrun's dir, for hosts whose
    /// inventory sets no `remote_tmp`. Default: the first of /tmp, /var/tmp,
    /// /dev/shm and ~/.cache where a file can be written and executed.
    #[arg(long, value_name = "PATH", value_parser = parse_remote_tmp)]
    pub remote_tmp: Option<String>,
}

/// `--remote-tmp`: an absolute path.
fn parse_remote_tmp(text: &str) -> Result<String, String> {
    if text.starts_with('/') {
        Ok(text.to_string())
    } else {
        Err("must be an absolute path".into())
    }
}

/// `--kex`, as clap parses it; the variants' docs are its help.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum KexFlag {
    /// Put curve25519-sha256 first: about a tenth of the CPU of OpenSSH 9's
    /// default post-quantum hybrid (sntrup761x25519), which dominates the
    /// initiator's cost per host. Ignored when ssh_config sets KexAlgorithms.
    Fast,
    /// ssh's own default order.
    Default,
}

impl From<KexFlag> for Kex {
    fn from(flag: KexFlag) -> Kex {
        match flag {
            KexFlag::Fast => Kex::Fast,
            KexFlag::Default => Kex::Default,
        }
    }
}

/// `--host-key-checking`, as clap parses it; the variants' docs are its help.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum HostKeyCheckingFlag {
    /// Only known keys are accepted (`StrictHostKeyChecking=yes`).
    Strict,
    /// Unknown keys are added to known_hosts, changed keys refused.
    AcceptNew,
    /// No checking at all (known_hosts is not read or written).
    Off,
}

impl From<HostKeyCheckingFlag> for HostKeyChecking {
    fn from(flag: HostKeyCheckingFlag) -> HostKeyChecking {
        match flag {
            HostKeyCheckingFlag::Strict => HostKeyChecking::Strict,
            HostKeyCheckingFlag::AcceptNew => HostKeyChecking::AcceptNew,
            HostKeyCheckingFlag::Off => HostKeyChecking::Off,
        }
    }
}

impl SelectArgs {
    /// Loads the inventory and applies the selection.
    pub fn select(&self) -> Result<Vec<Host>, Error> {
        Ok(self.select_with_hops()?.0)
    }

    /// The selection, and the relays it is reached through that are not
    /// selected themselves (see `relay::hops`).
    pub fn select_with_hops(&self) -> Result<(Vec<Host>, Vec<Host>), Error> {
        let default = PathBuf::from("hosts.yaml");
        let (inventory, mut patterns) = match (&self.hosts, self.wlist.is_empty()) {
            (Some(path), _) => (Inventory::load(path)?, self.wlist.clone()),
            (None, false) => (Inventory::ad_hoc(&self.wlist.join(","))?, Vec::new()),
            (None, true) if default.exists() => (Inventory::load(&default)?, Vec::new()),
            (None, true) => {
                return Err(Error::Usage(
                    "no hosts: give --hosts FILE or -w LIST (no hosts.yaml in this directory)"
                        .into(),
                ));
            }
        };
        patterns.extend(self.limit.iter().cloned());
        let hosts = inventory.select(&patterns)?;
        let hops = crate::relay::hops(inventory.hosts(), &hosts).map_err(Error::Relays)?;
        Ok((hosts, hops))
    }
}

impl ConnectArgs {
    /// Fills in what the flags say for hosts whose inventory leaves it open.
    pub(super) fn apply(&self, mut hosts: Vec<Host>) -> Vec<Host> {
        if let Some(user) = &self.user {
            for h in hosts.iter_mut().filter(|h| h.settings.user.is_none()) {
                h.settings.user = Some(user.clone());
            }
        }
        if let Some(tmp) = &self.remote_tmp {
            for h in hosts.iter_mut().filter(|h| h.settings.remote_tmp.is_none()) {
                h.settings.remote_tmp = Some(tmp.clone());
            }
        }
        hosts
    }

    /// Asks for the login password when told to.
    pub(super) fn login_password(&self) -> Result<Option<Arc<Secret>>, Error> {
        if !self.ask_pass {
            return Ok(None);
        }
        super::access::ask("SSH password: ", "--ask-pass").map(Some)
    }

    /// Checks the flags, and the ssh settings they make.
    pub(super) fn check(&self) -> Result<SshOptions, Error> {
        if self.forks == 0 {
            return Err(Error::Usage("--forks must be at least 1".into()));
        }
        if let Some(bin) = &self.relay_binary
            && !bin.is_file()
        {
            return Err(Error::Usage(format!(
                "{}: relay binary not found",
                bin.display()
            )));
        }
        if let Some(cfg) = &self.ssh_config
            && !cfg.is_file()
        {
            return Err(Error::Usage(format!(
                "{}: ssh config file not found",
                cfg.display()
            )));
        }
        Ok(SshOptions {
            config_file: self.ssh_config.clone(),
            kex: self.kex,
            connect_timeout: self.connect_timeout,
            host_key_checking: self.host_key_checking,
        })
    }
}
