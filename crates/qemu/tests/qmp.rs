//! The QMP client against a scripted fake server: framing, id matching, events, limits.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vmattest_qemu::qmp::{MAX_MESSAGE_BYTES, Monitor as _, Qmp, QmpError};

const GREETING: &str =
    r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 10}}, "capabilities": []}}"#;

/// Serves one client: greets, accepts qmp_capabilities, then hands each later request (parsed)
/// to `reply`, which writes whatever it likes.
fn serve(path: &Path, reply: impl Fn(&Value, &mut UnixStream) + Send + 'static) -> JoinHandle<()> {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        writeln!(stream, "{GREETING}").unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            let req: Value = serde_json::from_str(&line).unwrap();
            line.clear();
            if req["execute"] == "qmp_capabilities" {
                writeln!(stream, "{}", json!({"return": {}, "id": req["id"]})).unwrap();
            } else {
                reply(&req, &mut stream);
            }
        }
    })
}

fn socket() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    (dir, path)
}

#[test]
fn events_are_queued_and_stale_replies_skipped() {
    let (_dir, path) = socket();
    let server = serve(&path, |req, s| {
        let id = &req["id"];
        // An event and a reply to some earlier, abandoned command come first.
        writeln!(
            s,
            r#"{{"event": "STOP", "data": {{"reason": "x"}}, "timestamp": {{}}}}"#
        )
        .unwrap();
        writeln!(s, r#"{{"return": {{"status": "stale"}}, "id": 999}}"#).unwrap();
        writeln!(s).unwrap();
        // The real reply arrives in two pieces.
        let reply = json!({"return": {"status": "paused"}, "id": id}).to_string();
        let (a, b) = reply.split_at(5);
        s.write_all(a.as_bytes()).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        writeln!(s, "{b}").unwrap();
    });
    let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
    assert_eq!(qmp.query_status().unwrap(), "paused");
    assert_eq!(
        qmp.wait_event("STOP", Duration::from_millis(10)).unwrap(),
        json!({"reason": "x"})
    );
    let t = Instant::now();
    let err = qmp
        .wait_event("RESUME", Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(err, QmpError::Timeout { .. }), "{err:?}");
    assert!(t.elapsed() >= Duration::from_millis(200));
    drop(qmp);
    server.join().unwrap();
}

#[test]
fn qemu_errors_are_typed() {
    let (_dir, path) = socket();
    let server = serve(&path, |req, s| {
        let desc = format!(
            "The command {} has not been found",
            req["execute"].as_str().unwrap()
        );
        let reply = json!({"error": {"class": "CommandNotFound", "desc": desc}, "id": req["id"]});
        writeln!(s, "{reply}").unwrap();
    });
    let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
    let err = qmp.execute("bogus", json!({"a": 1})).unwrap_err();
    assert_eq!(
        err.to_string(),
        "qemu: bogus: The command bogus has not been found"
    );
    assert!(matches!(&err, QmpError::Qemu { class, .. } if class == "CommandNotFound"));
    drop(qmp);
    server.join().unwrap();
}

#[test]
fn migration_failure_carries_qemu_detail() {
    let (_dir, path) = socket();
    let server = serve(&path, |req, s| {
        let ret = match req["execute"].as_str().unwrap() {
            "query-migrate" => json!({"status": "failed", "error-desc": "disk full"}),
            _ => json!({}),
        };
        writeln!(s, "{}", json!({"return": ret, "id": req["id"]})).unwrap();
    });
    let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
    qmp.migrate_to_file(Path::new("/some,where/state")).unwrap();
    let err = qmp.wait_migration(Duration::from_secs(5)).unwrap_err();
    assert_eq!(err.to_string(), "qemu: migration failed: disk full");
    drop(qmp);
    server.join().unwrap();
}

#[test]
fn oversize_message_is_refused() {
    let (_dir, path) = socket();
    let server = serve(&path, |_, s| {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..=MAX_MESSAGE_BYTES >> 20 {
            if s.write_all(&chunk).is_err() {
                return; // the client hung up, as it should
            }
        }
    });
    let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
    let err = qmp.execute("query-status", Value::Null).unwrap_err();
    assert!(matches!(err, QmpError::TooLarge { .. }), "{err:?}");
    // The stream is out of step now: the session refuses further use.
    let err = qmp.execute("query-status", Value::Null).unwrap_err();
    assert!(matches!(err, QmpError::Protocol(_)), "{err:?}");
    drop(qmp);
    server.join().unwrap();
}

#[test]
fn connect_waits_for_the_socket_and_sees_it_close() {
    let (_dir, path) = socket();
    let later = path.clone();
    let server = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        // Answers nothing after negotiation, then hangs up.
        serve(&later, |_, _| {}).join().unwrap();
    });
    let mut qmp = Qmp::connect(&path, Duration::from_secs(10)).unwrap();
    qmp.set_timeout(Duration::from_millis(300)).unwrap();
    let err = qmp.execute("query-status", Value::Null).unwrap_err();
    assert!(matches!(err, QmpError::Timeout { .. }), "{err:?}");
    drop(qmp);
    server.join().unwrap();

    let err = Qmp::connect(&path, Duration::from_millis(100)).unwrap_err();
    assert!(matches!(err, QmpError::Connect { .. }), "{err:?}");
}

#[test]
fn quit_accepts_a_closed_connection() {
    let (_dir, path) = socket();
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        writeln!(stream, "{GREETING}").unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let req: Value = serde_json::from_str(&line).unwrap();
        writeln!(stream, "{}", json!({"return": {}, "id": req["id"]})).unwrap();
        line.clear();
        reader.read_line(&mut line).unwrap(); // quit: hang up without a reply
    });
    let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
    qmp.quit().unwrap();
    server.join().unwrap();
}
