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

impl Waves {
    /// The hosts `0..count`, in waves, in order.
    pub fn cut(&self, count: usize) -> Vec<Vec<crate::events::HostId>> {
        let ids: Vec<crate::events::HostId> = (0..count).collect();
        ids.chunks(self.size.max(1)).map(<[_]>::to_vec).collect()
    }

    /// Why no further wave starts once `failed` hosts have failed, if none does.
    pub fn stop(&self, failed: usize) -> Option<String> {
        let limit = self.max_fail?;
        (failed > limit).then(|| {
            format!("not started: --max-fail {limit} exceeded ({failed} failed in earlier waves)")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_are_cut_in_order_and_stop_beyond_max_fail() {
        let w = Waves {
            size: 2,
            max_fail: Some(0),
        };
        assert_eq!(w.cut(5), vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(w.stop(0), None);
        assert_eq!(
            w.stop(1).unwrap(),
            "not started: --max-fail 0 exceeded (1 failed in earlier waves)"
        );
        let open = Waves {
            size: 3,
            max_fail: None,
        };
        assert_eq!(open.stop(3), None);
    }
}
