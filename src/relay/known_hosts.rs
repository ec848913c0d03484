//! The known_hosts lines a relay needs: those of the hosts behind it, taken
//! from the files the initiator's own ssh reads, so that the relay checks
//! host keys as strictly as the initiator would.
//!
//! The files are the ones `ssh -G` names for the first host of the subtree
//! (one ssh process per relay, not one per host). A line goes with the plan
//! when one of its host patterns matches a host of the subtree (`addr`, or
//! `[addr]:port` off port 22, or its `HostKeyAlias`); hashed lines
//! (`|1|…`) and `@revoked` lines always go, since they cannot be told apart
//! without the host name's HMAC and say nothing about other hosts.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::inventory::{Host, glob_match};

/// Where known_hosts lines come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The files the initiator's ssh uses (`ssh -G`).
    Ssh,
    /// One file: on a relay, the lines that came with its plan.
    File(PathBuf),
}

/// The known_hosts lines for `hosts`, as one text.
pub(super) async fn lines_for(source: &Source, config: &Path, hosts: &[&Host]) -> String {
    let Some(first) = hosts.first() else {
        return String::new();
    };
    let (files, default_port) = match source {
        Source::File(path) => (vec![path.clone()], None),
        Source::Ssh => ssh_files(config, first).await,
    };
    let names: Vec<String> = hosts.iter().map(|h| known_name(h, default_port)).collect();
    let mut text = String::new();
    for file in files {
        let Ok(content) = tokio::fs::read_to_string(&file).await else {
            continue;
        };
        for line in content.lines() {
            if wanted(line, &names) {
                text.push_str(line.trim());
                text.push('\n');
            }
        }
    }
    text
}

/// The name ssh looks a host up by in known_hosts.
fn known_name(host: &Host, default_port: Option<u16>) -> String {
    let alias = host.settings.ssh_options.iter().find_map(|o| {
        o.split_once('=')
            .filter(|(k, _)| k.eq_ignore_ascii_case("HostKeyAlias"))
    });
    if let Some((_, alias)) = alias {
        return alias.to_string();
    }
    match host.settings.port.or(default_port) {
        Some(port) if port != 22 => format!("[{}]:{port}", host.address()),
        _ => host.address().to_string(),
    }
}

/// Whether a known_hosts line is for one of `names` (or cannot be told).
fn wanted(line: &str, names: &[String]) -> bool {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return false;
    }
    let mut fields = line.split_whitespace();
    let mut patterns = fields.next().unwrap_or_default();
    if patterns == "@revoked" {
        return true;
    }
    if patterns.starts_with('@') {
        patterns = fields.next().unwrap_or_default();
    }
    if patterns.starts_with("|1|") {
        return true;
    }
    names.iter().any(|n| matches_list(patterns, n))
}

/// ssh's pattern-list rule: a negated match excludes, else any match includes.
fn matches_list(patterns: &str, name: &str) -> bool {
    let mut hit = false;
    for p in patterns.split(',') {
        match p.strip_prefix('!') {
            Some(neg) if glob_match(neg, name) => return false,
            Some(_) => {}
            None => hit |= glob_match(p, name),
        }
    }
    hit
}

/// The known_hosts files and the port ssh would use for `host`.
async fn ssh_files(config: &Path, host: &Host) -> (Vec<PathBuf>, Option<u16>) {
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.arg("-G").arg("-F").arg(config);
    for opt in &host.settings.ssh_options {
        cmd.arg("-o").arg(opt);
    }
    if let Some(port) = host.settings.port {
        cmd.arg("-p").arg(port.to_string());
    }
    cmd.arg("--").arg(host.address());
    cmd.stdin(Stdio::null()).stderr(Stdio::null());
    let out = match cmd.output().await {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => String::new(),
    };
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut files = Vec::new();
    let mut port = None;
    for line in out.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        match key {
            "userknownhostsfile" | "globalknownhostsfile" => {
                for f in value.split_whitespace() {
                    files.push(match (f.strip_prefix("~/"), &home) {
                        (Some(rest), Some(home)) => home.join(rest),
                        _ => PathBuf::from(f),
                    });
                }
            }
            "port" => port = value.trim().parse().ok(),
            _ => {}
        }
    }
    (files, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_picked_by_host_port_and_pattern() {
        let names = vec!["[127.1.2.3]:2022".to_string(), "10.0.0.9".to_string()];
        assert!(wanted("[127.1.2.3]:2022 ssh-ed25519 AAAA", &names));
        assert!(!wanted("[127.1.2.4]:2022 ssh-ed25519 AAAA", &names));
        assert!(!wanted("127.1.2.3 ssh-ed25519 AAAA", &names));
        assert!(wanted("db1,10.0.0.9 ssh-ed25519 AAAA", &names));
        assert!(wanted("10.0.0.* ssh-ed25519 AAAA", &names));
        assert!(!wanted("10.0.0.*,!10.0.0.9 ssh-ed25519 AAAA", &names));
        assert!(wanted("@cert-authority 10.0.* ssh-ed25519 AAAA", &names));
        assert!(wanted("|1|c2FsdA==|aGFzaA== ssh-ed25519 AAAA", &names));
        assert!(wanted("@revoked * ssh-ed25519 AAAA", &names));
        assert!(!wanted("# [127.1.2.3]:2022 ssh-ed25519 AAAA", &names));
    }
}
