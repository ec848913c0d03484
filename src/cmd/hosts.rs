//! `pushrun hosts`: the selection as pushrun sees it, each host with the
//! settings it will be reached with, in its place in the relay tree. It
//! contacts no host: a way to check an inventory and a `--limit` first.

use std::io::Write as _;

use clap::Args;

use super::SelectArgs;
use crate::error::{Error, Exit};
use crate::inventory::Host;
use crate::inventory::hostlist;
use crate::relay;

/// Flags of `pushrun hosts`.
#[derive(Debug, Args)]
pub struct HostsArgs {
    /// Which hosts.
    #[command(flatten)]
    pub select: SelectArgs,
}

/// Runs `pushrun hosts`: one line per host on stdout, their folded list
/// on stderr.
pub fn run(args: &HostsArgs) -> Result<Exit, Error> {
    let (hosts, hops) = args.select.select_with_hops()?;
    // one write per buffer, not per host: a million hosts are a million lines
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    relay::tree_each(&hosts, &hops, describe, |line| {
        let _ = writeln!(out, "{line}");
    });
    let _ = out.flush();
    drop(out);
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    eprintln!("pushrun: {} hosts: {}", names.len(), hostlist::fold(&names));
    Ok(Exit::Ok)
}

/// A host and the settings it has: `name address=… user=… groups=…`.
fn describe(h: &Host) -> String {
    let s = &h.settings;
    let mut line = h.name.clone();
    if h.address() != h.name {
        line.push_str(&format!(" address={}", h.address()));
    }
    if let Some(u) = &s.user {
        line.push_str(&format!(" user={u}"));
    }
    if let Some(p) = s.port {
        line.push_str(&format!(" port={p}"));
    }
    if let Some(j) = &s.jump {
        line.push_str(&format!(" jump={j}"));
    }
    if let Some(v) = &s.password_env {
        line.push_str(&format!(" password_env={v}"));
    }
    if s.become_ == Some(true) {
        let user = s.become_user.as_deref().unwrap_or("root");
        line.push_str(&format!(" become={user}"));
    }
    if !h.groups.is_empty() {
        line.push_str(&format!(" groups={}", h.groups.join(",")));
    }
    line
}
