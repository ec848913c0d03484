//! A payload's run on one host: stage (check the cache, send what is
//! missing or wrong), run the entry point, collect `$PUSHRUN_OUT`, clean
//! the run dir — again and again under `--repeat` and `--watch`.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::{PayloadJob, RunSpec, SpooledBody, error_chain, raised, reloaded, script_failure};

use super::output::serve_tunnel;
use crate::events::{Event, HostId, HostOutcome, StageStats, Status, Stream, Timings};
use crate::inventory::Host;
use crate::remote::{self};
use sha2::{Digest, Sha256};

use crate::session::{Continued, Lingering, ScriptOutput, Session, exit_code};

use super::collect::{CollectError, Here, Sink, Source, collect, size_text};
use super::command::{CommandEnd, HashingReader, supervise};
use super::converge::busy;
use super::ended::EndMarked;
use super::host::{HostTask, Launch};
use super::output::read_lines;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One payload run on a host, as the loop of --repeat and --watch sees it.
pub(super) struct PayloadRun {
    pub(super) outcome: HostOutcome,
    /// Its stdout and results, digested (when looping and collected).
    pub(super) digest: Option<[u8; 32]>,
    /// Stopped to run a new version of the payload (--watch).
    pub(super) restarted: bool,
}

pub(crate) enum StageError {
    Cancelled,
    Converged,
    Lost(String),
    Failed {
        reason: String,
        base: Option<String>,
    },
}

impl StageError {
    /// A script that failed because the connection went away (sshd
    /// killed, the network gone) is a lost connection, with ssh's reason.
    async fn or_lost(self, session: &Session) -> StageError {
        match self {
            StageError::Failed { reason, base } => match session.lost().await {
                Some(why) => StageError::Lost(why),
                None => StageError::Failed { reason, base },
            },
            other => other,
        }
    }

    /// The host's status and the reason shown, for staging `what` on a
    /// job host (`relay` None) or on a relay.
    pub(crate) fn status_reason(self, relay: Option<&str>, what: &str) -> (Status, String) {
        let on = relay.map(|r| format!(" on relay {r}")).unwrap_or_default();
        let prefix = relay.map(|r| format!("relay {r}: ")).unwrap_or_default();
        match self {
            StageError::Cancelled => (Status::Cancelled, format!("interrupted while staging{on}")),
            StageError::Converged => (
                Status::Stopped,
                format!("the run converged while staging{on}"),
            ),
            StageError::Lost(why) => (
                Status::Unreachable,
                format!("{prefix}connection lost: {why}"),
            ),
            StageError::Failed { reason, .. } if relay.is_some() => (
                Status::Failed,
                format!("{prefix}staging the {what}: {reason}"),
            ),
            StageError::Failed { reason, .. } => (Status::Failed, format!("stage: {reason}")),
        }
    }
}

/// Checks the host's copy of the payload and sends what is missing or wrong.
/// Returns the host's pushrun dir and the payload's dir there.
pub(crate) async fn stage(
    session: &Session,
    host: &Host,
    job: &Arc<PayloadJob>,
    stats: &mut StageStats,
) -> Result<(String, String), StageError> {
    let staged = stage_noting_base(session, host, job, stats, &mut None, false).await?;
    Ok((staged.base, staged.payload_dir))
}

/// A payload staged on a host.
struct Staged<'s> {
    /// The host's pushrun dir.
    base: String,
    /// The payload's dir there.
    payload_dir: String,
    /// The check, waiting to become the run's collect (see
    /// `Session::run_lingering`), when it was asked to.
    check: Option<Lingering<'s>>,
    /// The check may run the payload itself (check.sh: `runs`).
    runs: bool,
}

/// [`stage`], noting the host's pushrun dir in `seen` as soon as the check
/// has made the run dir: staging cut short (Ctrl-C, a signal) then knows
/// what to remove. A script that failed because the connection went away
/// is a lost connection (for hosts and relays alike).
async fn stage_noting_base<'s>(
    session: &'s Session,
    host: &Host,
    job: &Arc<PayloadJob>,
    stats: &mut StageStats,
    seen: &mut Option<String>,
    linger: bool,
) -> Result<Staged<'s>, StageError> {
    match send_what_is_missing(session, host, job, stats, seen, linger).await {
        Err(e) => Err(e.or_lost(session).await),
        staged => staged,
    }
}

/// The check, then the upload of what it found missing or wrong. With
/// `linger`, the check stays on its channel to become the run's collect.
async fn send_what_is_missing<'s>(
    session: &'s Session,
    host: &Host,
    job: &Arc<PayloadJob>,
    stats: &mut StageStats,
    seen: &mut Option<String>,
    linger: bool,
) -> Result<Staged<'s>, StageError> {
    // "auto": the first usable of a list of temp dirs (see lib.sh: pick_tmp)
    let remote_tmp = host.settings.remote_tmp.as_deref().unwrap_or("auto");
    let digest = job.payload.digest();
    let mode = if job.cache { "cache" } else { "nocache" };
    let manifest = job.payload.manifest();
    let lost = |e: openssh::Error| StageError::Lost(error_chain(&e));
    let run_id = host_run_id(&job.run_id, host);
    let args = [remote_tmp, digest, run_id.as_str(), mode];
    let (out, check) = run_check(session, &args, manifest, linger)
        .await
        .map_err(lost)?;
    stats.bytes_sent += manifest.len() as u64;
    stats.bytes_received += out.stdout.len() as u64;
    let report = remote::parse_check(&out.stdout).map_err(|reason| StageError::Failed {
        reason: script_failure(reason, &out),
        base: None,
    })?;
    let base = report.base;
    let runs = report.runs;
    *seen = Some(base.clone());
    // files one by one take channels of their own: the check does not wait
    // beside them (a server may allow one session at a time), and the run's
    // collect opens its own. A tar goes through a check that waits.
    let mut check = match check {
        Some(check) if !report.needed.is_empty() && !report.lacks.is_empty() => {
            check.end().await;
            None
        }
        check => check,
    };
    if !report.needed.is_empty() && !report.lacks.is_empty() {
        // no tar or gzip on the host: file by file
        super::plain::put_files(session, job, (&base, &run_id), &report.needed, stats).await?;
    } else if !report.needed.is_empty() {
        let archive = job
            .archive(&report.needed)
            .await
            .map_err(|reason| StageError::Failed {
                reason,
                base: Some(base.clone()),
            })?;
        let size = archive.size;
        // a tar.gz, or a plain tar where the files do not compress
        let format = if archive.gzip { "gz" } else { "tar" };
        // from memory, or through an opening of its own, so that hosts read
        // the shared file each from its start
        let reader: Box<dyn tokio::io::AsyncBufRead + Unpin + Send + '_> = match &archive.body {
            SpooledBody::Memory(bytes) => Box::new(&bytes[..]),
            SpooledBody::File(file) => {
                let own = format!("/proc/self/fd/{}", file.as_raw_fd());
                let file = tokio::fs::File::open(own)
                    .await
                    .map_err(|e| StageError::Failed {
                        reason: format!("cannot read the payload archive: {e}"),
                        base: Some(base.clone()),
                    })?;
                Box::new(tokio::io::BufReader::with_capacity(64 * 1024, file))
            }
        };
        let out = match check.take() {
            // on the check's own channel, which then waits on
            Some(waiting) => {
                let (out, waiting) = waiting.receive(format, reader, size).await.map_err(lost)?;
                check = waiting;
                out
            }
            None => {
                let args = [base.as_str(), digest, &run_id, mode, format];
                session
                    .run_script_from(remote::RECEIVE, "pushrun-receive", &args, reader, 0)
                    .await
                    .map_err(lost)?
            }
        };
        stats.bytes_sent += size;
        stats.bytes_received += out.stdout.len() as u64;
        stats.files_sent = report.needed.len();
        if let Some(reason) = remote::error_line(&out.stdout) {
            return Err(StageError::Failed {
                reason,
                base: Some(base),
            });
        }
        if out.code != Some(0) {
            let reason = script_failure("receive failed".into(), &out);
            return Err(StageError::Failed {
                reason,
                base: Some(base),
            });
        }
    } else {
        stats.cache_hit = job.cache;
    }
    let payload_dir = if job.cache {
        format!("{base}/cache/{digest}")
    } else {
        format!("{base}/runs/{run_id}/payload")
    };
    Ok(Staged {
        base,
        payload_dir,
        check,
        runs,
    })
}

/// Runs check.sh with `args` on `manifest`; with `linger`, the check stays
/// on its channel once it has answered, to become the collect.
async fn run_check<'s>(
    session: &'s Session,
    args: &[&str],
    manifest: &str,
    linger: bool,
) -> Result<(ScriptOutput, Option<Lingering<'s>>), openssh::Error> {
    if !linger {
        let out = session
            .run_script(remote::CHECK, "pushrun-check", args, manifest.as_bytes())
            .await?;
        return Ok((out, None));
    }
    // the manifest in the script (check.sh: "Then"), stdin kept for the
    // word that makes it the run or the collect
    let script = format!(
        "pushrun_manifest={}\npushrun_linger=1\n{}",
        remote::sh_quote(manifest),
        remote::CHECK_LINGER
    );
    session
        .run_lingering(&script, "pushrun-check", args, manifest.len(), b"checked ")
        .await
}

/// How long a run stopped on timeout may take to say how it ended: the
/// watcher's grace and its KILLs (runlib.sh: run_watch), with room.
const END_WAIT: Duration = Duration::from_secs(15);

/// A fresh nonce for a run's end line (check.sh, "Then"): 128 random bits
/// in hex, which no payload's output holds unless it reads them from the
/// check's memory.
fn nonce() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        // no /dev/urandom: the time and this process, hashed
        let seed = format!("{:?} {}", std::time::SystemTime::now(), std::process::id());
        bytes.copy_from_slice(&Sha256::digest(seed.as_bytes())[..16]);
    }
    crate::payload::hex(&bytes)
}

/// A run's stdout and stderr on its check's channel, up to their end lines
/// (both at once), as the host's output lines; stdout hashed into `hash`.
async fn read_to_ends<O, E>(
    (out, err): (&mut Option<EndMarked<O>>, &mut Option<EndMarked<E>>),
    hash: Option<Arc<std::sync::Mutex<Sha256>>>,
    id: HostId,
    events: &mpsc::Sender<Event>,
) where
    O: tokio::io::AsyncRead + Unpin,
    E: tokio::io::AsyncRead + Unpin,
{
    let o = async {
        if let Some(r) = out.as_mut() {
            let r = HashingReader { inner: r, hash };
            let _ = read_lines(r, false, id, Stream::Stdout, events).await;
        }
    };
    let e = async {
        if let Some(r) = err.as_mut() {
            let _ = read_lines(r, false, id, Stream::Stderr, events).await;
        }
    };
    tokio::join!(o, e);
}

/// The end line's status ("RC" and a newline: what `inner` holds from
/// just after the end marker), and the stream from just after it.
async fn end_line<R: tokio::io::AsyncRead + Unpin>(
    mut inner: R,
) -> Option<(i32, tokio::io::Chain<std::io::Cursor<Vec<u8>>, R>)> {
    let mut held = Vec::new();
    let mut buf = [0u8; 64];
    let at = loop {
        if let Some(at) = held.iter().position(|&b| b == b'\n') {
            break at;
        }
        if held.len() > 16 {
            return None;
        }
        let n = inner.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        held.extend_from_slice(&buf[..n]);
    };
    let rc = std::str::from_utf8(&held[..at]).ok()?.parse().ok()?;
    let rest = held.split_off(at + 1);
    Some((rc, std::io::Cursor::new(rest).chain(inner)))
}

/// The name of one inventory entry's run dir on its host: the run's id and
/// a digest of the entry's name, so that entries reaching one machine, or
/// hosts sharing a `remote_tmp` (an NFS home), never share a run dir.
pub(crate) fn host_run_id(run_id: &str, host: &Host) -> String {
    let digest = Sha256::digest(host.name.as_bytes());
    format!("{run_id}-{}", crate::payload::hex(&digest[..4]))
}

/// Removes a run dir whose run never started (best effort).
pub(crate) async fn clean_run_dir(session: &Session, base: &str, run_id: &str) {
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        collect(session, base, run_id, None, Source::Channel),
    )
    .await;
}

impl HostTask<'_> {
    /// A payload on one host: once, or again and again with --repeat and
    /// --watch until the run converges or is interrupted.
    pub(super) async fn run_payloads(
        &mut self,
        first: &Arc<PayloadJob>,
        spec: &RunSpec,
        timings: Timings,
    ) -> HostOutcome {
        let looping = spec.repeat.is_some() || self.triggers.reload.is_some();
        if !looping {
            return self.run_payload(first, spec, timings).await.outcome;
        }
        let mut job = first.clone();
        let mut previous: Option<[u8; 32]> = None;
        let mut run = 0u32;
        // A run under way when the whole run converges gets the quiet time
        // again to end by itself (repeating, its output was not activity),
        // so runs do not see convergence themselves; this loop does.
        let (_, never) = watch::channel(false);
        let mut converged = std::mem::replace(&mut self.triggers.converged, never);
        let grace = spec.converge.unwrap_or_default();
        loop {
            run += 1;
            let ran = {
                let this_run = self.run_payload(&job, spec, timings);
                let late = async {
                    raised(&mut converged).await;
                    tokio::time::sleep(grace).await;
                };
                tokio::select! {
                    r = this_run => Some(r),
                    _ = late => None,
                }
            };
            let PayloadRun {
                mut outcome,
                digest,
                restarted,
            } = match ran {
                Some(r) => r,
                None => {
                    let why = format!(
                        "run {run} was still under way {}s after the run converged: stopped",
                        grace.as_secs_f64()
                    );
                    let mut o = HostOutcome::without_exit(Status::Stopped, why, timings);
                    o.notes.push(format!("{run} runs"));
                    return o;
                }
            };
            if restarted {
                job = self.next_job(&job);
                continue;
            }
            let changed = digest.is_none() || digest != previous;
            previous = digest;
            let _ = self
                .events
                .send(Event::Repeated {
                    host: self.id,
                    run,
                    changed,
                    status: outcome.status,
                })
                .await;
            if matches!(
                outcome.status,
                Status::Stopped | Status::Cancelled | Status::Unreachable
            ) {
                outcome.notes.push(format!("{run} runs"));
                return outcome;
            }
            let t = &mut self.triggers;
            let again = async {
                match spec.repeat {
                    Some(every) => tokio::time::sleep(every).await,
                    None => std::future::pending().await,
                }
            };
            let go_on = tokio::select! {
                _ = again => true,
                _ = reloaded(&mut t.reload) => true,
                _ = raised(&mut converged) => false,
                _ = raised(&mut t.cancel) => false,
            };
            if !go_on {
                outcome.notes.push(format!("{run} runs"));
                return outcome;
            }
            job = self.next_job(&job);
        }
    }

    /// The payload to run next: the newest one (--watch), else the same.
    pub(super) fn next_job(&mut self, current: &Arc<PayloadJob>) -> Arc<PayloadJob> {
        match &mut self.triggers.reload {
            Some(r) => r.borrow_and_update().clone(),
            None => current.clone(),
        }
    }

    /// Stage, run, collect, clean: a payload on one host. Also returns a
    /// digest of the run's stdout and `$PUSHRUN_OUT` when looping.
    pub(super) async fn run_payload(
        &mut self,
        job: &Arc<PayloadJob>,
        spec: &RunSpec,
        mut timings: Timings,
    ) -> PayloadRun {
        let (id, host, session, events) = (self.id, self.host, self.session, self.events);
        let looping = spec.repeat.is_some() || self.triggers.reload.is_some();
        let started = Instant::now();
        let mut stats = StageStats::default();
        let t = &mut self.triggers;
        let mut seen = None;
        let staged = tokio::select! {
            r = busy(stage_noting_base(session, host, job, &mut stats, &mut seen, !session.one_session()), id, events) => r,
            _ = raised(&mut t.cancel) => Err(StageError::Cancelled),
            _ = raised(&mut t.converged) => Err(StageError::Converged),
        };
        timings.stage = started.elapsed();
        let Staged {
            base,
            payload_dir,
            check,
            runs,
        } = match staged {
            Ok(s) => s,
            Err(e) => return self.not_staged(e, seen, job, stats, timings).await,
        };

        let mut env = self.payload_env(job);
        let mut notes = Vec::new();
        let run_id = host_run_id(&job.run_id, host);
        let remote_socket = format!("{base}/runs/{run_id}/tunnel.sock");
        let tunnel = match session.open_tunnel(&remote_socket).await {
            Ok(tunnel) => {
                env.push(("PUSHRUN_TUNNEL".into(), remote_socket));
                Some(serve_tunnel(tunnel, id, events.clone()))
            }
            Err(why) => {
                notes.push(format!("no tunnel: {why}"));
                None
            }
        };
        let mut args = vec![
            base.clone(),
            payload_dir,
            run_id.clone(),
            host.name.clone(),
            job.payload.entry().to_string(),
        ];
        args.extend(job.args.iter().cloned());
        let timeout = spec.timeout.or(job.payload.timeout());
        let run_started = Instant::now();
        let hash = looping.then(|| Arc::new(std::sync::Mutex::new(Sha256::new())));
        // the check runs the payload and collects on its own channel (not
        // through sudo: --become runs it as another user; not under
        // dropbear, whose sessions lead no process group: `runs`)
        let (end, source) = match check {
            Some(c) if runs && self.sudo.is_none() => {
                self.run_on_check(c, &args, &env, hash.clone(), timeout)
                    .await
            }
            mut check => {
                let end = self
                    .run_on_channel((&args, &env), &hash, timeout, (&base, &run_id), &mut check)
                    .await;
                let source = check.map_or(Source::Channel, |c| Source::Check(Box::new(c)));
                (end, source)
            }
        };
        timings.run = run_started.elapsed();
        // every record written before the payload ended arrives before its end
        if let Some(tunnel) = tunnel {
            tunnel.finish(session).await;
        }

        let restarted = matches!(end, CommandEnd::Reloaded);
        let ran = Ran {
            end,
            timeout,
            timings,
            hash,
        };
        let (mut outcome, digest) = self
            .collect_end(ran, (&base, source), job, &mut stats, spec.max_results)
            .await;
        outcome.stage = Some(stats);
        outcome.notes.extend(notes);
        PayloadRun {
            outcome,
            digest,
            restarted,
        }
    }

    /// The payload's run on a channel of its own (run.sh); `check`, when
    /// there is one, waits meanwhile to become the collect.
    async fn run_on_channel(
        &mut self,
        (args, env): (&[String], &[(String, String)]),
        hash: &Option<Arc<std::sync::Mutex<Sha256>>>,
        timeout: Option<Duration>,
        (base, run_id): (&str, &str),
        check: &mut Option<Lingering<'_>>,
    ) -> CommandEnd {
        loop {
            let end = match self.launch(
                (remote::RUN, "pushrun-run", args),
                env,
                false,
                self.pty_auto,
            ) {
                Ok(launch) => {
                    let launch = Launch {
                        hash: hash.clone(),
                        ..launch
                    };
                    self.run_launch(launch, true, timeout).await
                }
                Err(why) => {
                    clean_run_dir(self.session, base, run_id).await;
                    CommandEnd::Refused(why)
                }
            };
            // a server that allows one session at a time (MaxSessions 1)
            // refuses the run's beside the waiting check: end the check
            // (the collect then opens its own) and open the run's again
            match end {
                CommandEnd::Lost(why) if check.is_some() && crate::session::is_refusal(&why) => {
                    self.session.note_one_session();
                    if let Some(check) = check.take() {
                        check.end().await;
                    }
                }
                end => return end,
            }
        }
    }

    /// The payload run by its check, on the check's channel (check.sh,
    /// "Then"): its output streamed up to the end line that carries
    /// `nonce`, then the results on the same channel ([`Source::Here`]).
    async fn run_on_check<'s>(
        &mut self,
        check: Lingering<'s>,
        args: &[String],
        env: &[(String, String)],
        hash: Option<Arc<std::sync::Mutex<Sha256>>>,
        timeout: Option<Duration>,
    ) -> (CommandEnd, Source<'s>) {
        let nonce = nonce();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let request = remote::run_request(&nonce, &refs, env);
        let Continued {
            child,
            stdin,
            stdout,
            stderr,
        } = check.then_run(&request).await;
        let out_marker = format!("pushrun-end-{nonce} ");
        let err_marker = format!("pushrun-end-{nonce}\n");
        let mut out = stdout.map(|r| EndMarked::new(r, out_marker.as_bytes()));
        let mut err = stderr.map(|r| EndMarked::new(r, err_marker.as_bytes()));
        let (id, events) = (self.id, self.events);
        let work = async {
            read_to_ends((&mut out, &mut err), hash.clone(), id, events).await;
            // how it ended: read below, from the end line or the channel
            CommandEnd::Exited(0)
        };
        let stop = move |why: &CommandEnd| {
            let keep = matches!(why, CommandEnd::TimedOut | CommandEnd::Converged);
            async move {
                // "stop": the watcher ends the run and keeps its dir for the
                // collect; otherwise the end of stdin: it ends the run and
                // removes the dir (runlib.sh: run_watch)
                if let (true, Some(mut w)) = (keep, stdin) {
                    let _ = w.write_all(b"stop\n").await;
                    let _ = w.flush().await;
                }
            }
        };
        let early = supervise(work, stop, timeout, &mut self.triggers).await;
        if matches!(early, CommandEnd::Cancelled | CommandEnd::Reloaded) {
            // Ctrl-C, a new payload: nothing to collect (the watcher ends
            // the run and removes its dir)
            return (early, Source::Channel);
        }
        // a run stopped on timeout says how it ended once its processes
        // are gone (at most a few seconds: runlib.sh)
        let ended = read_to_ends((&mut out, &mut err), hash, id, events);
        let _ = tokio::time::timeout(END_WAIT, ended).await;
        let stopped = matches!(early, CommandEnd::TimedOut | CommandEnd::Converged);
        let out_end = match out {
            Some(r) if r.found() => end_line(r.into_stream()).await,
            _ => None,
        };
        let err_rest = err.filter(EndMarked::found).map(EndMarked::into_stream);
        let (Some((rc, out_rest)), Some(err_rest)) = (out_end, err_rest) else {
            // no end line: the check itself ended (or the connection did)
            let end = match self.session.lost().await {
                Some(why) => CommandEnd::Lost(why),
                None if stopped => early,
                None => {
                    let how = match exit_code(child.wait().await) {
                        Ok(Some(c)) => format!("exit {c}"),
                        Ok(None) => "killed by a signal".to_string(),
                        Err(e) => error_chain(&e),
                    };
                    CommandEnd::Refused(format!(
                        "the payload's run ended without saying how ({how})"
                    ))
                }
            };
            return (end, Source::Channel);
        };
        let end = if stopped {
            early
        } else {
            CommandEnd::Exited(rc)
        };
        let here = Here {
            child,
            stdout: Box::new(out_rest),
            stderr: Box::new(err_rest),
            done: format!("pushrun-done-{nonce}\n").into_bytes(),
        };
        (end, Source::Here(Box::new(here)))
    }

    /// A payload run that failed (or was stopped) while staging: its run
    /// dir removed where the check had made one, and the host's outcome.
    async fn not_staged(
        &self,
        e: StageError,
        seen: Option<String>,
        job: &PayloadJob,
        stats: StageStats,
        timings: Timings,
    ) -> PayloadRun {
        let base = match &e {
            StageError::Failed { base, .. } => base.as_ref(),
            // cut short after the check made the run dir
            StageError::Cancelled | StageError::Converged => seen.as_ref(),
            _ => None,
        };
        if let Some(base) = base {
            clean_run_dir(self.session, base, &host_run_id(&job.run_id, self.host)).await;
        }
        let (status, reason) = e.status_reason(None, "payload");
        let mut outcome = HostOutcome::without_exit(status, reason, timings);
        outcome.stage = Some(stats);
        PayloadRun {
            outcome,
            digest: None,
            restarted: false,
        }
    }

    /// The payload's environment: its own `env` first, then the inventory's
    /// `vars`, which are more specific and win.
    fn payload_env(&self, job: &PayloadJob) -> Vec<(String, String)> {
        let mut vars = self.vars();
        let mut env: Vec<(String, String)> = job
            .payload
            .env()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.retain(|(k, _)| !vars.iter().any(|(v, _)| v == k));
        env.append(&mut vars);
        env
    }

    /// The host's outcome once the payload's run ended, and the digest of
    /// its stdout and results (under --repeat and --watch).
    ///
    /// After a cancel or a lost connection the run dir is gone already
    /// (run.sh removes it when its stdin closes); otherwise, timeouts and
    /// convergence included, bring back $PUSHRUN_OUT, which also removes it.
    async fn collect_end(
        &self,
        ran: Ran,
        (base, source): (&str, Source<'_>),
        job: &PayloadJob,
        stats: &mut StageStats,
        max: u64,
    ) -> (HostOutcome, Option<[u8; 32]>) {
        let Ran {
            end,
            timeout,
            mut timings,
            hash,
        } = ran;
        if !matches!(
            end,
            CommandEnd::Exited(_)
                | CommandEnd::Signalled
                | CommandEnd::TimedOut
                | CommandEnd::Converged
        ) {
            return (end.into_outcome(timeout, timings), None);
        }
        let collect_started = Instant::now();
        let sink = Sink {
            id: self.id,
            events: self.events,
            max,
            digest: hash.is_some(),
        };
        match collect(
            self.session,
            base,
            &host_run_id(&job.run_id, self.host),
            Some(sink),
            source,
        )
        .await
        {
            Ok(got) => {
                timings.collect = got.streamed;
                timings.clean = collect_started.elapsed().saturating_sub(got.streamed);
                stats.bytes_received += got.bytes;
                let digest = hash.map(|hash| {
                    let mut h = hash.lock().map(|h| h.clone()).unwrap_or_default();
                    h.update(got.digest.unwrap_or_default());
                    h.finalize().into()
                });
                let _ = self.events.send(Event::Collected(self.id)).await;
                (end.into_outcome(timeout, timings), digest)
            }
            Err(error) => {
                timings.collect = collect_started.elapsed();
                let mut o = end.into_outcome(timeout, timings);
                let (status, reason) = match (error, self.session.lost().await) {
                    (_, Some(lost)) => (Status::Unreachable, format!("connection lost: {lost}")),
                    (CollectError::TooBig(max), None) => (
                        Status::Failed,
                        format!(
                            "results over the --max-results limit of {}: not kept",
                            size_text(max)
                        ),
                    ),
                    (CollectError::Failed(why), None) => {
                        (Status::Failed, format!("collect: {why}"))
                    }
                };
                o.status = status;
                o.reason = Some(reason);
                (o, None)
            }
        }
    }
}

/// How a payload's run ended, before its results are collected.
pub(super) struct Ran {
    end: CommandEnd,
    timeout: Option<Duration>,
    timings: Timings,
    hash: Option<Arc<std::sync::Mutex<Sha256>>>,
}
