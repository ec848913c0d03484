//! `pushrun relay`: the relay's side. It reads one plan on stdin, runs it
//! with the same [`run`] as the initiator, and frames every event up on
//! stdout; the end of stdin (or a Cancel frame) cancels the run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use super::{KnownHostsSource, Relaying, run, wire};
use crate::events::{Event, HostOutcome, Status, Timings};
use crate::fleet::{Job, PayloadJob, PtyMode, RunSpec};
use crate::inventory::Host;
use crate::payload::Payload;
use crate::session::{ControlDir, HostKeyChecking, Kex, SshOptions};

/// `pushrun relay`: reads a plan on stdin, runs it, writes framed events to
/// stdout. Returns the exit status.
pub fn serve() -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pushrun relay: cannot start: {e}");
            return 2;
        }
    };
    let code = runtime.block_on(serve_plan());
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

async fn serve_plan() -> u8 {
    let mut input = tokio::io::stdin();
    let mut output = tokio::io::BufWriter::with_capacity(256 * 1024, tokio::io::stdout());
    if wire::write_frame(
        &mut output,
        &wire::Up::Hello {
            version: wire::VERSION,
        },
    )
    .await
    .is_err()
        || output.flush().await.is_err()
    {
        return 2;
    }
    let plan = match tokio::time::timeout(
        Duration::from_secs(60),
        wire::read_frame::<_, wire::Down>(&mut input),
    )
    .await
    {
        Ok(Ok(Some((wire::Down::Plan(p), _)))) => p,
        Ok(Ok(_)) => {
            eprintln!("pushrun relay: no plan on stdin");
            return 2;
        }
        Ok(Err(e)) => {
            eprintln!("pushrun relay: {e}");
            return 2;
        }
        Err(_) => {
            eprintln!("pushrun relay: no plan within 60s");
            return 2;
        }
    };
    if plan.version != wire::VERSION {
        eprintln!(
            "pushrun relay: plan of protocol {}, this relay speaks {}",
            plan.version,
            wire::VERSION
        );
        return 2;
    }
    let dir = match ControlDir::create() {
        Ok(d) => Arc::new(d),
        Err(e) => {
            eprintln!("pushrun relay: cannot create a control directory: {e}");
            return 2;
        }
    };
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let (converged_tx, converged_rx) = watch::channel(false);
    // Cancel on a Cancel frame, or when stdin ends (the initiator went away);
    // converge when the initiator says the whole run has.
    tokio::spawn(async move {
        loop {
            match wire::read_frame::<_, wire::Down>(&mut input).await {
                Ok(Some((wire::Down::Cancel, _))) | Ok(None) | Err(_) => break,
                Ok(Some((wire::Down::Converge, _))) => {
                    let _ = converged_tx.send(true);
                }
                Ok(Some(_)) => continue,
            }
        }
        let _ = cancel_tx.send(true);
    });
    let (tx, mut rx) = mpsc::channel(1024);
    let path = plan.path.clone();
    let n = plan.hosts.len();
    let runner = async {
        // Hashing the staged payload again can take a while: off the event loop.
        let known = dir.path().join("known_hosts");
        let prepared = tokio::task::spawn_blocking(move || prepare(*plan, known))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match prepared {
            Ok((hosts, relaying, spec)) => {
                run(
                    hosts,
                    relaying,
                    spec,
                    dir.clone(),
                    tx,
                    cancel_rx,
                    converged_rx,
                )
                .await
            }
            Err(why) => {
                eprintln!("pushrun relay {path}: {why}");
                for id in 0..n {
                    let o = HostOutcome::without_exit(
                        Status::Failed,
                        format!("relay {path}: {why}"),
                        Timings::default(),
                    );
                    let _ = tx.send(Event::Finished(id, o)).await;
                }
                Vec::new()
            }
        }
    };
    // Frames go up as events come; a write error means the initiator is
    // gone: the run goes on to its end (its hosts are stopped by then).
    // Between events, a sign of life (see `wire::ALIVE_EVERY`).
    let writer = async {
        let mut ok = true;
        let mut alive = tokio::time::interval(wire::ALIVE_EVERY);
        loop {
            let frame = tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => wire::Up::from_event(ev),
                    None => break,
                },
                _ = alive.tick() => wire::Up::Alive,
            };
            ok = ok && wire::write_frame(&mut output, &frame).await.is_ok();
            if rx.is_empty() {
                ok = ok && output.flush().await.is_ok();
            }
        }
        ok
    };
    let (reports, ok) = tokio::join!(runner, writer);
    let end = async {
        wire::write_frame(&mut output, &wire::Up::Relays { reports }).await?;
        wire::write_frame(&mut output, &wire::Up::Done).await?;
        output.flush().await
    };
    let ok = ok && end.await.is_ok();
    dir.remove();
    if ok { 0 } else { 1 }
}

/// The job hosts, the relay settings and the run spec of a plan.
type Prepared = (Arc<Vec<Host>>, Arc<Relaying>, Arc<RunSpec>);

/// The plan's hosts, relay settings and run spec, as this relay uses them.
fn prepare(plan: wire::Plan, known: PathBuf) -> Result<Prepared, String> {
    let parse = |what: &str, word: &str| format!("bad {what} {word:?} in the plan");
    let pty = PtyMode::from_str(&plan.pty, true).map_err(|_| parse("pty", &plan.pty))?;
    let kex = Kex::from_str(&plan.kex, true).map_err(|_| parse("kex", &plan.kex))?;
    let checking = match &plan.host_key_checking {
        Some(w) => HostKeyChecking::from_str(w, true).map_err(|_| parse("host key checking", w))?,
        // Strict: the lines that came with the plan are all there is to trust.
        None => HostKeyChecking::Strict,
    };
    std::fs::write(&known, &plan.known_hosts)
        .map_err(|e| format!("cannot write {}: {e}", known.display()))?;
    let option = format!("UserKnownHostsFile={}", known.display());
    let fix = |mut h: Host| {
        h.settings.ssh_options.insert(0, option.clone());
        h
    };
    let hosts: Vec<Host> = plan.hosts.into_iter().map(fix).collect();
    let hops: Vec<Host> = plan.hops.into_iter().map(fix).collect();
    let job = match plan.job {
        wire::Job::Command { command } => Job::Command(command),
        wire::Job::Clean => Job::Clean,
        wire::Job::Payload {
            dir: payload_dir,
            digest,
            args,
            cache,
        } => {
            // The staged copy, hashed again here: it must be what the
            // initiator sent.
            let payload = Payload::load(std::path::Path::new(&payload_dir))
                .map_err(|e| format!("the staged payload: {e}"))?;
            if payload.digest() != digest {
                return Err(format!(
                    "the staged payload in {payload_dir} is not the initiator's (digest {} instead of {digest})",
                    payload.digest()
                ));
            }
            Job::Payload(Arc::new(PayloadJob::new(
                payload,
                args,
                cache,
                plan.run_id.clone(),
            )))
        }
    };
    let spec = RunSpec {
        job,
        timeout: plan.timeout_ms.map(Duration::from_millis),
        pty,
        ssh: SshOptions {
            config_file: None,
            kex,
            connect_timeout: Duration::from_millis(plan.connect_timeout_ms),
            host_key_checking: Some(checking),
        },
        forks: plan.forks,
        access: plan
            .access
            .into_iter()
            .map(wire::Access::into_access)
            .collect(),
        converge: plan.converge_ms.map(Duration::from_millis),
        repeat: plan.repeat_ms.map(Duration::from_millis),
        watch: None,
    };
    let relaying = Relaying::new(hops, None, plan.run_id, KnownHostsSource::File(known));
    Ok((Arc::new(hosts), Arc::new(relaying), Arc::new(spec)))
}
