//! A QMP client over a Unix socket: one JSON object per line each way. Replies are matched to
//! their command by id; asynchronous events that arrive meanwhile are queued.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmattest_core::class::{Classify, ErrorClass};

use serde_json::{Value, json};

/// Longest QMP message accepted.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Time allowed for one command's reply unless changed with [`Qmp::set_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Oldest events are dropped beyond this many.
const MAX_QUEUED_EVENTS: usize = 1024;
const POLL: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP {path}: cannot connect")]
    Connect { path: PathBuf, source: io::Error },
    #[error("QMP")]
    Io(#[from] io::Error),
    #[error("QMP: QEMU closed the connection")]
    Closed,
    #[error("QMP: no {what} within {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("QMP: message longer than {max} bytes")]
    TooLarge { max: usize },
    #[error("QMP: protocol error: {0}")]
    Protocol(String),
    #[error("QMP: {0}")]
    Argument(String),
    #[error("qemu: {cmd}: {desc}")]
    Qemu {
        cmd: String,
        class: String,
        desc: String,
    },
    #[error("qemu: migration {status}: {desc}")]
    Migration { status: String, desc: String },
    /// The manager that relays QMP (libvirt) refused or failed the call.
    #[error("QMP through {via}: {detail}")]
    Passthrough { via: &'static str, detail: String },
}

impl Classify for QmpError {
    /// A monitor that cannot be reached, misbehaves or refuses is the environment failing;
    /// only an argument vmattest cannot even send is input.
    fn class(&self) -> ErrorClass {
        match self {
            QmpError::Argument(_) => ErrorClass::Input,
            QmpError::Connect { .. }
            | QmpError::Io(_)
            | QmpError::Closed
            | QmpError::Timeout { .. }
            | QmpError::TooLarge { .. }
            | QmpError::Protocol(_)
            | QmpError::Qemu { .. }
            | QmpError::Migration { .. }
            | QmpError::Passthrough { .. } => ErrorClass::Environment,
        }
    }
}

/// An asynchronous QMP event.
/// A QMP session: a socket vmattest holds itself ([`Qmp`]) or a hypervisor manager's
/// passthrough (a libvirt domain's). Everything a capture or a restore asks of QEMU is built on
/// `execute`.
pub trait Monitor {
    /// Runs `cmd` with `args` (`Value::Null` for none) and returns its "return" value.
    fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, QmpError>;

    fn query_status(&mut self) -> Result<String, QmpError> {
        let r = self.execute("query-status", Value::Null)?;
        r.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| QmpError::Protocol("query-status: no status".into()))
    }

    /// Pauses the guest.
    fn stop(&mut self) -> Result<(), QmpError> {
        self.execute("stop", Value::Null).map(drop)
    }

    /// Resumes the guest.
    fn cont(&mut self) -> Result<(), QmpError> {
        self.execute("cont", Value::Null).map(drop)
    }

    /// Polls query-status until it reports `want`.
    fn wait_status(&mut self, want: &str, timeout: Duration) -> Result<(), QmpError> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.query_status()?;
            if status == want {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(QmpError::Timeout {
                    what: format!("status {want} (still {status})"),
                    after: timeout,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Starts migrating into the file `path`; see [`Monitor::wait_migration`]. The path goes in a
    /// structured channel, not a URI, so it may hold any character.
    fn migrate_to_file(&mut self, path: &Path) -> Result<(), QmpError> {
        let channels = file_channels(path)?;
        self.execute("migrate", json!({ "channels": channels }))
            .map(drop)
    }

    /// Polls query-migrate until the migration completes, and returns its final statistics.
    fn wait_migration(&mut self, timeout: Duration) -> Result<Value, QmpError> {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.execute("query-migrate", Value::Null)?;
            let status = info.get("status").and_then(Value::as_str).unwrap_or("none");
            match status {
                "completed" => return Ok(info),
                "failed" | "cancelled" => {
                    let desc = info.get("error-desc").and_then(Value::as_str);
                    return Err(QmpError::Migration {
                        status: status.to_string(),
                        desc: desc.unwrap_or("no detail from QEMU").to_string(),
                    });
                }
                _ if Instant::now() >= deadline => {
                    return Err(QmpError::Timeout {
                        what: format!("completed migration (still {status})"),
                        after: timeout,
                    });
                }
                _ => std::thread::sleep(POLL),
            }
        }
    }

    fn set_capabilities(&mut self, caps: &[(&str, bool)]) -> Result<(), QmpError> {
        let caps: Vec<Value> = caps
            .iter()
            .map(|(name, on)| json!({ "capability": name, "state": on }))
            .collect();
        self.execute("migrate-set-capabilities", json!({ "capabilities": caps }))
            .map(drop)
    }

    /// Migration speed limit, bytes per second (QEMU's default is 128 MiB/s).
    fn set_max_bandwidth(&mut self, bytes_per_sec: u64) -> Result<(), QmpError> {
        self.execute(
            "migrate-set-parameters",
            json!({ "max-bandwidth": bytes_per_sec }),
        )
        .map(drop)
    }

    /// Starts an incoming migration on a QEMU started with `-incoming defer`.
    fn migrate_incoming(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate-incoming", json!({ "uri": uri }))
            .map(drop)
    }

    /// Like [`Monitor::migrate_incoming`] from `file:PATH`, for any path.
    fn migrate_incoming_file(&mut self, path: &Path) -> Result<(), QmpError> {
        let channels = file_channels(path)?;
        self.execute("migrate-incoming", json!({ "channels": channels }))
            .map(drop)
    }
}

impl Monitor for Qmp {
    fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, QmpError> {
        Qmp::execute(self, cmd, args)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub name: String,
    pub data: Value,
}

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    stream: BufReader<UnixStream>,
    /// Bytes of a line not yet complete when a read timed out.
    partial: Vec<u8>,
    events: VecDeque<QmpEvent>,
    next_id: u64,
    timeout: Duration,
    /// Set after a framing error: the stream position is no longer known.
    broken: bool,
}

/// What a read waits for, and until when.
struct Wait {
    what: String,
    until: Instant,
    after: Duration,
}

impl Wait {
    fn new(what: impl Into<String>, after: Duration) -> Wait {
        Wait {
            what: what.into(),
            until: Instant::now() + after,
            after,
        }
    }
}

enum Message {
    Event(QmpEvent),
    Reply { id: Option<Value>, body: Value },
    Greeting,
}

impl Qmp {
    /// Connects to `path`, retrying for up to `wait` while QEMU creates the socket, then reads
    /// the greeting and leaves capability negotiation mode.
    pub fn connect(path: &Path, wait: Duration) -> Result<Qmp, QmpError> {
        Qmp::connect_busy(path, wait, wait)
    }

    /// Like [`Qmp::connect`], but gives up on a missing or refusing socket (no QEMU) after
    /// `wait`, while waiting up to `busy` for a monitor another client still holds.
    pub fn connect_busy(path: &Path, wait: Duration, busy: Duration) -> Result<Qmp, QmpError> {
        use io::ErrorKind::{ConnectionRefused, NotFound};
        let started = Instant::now();
        let deadline = started + wait;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e)
                    if matches!(e.kind(), NotFound | ConnectionRefused)
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(QmpError::Connect {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            }
        };
        stream.set_write_timeout(Some(DEFAULT_TIMEOUT))?;
        let mut qmp = Qmp {
            stream: BufReader::new(stream),
            partial: Vec::new(),
            events: VecDeque::new(),
            next_id: 1,
            timeout: DEFAULT_TIMEOUT,
            broken: false,
        };
        // QEMU serves one monitor client at a time: a second client waits here.
        let left = (started + busy.max(wait)).saturating_duration_since(Instant::now());
        let wait = Wait::new("QMP greeting", left.max(Duration::from_secs(1)));
        loop {
            match qmp.read_message(&wait)? {
                Message::Greeting => break,
                Message::Event(e) => qmp.queue(e),
                Message::Reply { .. } => {
                    return Err(QmpError::Protocol("reply before the greeting".into()));
                }
            }
        }
        qmp.execute("qmp_capabilities", Value::Null)?;
        Ok(qmp)
    }

    /// Time allowed for each later command's reply.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), QmpError> {
        self.timeout = timeout.max(Duration::from_millis(1));
        self.stream
            .get_ref()
            .set_write_timeout(Some(self.timeout))?;
        Ok(())
    }

    /// Runs `cmd` with `args` (`Value::Null` for none) and returns its "return" value.
    pub fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, QmpError> {
        if self.broken {
            return Err(QmpError::Protocol(
                "connection unusable after an earlier error".into(),
            ));
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "execute": cmd, "id": id });
        if !args.is_null() {
            request["arguments"] = args;
        }
        let mut line = request.to_string().into_bytes();
        line.push(b'\n');
        self.stream.get_mut().write_all(&line)?;
        let wait = Wait::new(format!("reply to {cmd}"), self.timeout);
        loop {
            match self.read_message(&wait)? {
                Message::Event(e) => self.queue(e),
                Message::Greeting => {}
                // QEMU leaves the id out only for requests it could not parse.
                Message::Reply { id: Some(got), .. } if got != json!(id) => {}
                Message::Reply { mut body, .. } => {
                    if let Some(err) = body.get("error") {
                        let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("");
                        return Err(QmpError::Qemu {
                            cmd: cmd.to_string(),
                            class: field("class").to_string(),
                            desc: field("desc").to_string(),
                        });
                    }
                    return match body.get_mut("return") {
                        Some(ret) => Ok(ret.take()),
                        None => Err(QmpError::Protocol(format!("{cmd}: reply has no return"))),
                    };
                }
            }
        }
    }

    /// Waits for the event `name` (or takes it from the queue) and returns its data.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Value, QmpError> {
        if let Some(i) = self.events.iter().position(|e| e.name == name) {
            return Ok(self.events.remove(i).map(|e| e.data).unwrap_or_default());
        }
        let wait = Wait::new(format!("event {name}"), timeout);
        loop {
            match self.read_message(&wait)? {
                Message::Event(e) if e.name == name => return Ok(e.data),
                Message::Event(e) => self.queue(e),
                Message::Reply { .. } | Message::Greeting => {}
            }
        }
    }

    /// Asks QEMU to exit; the connection closing before the reply counts as success.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", Value::Null) {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn queue(&mut self, event: QmpEvent) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn read_message(&mut self, wait: &Wait) -> Result<Message, QmpError> {
        let line = self.read_line(wait)?;
        let value: Value = serde_json::from_slice(&line).map_err(|e| {
            self.broken = true;
            QmpError::Protocol(format!("not JSON: {e}"))
        })?;
        let Value::Object(mut obj) = value else {
            self.broken = true;
            return Err(QmpError::Protocol("message is not a JSON object".into()));
        };
        if let Some(Value::String(name)) = obj.remove("event") {
            let data = obj.remove("data").unwrap_or(Value::Null);
            return Ok(Message::Event(QmpEvent { name, data }));
        }
        if obj.contains_key("QMP") {
            return Ok(Message::Greeting);
        }
        if obj.contains_key("return") || obj.contains_key("error") {
            let id = obj.remove("id");
            return Ok(Message::Reply {
                id,
                body: Value::Object(obj),
            });
        }
        Err(QmpError::Protocol(
            "message is neither reply nor event".into(),
        ))
    }

    /// One non-empty line, at most [`MAX_MESSAGE_BYTES`]. A timeout keeps the partial line.
    fn read_line(&mut self, wait: &Wait) -> Result<Vec<u8>, QmpError> {
        loop {
            let now = Instant::now();
            if now >= wait.until {
                return Err(QmpError::Timeout {
                    what: wait.what.clone(),
                    after: wait.after,
                });
            }
            let remaining = (wait.until - now).max(Duration::from_millis(1));
            self.stream.get_ref().set_read_timeout(Some(remaining))?;
            let limit = (MAX_MESSAGE_BYTES + 1).saturating_sub(self.partial.len()) as u64;
            let result = (&mut self.stream)
                .take(limit)
                .read_until(b'\n', &mut self.partial);
            match result {
                Ok(_) if self.partial.last() == Some(&b'\n') => {
                    let line = std::mem::take(&mut self.partial);
                    if !line.trim_ascii().is_empty() {
                        return Ok(line);
                    }
                }
                Ok(_) if self.partial.len() > MAX_MESSAGE_BYTES => {
                    self.partial = Vec::new();
                    self.broken = true;
                    return Err(QmpError::TooLarge {
                        max: MAX_MESSAGE_BYTES,
                    });
                }
                Ok(_) => return Err(QmpError::Closed),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn file_channels(path: &Path) -> Result<Value, QmpError> {
    let filename = path
        .to_str()
        .ok_or_else(|| QmpError::Argument(format!("{}: path is not UTF-8", path.display())))?;
    Ok(json!([{
        "channel-type": "main",
        "addr": { "transport": "file", "filename": filename, "offset": 0 },
    }]))
}
