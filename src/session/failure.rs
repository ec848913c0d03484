//! Why a connection failed, in one line for the user, from what ssh logged.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use thiserror::Error;

use tokio::process::Command;

use super::{SshOptions, host_args};
use crate::inventory::Host;

/// Why a host could not be connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Nothing listens there.
    Refused,
    /// No answer within the connect timeout.
    TimedOut,
    /// The server refused our credentials.
    Authentication,
    /// The host key is unknown (under strict checking).
    HostKey,
    /// The host key differs from the one in known_hosts.
    HostKeyChanged,
    /// The name does not resolve.
    Resolve,
    /// Anything else ssh reported.
    Other,
}

/// A failed connection, with ssh's own words.
#[derive(Debug, Error)]
#[error("{message}")]
pub struct ConnectError {
    /// The kind of failure.
    pub kind: ConnectFailure,
    /// One line for the user.
    pub message: String,
}

impl ConnectError {
    pub(super) fn new(kind: ConnectFailure, message: impl Into<String>) -> Self {
        ConnectError {
            kind,
            message: message.into(),
        }
    }
}

/// Turns the master's log into one line for the user.
pub(super) fn classify_ssh_failure(log: &str) -> ConnectError {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
        .collect();
    let all = lines.join(" ");
    let last = lines
        .last()
        .copied()
        .unwrap_or("ssh exited without a message");
    let last = last.strip_prefix("ssh: ").unwrap_or(last);
    use ConnectFailure::*;
    let (kind, message) = if all.contains("Connection refused") {
        (Refused, "connection refused".to_string())
    } else if all.contains("timed out") {
        (TimedOut, "connection timed out".to_string())
    } else if all.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        return changed_key_error(log);
    } else if all.contains("Host key verification failed") {
        (
            HostKey,
            "unknown host key, and host key checking is strict: if it is the host's, \
             run with --host-key-checking accept-new"
                .to_string(),
        )
    } else if all.contains("Permission denied") || all.contains("Too many authentication failures")
    {
        (Authentication, format!("authentication failed: {last}"))
    } else if all.contains("Could not resolve hostname") {
        (Resolve, format!("cannot resolve host name: {last}"))
    } else {
        (Other, last.to_string())
    };
    ConnectError::new(kind, message)
}

/// Why an established connection ended, from the master's log: ssh's last
/// word on it ("Connection to … closed by remote host.", "Timeout, server …
/// not responding."), if it said one.
pub(super) fn lost_reason(log: &str) -> Option<String> {
    log.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
        .map(|l| {
            l.strip_prefix("ssh: ")
                .unwrap_or(l)
                .trim_end_matches('.')
                .to_string()
        })
}

/// A changed host key, with ssh's warning: the key it got and where the
/// one it expected is.
pub(super) fn changed_key_error(log: &str) -> ConnectError {
    let lines: Vec<&str> = log.lines().map(str::trim).collect();
    let got = lines
        .iter()
        .position(|l| l.starts_with("The fingerprint for the"))
        .and_then(|i| {
            let kind = lines[i]
                .strip_prefix("The fingerprint for the ")
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or("");
            lines.get(i + 1).map(|f| format!("{kind} {f}"))
        });
    let offending = lines
        .iter()
        .find_map(|l| l.strip_prefix("Offending "))
        .map(|l| l.to_string());
    let mut message = String::from(
        "WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED (someone may be intercepting the \
         connection, or the host was reinstalled): refused",
    );
    if let Some(got) = got {
        message.push_str(&format!("; key sent: {got}"));
    }
    if let Some(offending) = offending {
        message.push_str(&format!("; expected: {offending}"));
    }
    message.push_str("; if the change is expected, remove the old key (ssh-keygen -R)");
    ConnectError::new(ConnectFailure::HostKeyChanged, message)
}

/// An unknown host key under strict checking, with the key's fingerprint:
/// ssh only shows it when debugging, so connect once more that way (the
/// same options, so the same route) and read it from there. Without it,
/// `e` as it was.
pub(super) async fn with_fingerprint(
    e: ConnectError,
    host: &Host,
    config_file: &Path,
    opts: &SshOptions,
) -> ConnectError {
    let mut cmd = Command::new("ssh");
    cmd.args(["-o", "LogLevel=DEBUG1", "-o", "BatchMode=yes"])
        .args(host_args(host, config_file, opts))
        .arg("-N")
        .arg("--")
        .arg(host.address());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let limit = opts.connect_timeout + Duration::from_secs(5);
    let text = match tokio::time::timeout(limit, cmd.output()).await {
        Ok(Ok(out)) => String::from_utf8_lossy(&out.stderr).into_owned(),
        _ => String::new(),
    };
    let key = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("debug1: Server host key: "))
        .map(|k| k.trim().to_string());
    match key {
        Some(key) => ConnectError::new(
            ConnectFailure::HostKey,
            format!(
                "unknown host key {key}, and host key checking is strict: if that is the \
                 host's key, run with --host-key-checking accept-new (or add it to known_hosts)"
            ),
        ),
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_common_ssh_failures() {
        let c = |s: &str| classify_ssh_failure(s).kind;
        assert_eq!(
            c("ssh: connect to host 127.0.0.9 port 22: Connection refused\n"),
            ConnectFailure::Refused
        );
        assert_eq!(
            c(
                "Connection timed out during banner exchange\nConnection to 1.2.3.4 port 22 timed out\n"
            ),
            ConnectFailure::TimedOut
        );
        assert_eq!(
            c("fleet@127.0.0.1: Permission denied (publickey).\n"),
            ConnectFailure::Authentication
        );
        assert_eq!(
            c(
                "No ED25519 host key is known for x and you have requested strict checking.\nHost key verification failed.\n"
            ),
            ConnectFailure::HostKey
        );
        let changed = classify_ssh_failure(
            "@@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
             The fingerprint for the ED25519 key sent by the remote host is\n\
             SHA256:abc.\nOffending ED25519 key in /k/known_hosts:3\n\
             Host key verification failed.\n",
        );
        assert_eq!(changed.kind, ConnectFailure::HostKeyChanged);
        assert!(
            changed.message.contains("key sent: ED25519 SHA256:abc.")
                && changed
                    .message
                    .contains("expected: ED25519 key in /k/known_hosts:3"),
            "{}",
            changed.message
        );
        assert_eq!(
            c(
                "Warning: Permanently added 'x' (ED25519) to the list of known hosts.\nsomething odd\n"
            ),
            ConnectFailure::Other
        );
        assert_eq!(
            classify_ssh_failure("Warning: Permanently added 'x'.\nsomething odd\n").message,
            "something odd"
        );
    }
}
