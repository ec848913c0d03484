//! The POSIX sh that runs on hosts, and the lines it answers with.
//!
//! Every byte pushrun runs on a host is one of the `.sh` files beside this
//! module, included at build time without its comments (build.rs) and sent
//! over the channel behind a short fixed command line (`boot`).
//! Each script's header documents its arguments and its answer; this module
//! only reads those answers. The functions those scripts share are in
//! `remote/lib.sh`, which is prepended to each of them here.

/// A script of this directory as it is sent: without its comments (build.rs).
macro_rules! script {
    ($name:literal) => {
        include_str!(concat!(env!("OUT_DIR"), "/remote/", $name))
    };
}

mod boot;
mod line;
mod sudo;

pub use boot::{
    AfterFrame, FRAME_START, FrameScan, LoginNoise, Start, receive_request, run_request,
    skip_login, start, start_exec, start_gated, start_pty,
};
pub use line::{SUDO_PROMPT, SudoVia, plain_words, sh_quote, sudo_boot};
pub use sudo::{SudoCheck, parse_sudo_check};

/// Runs a command; ends its process group when stdin closes. Not a script
/// sent on stdin but the end of the `/bin/sh -c` line itself (login.sh and
/// exec.sh joined into one line by build.rs): see [`start_exec`].
pub const EXEC: &str = script!("exec.line");
/// Runs a plain command only if the session has a terminal.
pub const PTY: &str = concat!(script!("login.sh"), script!("pty.sh"));
/// Checks how sudo lets the login user become another (`--become`).
pub const BECOME: &str = script!("become.sh");
/// Prepares the host's pushrun dir and lists payload files missing or wrong.
pub const CHECK: &str = concat!(script!("lib.sh"), script!("check.sh"));
/// [`CHECK`] for a check that stays on its channel once it has answered
/// (`pushrun_linger`), to take the upload, run the payload and collect
/// there, or to collect after a run on a channel of its own (check.sh:
/// "Then").
pub const CHECK_LINGER: &str = concat!(
    script!("lib.sh"),
    script!("plain-out.sh"),
    script!("receivelib.sh"),
    script!("collectlib.sh"),
    script!("runlib.sh"),
    script!("check.sh")
);
/// Receives a tar.gz of payload files, verifies and installs them.
pub const RECEIVE: &str = concat!(
    script!("lib.sh"),
    script!("receivelib.sh"),
    script!("receive.sh")
);
/// Runs a payload's entry point in its run dir.
pub const RUN: &str = concat!(
    script!("lib.sh"),
    script!("pgroup.sh"),
    script!("runlib.sh"),
    script!("run.sh")
);
/// Receives one payload file, verifies and installs it: the upload where
/// a host has no tar or gzip (check.sh's `lacks`).
pub const PUT: &str = concat!(script!("lib.sh"), script!("put.sh"));
/// Sends `$PUSHRUN_OUT` back as a tar.gz (or, where the host has no tar or
/// gzip, as plain entries: `plain-out.sh`) and removes the run dir.
pub const COLLECT: &str = concat!(
    script!("lib.sh"),
    script!("plain-out.sh"),
    script!("collectlib.sh"),
    script!("collect.sh")
);
/// Removes pushrun's whole directory from a host.
pub const CLEAN: &str = concat!(script!("lib.sh"), script!("clean.sh"));
/// Puts files and directories, sent as a tar, at a destination (`pushrun copy`).
pub const COPY: &str = concat!(script!("copylib.sh"), script!("copy.sh"));
/// `pushrun copy` in steps, on a host without tar (copy.sh: `lacks tar`).
pub const COPY_PLAIN: &str = concat!(script!("copylib.sh"), script!("copy-plain.sh"));
/// Sends files and directories back as tar archives (`pushrun fetch`), or
/// as plain entries where the host has no tar.
pub const FETCH: &str = concat!(script!("plain-out.sh"), script!("fetch.sh"));

/// What `check.sh` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The host's pushrun dir, absolute.
    pub base: String,
    /// Manifest paths missing or wrong there.
    pub needed: Vec<String>,
    /// How many files were present and right.
    pub checked: usize,
    /// The tools the host has not (`tar`, `gzip`): files go one by one.
    pub lacks: Vec<String>,
    /// A lingering check may run the payload on its own channel (`runs`).
    pub runs: bool,
}

/// The `error …` line of a script's answer, if there is one.
pub fn error_line(stdout: &[u8]) -> Option<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .find_map(|l| l.strip_prefix("error ").map(str::to_string))
}

/// Reads `check.sh`'s answer; `Err` carries a message for the user.
pub fn parse_check(stdout: &[u8]) -> Result<CheckReport, String> {
    if let Some(e) = error_line(stdout) {
        return Err(e);
    }
    let text = std::str::from_utf8(stdout).map_err(|_| "check: answer is not UTF-8".to_string())?;
    let mut base = None;
    let mut needed = Vec::new();
    let mut checked = None;
    let mut lacks = Vec::new();
    let mut runs = false;
    for line in text.lines() {
        if let Some(b) = line.strip_prefix("base ") {
            base = Some(b.to_string());
        } else if let Some(p) = line.strip_prefix("need ") {
            needed.push(p.to_string());
        } else if let Some(t) = line.strip_prefix("lacks ") {
            lacks.push(t.to_string());
        } else if line == "runs" {
            runs = true;
        } else if let Some(n) = line.strip_prefix("checked ") {
            checked = n.trim().parse().ok();
        }
    }
    match (base, checked) {
        (Some(base), Some(checked)) => Ok(CheckReport {
            base,
            needed,
            checked,
            lacks,
            runs,
        }),
        _ => Err(format!("check: unexpected answer: {}", text.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_answer_lists_needed_files_with_spaces() {
        let r = parse_check(b"base /tmp/.pushrun-ops\nneed lib/a b.bin\nneed run\nchecked 3\n")
            .unwrap();
        assert_eq!(
            r,
            CheckReport {
                base: "/tmp/.pushrun-ops".into(),
                needed: vec!["lib/a b.bin".into(), "run".into()],
                checked: 3,
                lacks: vec![],
                runs: false,
            }
        );
        let r = parse_check(b"base /b\nlacks tar\nlacks gzip\nneed run\nchecked 0\n").unwrap();
        assert_eq!(r.lacks, ["tar", "gzip"]);
        assert!(!r.runs);
        assert!(parse_check(b"base /b\nruns\nchecked 1\n").unwrap().runs);
    }

    #[test]
    fn an_error_line_wins_and_a_cut_answer_is_an_error() {
        assert_eq!(
            parse_check(b"error /tmp/.pushrun-ops is a symlink: refusing to use it\n"),
            Err("/tmp/.pushrun-ops is a symlink: refusing to use it".into())
        );
        assert!(
            parse_check(b"base /x\nneed a\n")
                .unwrap_err()
                .starts_with("check: unexpected answer")
        );
    }
}
