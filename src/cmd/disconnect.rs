//! `pushrun disconnect`: ends the connections that runs left up
//! (`--persist`) now, instead of when they have been idle long enough.
//! Without a selection it ends every one of this user's; with one, those
//! of the selected hosts (matched by inventory name or address). It needs
//! no flag of the runs that made them: the per-user directory says which
//! host each connection is for.

use std::collections::HashSet;

use clap::Args;

use super::SelectArgs;
use crate::error::{Error, Exit};
use crate::inventory::hostlist;
use crate::session::PersistDir;
use crate::session::persist::Persisted;

/// Flags of `pushrun disconnect`.
#[derive(Debug, Args)]
pub struct DisconnectArgs {
    /// Which hosts (default: every persisted connection).
    #[command(flatten)]
    pub select: SelectArgs,
}

/// Runs `pushrun disconnect`: the hosts whose connections ended, on stderr.
pub fn run(args: &DisconnectArgs) -> Result<Exit, Error> {
    let chosen = chosen(args)?;
    let dir = PersistDir::open().map_err(Error::ControlDir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let mut ended = Vec::new();
    for conn in dir.list() {
        if chosen
            .as_ref()
            .is_some_and(|c| !c.contains(&conn.name) && !c.contains(&conn.address))
        {
            continue;
        }
        if runtime.block_on(conn.disconnect()) {
            ended.push(conn.name);
        }
    }
    dir.sweep_locks();
    ended.sort();
    ended.dedup();
    eprintln!(
        "pushrun: disconnected {} hosts{}{}",
        ended.len(),
        if ended.is_empty() { "" } else { ": " },
        hostlist::fold(&ended)
    );
    Ok(Exit::Ok)
}

/// The names and addresses of the selected hosts; `None`: every host.
fn chosen(args: &DisconnectArgs) -> Result<Option<HashSet<String>>, Error> {
    let s = &args.select;
    if s.hosts.is_none() && s.wlist.is_empty() && s.limit.is_empty() {
        return Ok(None);
    }
    let hosts = s.select()?;
    Ok(Some(
        hosts
            .iter()
            .flat_map(|h| [h.name.clone(), h.address().to_string()])
            .collect(),
    ))
}

/// The names of the hosts with a live persisted connection (for
/// `pushrun hosts`); empty when there is no usable directory.
pub fn connected() -> HashSet<String> {
    let Ok(dir) = PersistDir::open() else {
        return HashSet::new();
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return HashSet::new();
    };
    let live = |c: &Persisted| runtime.block_on(c.is_live());
    dir.list()
        .into_iter()
        .filter(|c| live(c))
        .map(|c| c.name)
        .collect()
}
