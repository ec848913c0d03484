//! `--json`: one JSON object per event on stdout, for programs to read.
//!
//! Every object names its `event`, its `host` (and relay `path`, if any) and
//! `t_ms`, the time since the run started, so a reader can rebuild the run
//! without pushrun's own rendering. Output that is not UTF-8 travels as
//! base64 (`data_b64`) instead of being escaped: a program wants the bytes.
//! The last object is the `summary`.

use std::io;
use std::time::Instant;

use base64::Engine as _;
use serde_json::{Value, json};

use super::summary::Ended;
use super::{Hosts, Render, Screen};
use crate::events::{Event, HostId, HostOutcome, Status, Stream};

/// Writes each event as a JSON line.
pub(super) struct Json {
    /// When the run started, for `t_ms`.
    started: Instant,
}

impl Json {
    /// A renderer for a run that started at `started`.
    pub(super) fn new(started: Instant) -> Json {
        Json { started }
    }

    /// Writes `obj` for host `id`, with its name, path and time added.
    fn write(
        &self,
        screen: &mut Screen,
        hosts: &Hosts,
        id: HostId,
        mut obj: Value,
    ) -> io::Result<()> {
        obj["host"] = Value::String(hosts.name(id).to_string());
        if let Some(path) = hosts.path(id) {
            obj["path"] = json!(path);
        }
        obj["t_ms"] = json!(self.started.elapsed().as_millis() as u64);
        screen.json(&obj)
    }
}

impl Render for Json {
    fn show(&mut self, screen: &mut Screen, hosts: &Hosts, event: &Event) -> io::Result<()> {
        let (id, obj) = match event {
            Event::Connecting(id) => (*id, json!({"event": "connecting"})),
            Event::Connected(id) => (*id, json!({"event": "connected"})),
            Event::Output {
                host,
                stream,
                line,
                complete,
            } => (*host, output(*stream, line, *complete)),
            Event::Record(id, line) => (*id, record(line)),
            Event::Retrying {
                host,
                reason,
                delay,
            } => (
                *host,
                json!({"event": "retrying", "reason": reason, "delay_ms": delay.as_millis() as u64}),
            ),
            Event::Repeated {
                host,
                run,
                changed,
                status,
            } => (
                *host,
                json!({"event": "repeated", "run": run, "changed": changed, "status": status.as_str()}),
            ),
            Event::Finished(id, outcome) => (*id, end(outcome)),
            Event::Busy(_) | Event::Collected(..) | Event::ResultsPart(..) => return Ok(()),
        };
        self.write(screen, hosts, id, obj)
    }

    fn summary(&mut self, screen: &mut Screen, ended: &Ended<'_>) -> io::Result<()> {
        let summary = ended.summary;
        let mut obj = json!({
            "event": "summary",
            "hosts": ended.hosts.len(),
            "elapsed_ms": ended.elapsed.as_millis() as u64,
            "exit_status": summary.exit_status.code(),
        });
        for status in Status::ALL {
            let key = status.as_str();
            obj[key] = json!(summary.count(status));
            obj["hosts_by_status"][key] = json!(ended.folded(status));
        }
        if !ended.relays.is_empty() {
            obj["relays"] = json!(ended.relays);
        }
        screen.json(&obj)?;
        screen.flush_out()
    }
}

/// A line of output: `text`, or `data_b64` when it is not UTF-8.
fn output(stream: Stream, line: &[u8], complete: bool) -> Value {
    let mut obj = json!({"event": "output", "stream": stream});
    match std::str::from_utf8(line) {
        Ok(text) => obj["text"] = Value::String(text.to_string()),
        Err(_) => {
            obj["data_b64"] = Value::String(base64::engine::general_purpose::STANDARD.encode(line));
        }
    }
    if !complete {
        obj["partial"] = Value::Bool(true);
    }
    obj
}

/// A record from `$PUSHRUN_TUNNEL`: its JSON, or its text when it is not JSON.
fn record(line: &[u8]) -> Value {
    let text = String::from_utf8_lossy(line).into_owned();
    let record = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
    json!({"event": "record", "record": record})
}

/// How a host ended.
fn end(o: &HostOutcome) -> Value {
    json!({
        "event": "end",
        "status": o.status.as_str(),
        "exit_code": o.exit_code,
        "reason": o.reason,
        "notes": o.notes,
        "timings": o.timings,
        "stage": o.stage,
    })
}
