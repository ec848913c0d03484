//! `--batch` and `--max-fail`: a rolling run's flags, for `exec` and `copy`.

use clap::Args;

use crate::error::Error;
use crate::fleet::Waves;
use crate::inventory::Host;

/// How hosts are rolled through, wave by wave.
#[derive(Debug, Args)]
pub struct WaveArgs {
    /// Run the hosts in waves of N hosts (or N% of them), each wave at most
    /// --forks at a time, the next one starting when the last has ended.
    #[arg(long, value_name = "N|N%", value_parser = parse_count)]
    pub batch: Option<Count>,
    /// With --batch: start no further wave once more than N hosts (or N% of
    /// them) have failed; `0` stops after the first wave with a failure.
    /// Hosts never started are `skipped` (exit status 1).
    #[arg(long, value_name = "N|N%", value_parser = parse_count, requires = "batch")]
    pub max_fail: Option<Count>,
}

/// A number of hosts, or a share of the selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// This many hosts.
    Hosts(usize),
    /// This percentage of the selected hosts.
    Percent(u8),
}

impl Count {
    /// The number of hosts out of `total`; a share rounds down, `at_least`
    /// bounds it below.
    fn of(self, total: usize, at_least: usize) -> usize {
        let n = match self {
            Count::Hosts(n) => n,
            Count::Percent(p) => total * usize::from(p) / 100,
        };
        n.max(at_least)
    }
}

/// `N` or `N%` (0 to 100).
fn parse_count(s: &str) -> Result<Count, String> {
    match s.strip_suffix('%') {
        Some(p) => match p.parse::<u8>() {
            Ok(p) if p <= 100 => Ok(Count::Percent(p)),
            _ => Err(format!("`{s}`: a percentage is 0% to 100%")),
        },
        None => s
            .parse()
            .map(Count::Hosts)
            .map_err(|_| format!("`{s}` is not a number of hosts (N or N%)")),
    }
}

impl WaveArgs {
    /// The waves for `hosts`, if the flags ask for them.
    pub(super) fn waves(&self, hosts: &[Host]) -> Result<Option<Waves>, Error> {
        let Some(batch) = self.batch else {
            return Ok(None);
        };
        if batch == Count::Hosts(0) {
            return Err(Error::Usage("--batch must be at least 1 host".into()));
        }
        Ok(Some(Waves {
            size: batch.of(hosts.len(), 1),
            max_fail: self.max_fail.map(|m| m.of(hosts.len(), 0)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_hosts_or_shares() {
        assert_eq!(parse_count("5"), Ok(Count::Hosts(5)));
        assert_eq!(parse_count("25%"), Ok(Count::Percent(25)));
        assert!(parse_count("101%").is_err());
        assert!(parse_count("five").is_err());
        assert_eq!(Count::Percent(25).of(20, 1), 5);
        assert_eq!(Count::Percent(1).of(20, 1), 1);
        assert_eq!(Count::Percent(10).of(5, 0), 0);
    }
}
