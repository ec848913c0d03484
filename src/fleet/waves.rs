//! Rolling runs: hosts in waves of `--batch`, and no further wave once
//! more than `--max-fail` hosts have failed (Ansible's `serial` and
//! `max_fail_percentage`). A wave starts only when the one before it has
//! ended, so a bad change reaches one wave, not the fleet.

/// How a rolling run is cut up, counted in hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waves {
    /// Hosts per wave (at most `--forks` of them at a time).
    pub size: usize,
    /// Start no further wave once more than this many hosts failed
    /// (`Some(0)`: stop after the first wave with a failure).
    pub max_fail: Option<usize>,
}
