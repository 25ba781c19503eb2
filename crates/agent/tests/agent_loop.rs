//! The agent loop against a stub server: challenge, measure a file-backed RAM image, sign,
//! submit; refusals and rollback requests reach the caller.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmattest_agent::run::{Event, LoopOptions, run_loop};
use vmattest_agent::{Guest, attest_once};
use vmattest_api::{AttestationResult, Challenge, ErrorBody, ErrorCode};
use vmattest_client::Client;
use vmattest_core::attest::{Policy, SignedEvidence};
use vmattest_core::record::Signable as _;
use vmattest_core::sig::SigAlg;
use vmattest_qemu::VmSpec;
use vmattest_sign::record::verify_signed;
use vmattest_sign::{SecretKey, Signer as _};

const POLICY: &str = "name = \"p\"\nschedule_secs = 1\n[[region]]\nname = \"a\"\nstart = 0x1000\nlen = 0x4000\nsample = 2\n[[region]]\nname = \"k\"\nstart = 0x8000\nlen = 0x2000\nkernel_code = true\n[[subset]]\nid = \"s\"\nregions = [\"a\"]\n";

/// What the stub answers to evidence.
#[derive(Clone, Copy)]
enum Answer {
    Ok { rollback: Option<u64> },
    Replayed,
}

struct Stub {
    url: String,
    evidence: Arc<Mutex<Vec<Vec<u8>>>>,
    auth: Arc<Mutex<Vec<String>>>,
}

fn respond(stream: &mut std::net::TcpStream, status: u16, body: &str) {
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
}

fn stub(answer: Answer) -> Stub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let evidence = Arc::new(Mutex::new(Vec::new()));
    let auth = Arc::new(Mutex::new(Vec::new()));
    let (ev, au) = (Arc::clone(&evidence), Arc::clone(&auth));
    let policy = Policy::parse(POLICY, None).unwrap();
    std::thread::spawn(move || {
        let mut n = 0u8;
        for stream in listener.incoming() {
            let stream = stream.unwrap();
            let mut reader = BufReader::new(stream);
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if let Some(v) = lower.strip_prefix("authorization:") {
                    au.lock().unwrap().push(v.trim().to_owned());
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).unwrap();
            let mut stream = reader.into_inner();
            if request.starts_with("POST /v1/vms/web1/challenge ") {
                n += 1;
                let c = Challenge {
                    vm: "web1".into(),
                    nonce: hex::encode([n; 32]),
                    policy_id: policy.id().to_hex(),
                    policy_toml: policy.to_toml(),
                    subset: "s".into(),
                    expires: vmattest_api::time::from_secs(0),
                    site_report: None,
                };
                respond(&mut stream, 200, &serde_json::to_string(&c).unwrap());
            } else if request.starts_with("POST /v1/evidence ") {
                ev.lock().unwrap().push(body);
                match answer {
                    Answer::Ok { rollback } => {
                        let r = AttestationResult {
                            id: i64::from(n),
                            vm: "web1".into(),
                            time: vmattest_api::time::from_secs(0),
                            score: 100,
                            status: "affirming".into(),
                            trust_vector: Default::default(),
                            regions: Vec::new(),
                            alert: rollback.is_some(),
                            rollback_seq: rollback,
                            ear: String::new(),
                        };
                        respond(&mut stream, 200, &serde_json::to_string(&r).unwrap());
                    }
                    Answer::Replayed => {
                        let e = ErrorBody {
                            code: ErrorCode::ReplayedNonce,
                            error: "the nonce was already used".into(),
                        };
                        respond(&mut stream, 400, &serde_json::to_string(&e).unwrap());
                    }
                }
            } else {
                respond(
                    &mut stream,
                    404,
                    r#"{"code":"not_found","error":"no route"}"#,
                );
            }
        }
    });
    Stub {
        url,
        evidence,
        auth,
    }
}

fn vm() -> (tempfile::TempDir, VmSpec, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    let spec = VmSpec::parse(
        "name = \"web1\"\nmemory_mib = 16\nrun_dir = \"run\"\n[boot]\nkernel = \"k\"\n",
        &dir.path().join("web1.toml"),
        dir.path(),
    )
    .unwrap();
    let ram: Vec<u8> = (0..16 * 4096).map(|i| (i % 253) as u8).collect();
    std::fs::write(spec.ram_path(), &ram).unwrap();
    (dir, spec, ram)
}

#[test]
fn one_round_posts_signed_evidence_of_the_challenged_subset() {
    let s = stub(Answer::Ok { rollback: None });
    let (_dir, spec, ram) = vm();
    let key = SecretKey::generate(SigAlg::Ed25519).unwrap();
    let client = Client::new(&s.url, Some("tok".into())).unwrap();
    let r = attest_once(&client, &Guest::Spec(&spec), &key, "web1", false).unwrap();
    assert_eq!(r.score, 100);
    assert_eq!(
        s.auth.lock().unwrap().as_slice(),
        ["bearer tok", "bearer tok"]
    );
    let bytes = s.evidence.lock().unwrap()[0].clone();
    let signed = SignedEvidence::decode(&bytes).unwrap();
    verify_signed(&signed, &[key.public_key()]).unwrap();
    let ev = signed.value();
    let policy = Policy::parse(POLICY, None).unwrap();
    assert_eq!(ev.nonce, vec![1u8; 32]);
    assert_eq!(ev.subset, "s");
    assert_eq!(ev.policy_id, policy.id());
    let m = vmattest_agent::measure(&ram[..], &policy, "s", &ev.nonce).unwrap();
    let (regions, kernel) = (m.regions, m.kernel_code);
    assert_eq!(ev.regions, regions);
    assert_eq!(ev.regions.len(), 1);
    assert_eq!(ev.regions[0].pages, 2);
    assert_eq!(ev.kernel_code, kernel);
    assert!(kernel.is_some());
    assert_eq!(ev.key_ids, vec![key.key_id()]);
    // The evidence object is re-encodable byte for byte.
    assert_eq!(ev.encode().unwrap(), signed.object_bytes());
}

#[test]
fn the_loop_reports_results_refusals_and_rollback_requests() {
    let (_dir, spec, _) = vm();
    let key = SecretKey::generate(SigAlg::Ed25519).unwrap();
    let stop = AtomicBool::new(false);

    let s = stub(Answer::Ok { rollback: Some(3) });
    let client = Client::new(&s.url, Some("tok".into())).unwrap();
    let opts = LoopOptions {
        vm_name: "web1",
        paused: false,
        interval: Some(Duration::from_millis(10)),
        count: Some(2),
        rollback: None,
    };
    let mut events = Vec::new();
    let rounds = run_loop(&client, &Guest::Spec(&spec), &key, &opts, &stop, &mut |e| {
        events.push(e)
    });
    assert_eq!(rounds, 2);
    assert_eq!(s.evidence.lock().unwrap().len(), 2);
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e {
            Event::Answered { round, .. } => format!("answered {round}"),
            Event::RollbackSkipped { round, seq } => format!("skipped {round} {seq}"),
            Event::RolledBack { round, .. } => format!("rolled back {round}"),
            Event::Reported { round, seq, .. } => format!("reported {round} {seq}"),
            Event::Failed { round, error } => format!("failed {round} {error}"),
            Event::LocateFailed { round, error } => format!("locate failed {round} {error}"),
        })
        .collect();
    assert_eq!(
        kinds,
        ["answered 1", "skipped 1 3", "answered 2", "skipped 2 3"]
    );

    let s = stub(Answer::Replayed);
    let client = Client::new(&s.url, Some("tok".into())).unwrap();
    let opts = LoopOptions {
        count: Some(1),
        ..opts
    };
    let mut events = Vec::new();
    run_loop(&client, &Guest::Spec(&spec), &key, &opts, &stop, &mut |e| {
        events.push(e)
    });
    match &events[..] {
        [Event::Failed { error, .. }] => assert_eq!(
            error.to_string(),
            "server refused (400 replayed_nonce): the nonce was already used"
        ),
        other => panic!("{other:?}"),
    }
    // A stopped loop runs one round at most.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        run_loop(
            &client,
            &Guest::Spec(&spec),
            &key,
            &opts,
            &stop,
            &mut |_| {}
        ),
        0
    );
}
