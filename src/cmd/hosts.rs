//! `pushrun hosts`: the selection as pushrun sees it, each host with the
//! settings it will be reached with, in its place in the relay tree. It
//! contacts no host: a way to check an inventory and a `--limit` first.
//! Hosts with a connection a run left up (`--persist`) say `connected`.

use std::io::Write;

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
    /// The hosts as one JSON array on stdout, each with its merged
    /// settings and groups (for scripts, and for jq).
    #[arg(long)]
    pub json: bool,
}

/// Runs `pushrun hosts`: one line per host (or a JSON array) on stdout,
/// their folded list on stderr.
pub fn run(args: &HostsArgs) -> Result<Exit, Error> {
    let (hosts, hops) = args.select.select_with_hops()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        serde_json::to_writer(&mut out, &hosts).map_err(|e| Error::Output(e.into()))?;
        writeln!(out).map_err(Error::Output)?;
    } else {
        // Without relays the tree is flat: print it in one pass.
        let connected = super::disconnect::connected();
        let line = |h: &Host| {
            let mut line = describe(h);
            if connected.contains(&h.name) {
                line.push_str(" connected");
            }
            line
        };
        let flat = hops.is_empty() && hosts.iter().all(|h| h.settings.via.is_none());
        let lines: Box<dyn Iterator<Item = String>> = if flat {
            Box::new(hosts.iter().map(line))
        } else {
            Box::new(relay::tree(&hosts, &hops, line).into_iter())
        };
        for line in lines {
            writeln!(out, "{line}").map_err(Error::Output)?;
        }
    }
    out.flush().map_err(Error::Output)?;
    drop(out);
    drop(hops);
    let names: Vec<String> = hosts.into_iter().map(|h| h.name).collect();
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
