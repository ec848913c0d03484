//! The `pushrun` command.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::sync::{mpsc, watch};

use pushrun::cli::{Cli, Command, Plan, SelectArgs, UsageError};
use pushrun::fleet::Job;
use pushrun::relay::{self, KnownHostsSource, Relaying};
use pushrun::report::{Reporter, RunInfo};
use pushrun::session::{ControlDir, HostKeyChecking};
use pushrun::{fleet, inventory::hostlist};

fn main() -> ExitCode {
    // Started by ssh as its askpass program: answer and go.
    if let Some(code) = pushrun::auth::askpass_main() {
        return ExitCode::from(code as u8);
    }
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Exec(args) => run(args.plan()),
        Command::Clean(args) => run(args.plan()),
        Command::Hosts(args) => list_hosts(&args),
        Command::Relay => relay::serve(),
    };
    ExitCode::from(code)
}

fn fail(message: impl std::fmt::Display, code: u8) -> u8 {
    eprintln!("pushrun: {message}");
    code
}

fn list_hosts(args: &SelectArgs) -> u8 {
    let (hosts, hops) = match args.select_with_hops() {
        Ok(h) => h,
        Err(e) => return fail(e, 2),
    };
    let line = |h: &pushrun::inventory::Host| {
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
    };
    for line in relay::tree(&hosts, &hops, line) {
        println!("{line}");
    }
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    eprintln!("pushrun: {} hosts: {}", names.len(), hostlist::fold(&names));
    0
}

fn run(plan: Result<Plan, UsageError>) -> u8 {
    let plan = match plan {
        Ok(p) => p,
        Err(e) => return fail(e, 2),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start: {e}"), 2),
    };
    let dir = match ControlDir::create() {
        Ok(d) => Arc::new(d),
        Err(e) => return fail(format!("cannot create a control directory: {e}"), 2),
    };
    if plan.spec.ssh.host_key_checking == Some(HostKeyChecking::Off) {
        eprintln!(
            "pushrun: warning: host key checking is off: connections can be intercepted unnoticed"
        );
    }
    let names: Vec<String> = plan.hosts.iter().map(|h| h.name.clone()).collect();
    let job = match &plan.spec.job {
        Job::Command(c) => serde_json::json!({"command": c}),
        Job::Payload(p) => serde_json::json!({
            "payload": p.payload.name(),
            "digest": p.payload.digest(),
            "entry": p.payload.entry(),
            "args": p.args,
            "cache": p.cache,
        }),
        Job::Clean => serde_json::json!({"clean": true}),
    };
    let info = RunInfo {
        run_id: plan.run_id.clone(),
        job,
        results: plan.results.clone(),
        log: plan.spec.converge.is_some(),
        paths: relay::paths(&plan.hosts, &plan.hops),
    };
    let mut reporter = match Reporter::new(plan.output, names, info) {
        Ok(r) => r,
        Err(e) => {
            let dir = plan.results.as_deref().unwrap_or(std::path::Path::new("."));
            return fail(
                format!("{}: cannot create the results dir: {e}", dir.display()),
                2,
            );
        }
    };
    let hosts = Arc::new(plan.hosts);
    let spec = Arc::new(plan.spec);
    let relaying = Arc::new(Relaying::new(
        plan.hops,
        plan.relay_binary,
        plan.run_id,
        KnownHostsSource::Ssh,
    ));

    let code = runtime.block_on(async move {
        let (cancel_tx, mut cancel_rx) = watch::channel(false);
        let signal_dir = dir.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            let _ = cancel_tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                // A second Ctrl-C: quit now. Masters die with us (PDEATHSIG).
                signal_dir.remove();
                std::process::exit(130);
            }
            std::future::pending::<()>().await;
        });
        let (tx, mut rx) = mpsc::channel(1024);
        // --converged-timeout: every event of the run, relays' included,
        // passes by the one place that decides when the run has converged.
        let (converged_tx, converged_rx) = watch::channel(false);
        let tx = match spec.converge {
            Some(quiet) => {
                let (inner_tx, inner_rx) = mpsc::channel(1024);
                let repeating = spec.repeat.is_some();
                tokio::spawn(fleet::converge(
                    inner_rx,
                    tx,
                    quiet,
                    repeating,
                    converged_tx,
                ));
                inner_tx
            }
            None => tx,
        };
        let run = tokio::spawn(relay::run(
            hosts,
            relaying,
            spec,
            dir.clone(),
            tx,
            cancel_rx.clone(),
            converged_rx,
        ));
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut watching = true;
        let result: std::io::Result<()> = async {
            loop {
                tokio::select! {
                    ev = rx.recv() => {
                        let Some(ev) = ev else { break };
                        reporter.handle(ev)?;
                        while let Ok(ev) = rx.try_recv() {
                            reporter.handle(ev)?;
                        }
                        reporter.flush()?;
                    }
                    _ = tick.tick() => reporter.flush()?,
                    changed = cancel_rx.changed(), if watching => {
                        watching = changed.is_ok();
                        if *cancel_rx.borrow() {
                            reporter.interrupted()?;
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Ok(reports) = run.await {
            reporter.relays(&reports);
        }
        dir.remove();
        match result.and_then(|()| reporter.finish()) {
            Ok(summary) => summary.exit_status.code(),
            // stdout closed (e.g. `| head`): the run itself is done.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 1,
            Err(e) => fail(format!("cannot write output: {e}"), 1),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}
