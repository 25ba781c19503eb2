//! A real `vmattest serve` process on a free loopback port, a raw HTTP client for checking
//! status codes, and a webhook receiver.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::vmattest;

/// One server process; dropped, it is stopped by PID.
pub struct Server {
    child: Option<Child>,
    pub addr: String,
    pub state: PathBuf,
    pub db: String,
    pub log: PathBuf,
}

impl Server {
    /// Starts a server whose state (and, when `db` is None, SQLite database) is under `state`.
    pub fn start(state: &Path, db: Option<&str>) -> Server {
        Server::start_with(state, db, &[])
    }

    pub fn start_with(state: &Path, db: Option<&str>, extra: &[&str]) -> Server {
        let db = db.map_or_else(
            || format!("sqlite://{}", state.join("server.db").display()),
            str::to_string,
        );
        let ready = state.join("ready");
        let _ = std::fs::remove_file(&ready);
        std::fs::create_dir_all(state).unwrap();
        let log = state.join(format!("server-{}.log", std::process::id()));
        let child = Command::new(env!("CARGO_BIN_EXE_vmattest"))
            .args(["serve", "--listen", "127.0.0.1:0", "--db", &db])
            .arg("--state-dir")
            .arg(state)
            .arg("--ready-file")
            .arg(&ready)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start vmattest serve");
        let mut s = Server {
            child: Some(child),
            addr: String::new(),
            state: state.to_path_buf(),
            db,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(a) = std::fs::read_to_string(&ready)
                && a.ends_with('\n')
            {
                s.addr = a.trim().to_string();
                return s;
            }
            if let Some(status) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("server exited with {status}: {}", s.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not become ready: {}", s.log_text());
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.state.join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no graceful shutdown, as a crash would be.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> i32 {
        let Some(mut c) = self.child.take() else {
            return -1;
        };
        let pid = i32::try_from(c.id()).unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        -1
    }

    /// `vmattest remote ...` against this server with `token`.
    pub fn remote(&self, token: &str, args: &[&str]) -> super::Run {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, token).unwrap();
        let mut all = vec![
            "remote".to_string(),
            "--server".into(),
            self.url(),
            "--token-file".into(),
            f.display().to_string(),
        ];
        all.extend(args.iter().map(|s| (*s).to_string()));
        vmattest(all)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A raw request: `(status, body)`.
pub fn http(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> (u16, String) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent();
    let auth = token.map(|t| format!("Bearer {t}"));
    let resp = match (method, body) {
        ("GET" | "DELETE", _) => {
            let mut r = if method == "GET" {
                agent.get(url)
            } else {
                agent.delete(url)
            };
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            r.call()
        }
        (m, b) => {
            let mut r = if m == "PUT" {
                agent.put(url)
            } else {
                agent.post(url)
            };
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            match b {
                Some((ct, bytes)) => r.header("content-type", ct).send(&bytes[..]),
                None => r.send_empty(),
            }
        }
    };
    let mut resp = resp.expect("HTTP request");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, text)
}

pub fn json_of(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("bad JSON {e}: {text}"))
}

/// Records every POST it receives and answers with `status` (settable).
/// One delivery: lower-cased headers and the body.
pub type Delivery = (Vec<(String, String)>, Vec<u8>);

pub struct Webhook {
    pub url: String,
    pub received: Arc<Mutex<Vec<Delivery>>>,
    pub status: Arc<Mutex<u16>>,
}

impl Webhook {
    pub fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(Mutex::new(200u16));
        let (r, s) = (received.clone(), status.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut headers = Vec::new();
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.trim_end().split_once(':') {
                        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                    }
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                let _ = reader.read_exact(&mut body);
                let code = *s.lock().unwrap();
                r.lock().unwrap().push((headers, body));
                let _ = write!(
                    conn,
                    "HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Webhook {
            url,
            received,
            status,
        }
    }

    /// Waits for the `n`th delivery (1-based).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Delivery {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(x) = self.received.lock().unwrap().get(n - 1) {
                return x.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no webhook delivery {n} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Verifies `jwt` with a standard JWT library under the key its `kid` names in the server's
/// JWKS; returns its claims.
pub fn verify_jwt(server: &Server, jwt: &str) -> serde_json::Value {
    let jwks = json_of(
        &http(
            "GET",
            &format!("{}/.well-known/jwks.json", server.url()),
            None,
            None,
        )
        .1,
    );
    verify_with_jwks(&jwks, jwt)
}

/// jsonwebtoken's verifier under the JWKS key the token's `kid` names. The library predates
/// RFC 9864, so its header parser would refuse `Ed25519`: the header is read here, the
/// signature checked by the library's own primitive.
pub fn verify_with_jwks(jwks: &serde_json::Value, jwt: &str) -> serde_json::Value {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (input, sig) = jwt.rsplit_once('.').unwrap();
    let (h, c) = input.split_once('.').unwrap();
    let header: serde_json::Value = serde_json::from_slice(&b64.decode(h).unwrap()).unwrap();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .unwrap_or_else(|| panic!("no JWKS key for kid {}", header["kid"]));
    assert_eq!(header["alg"], key["alg"], "{header} {key}");
    let s = |f: &str| key[f].as_str().unwrap();
    let (decoding, alg) = match s("kty") {
        "EC" => (
            jsonwebtoken::DecodingKey::from_ec_components(s("x"), s("y")).unwrap(),
            jsonwebtoken::Algorithm::ES384,
        ),
        _ => (
            jsonwebtoken::DecodingKey::from_ed_components(s("x")).unwrap(),
            jsonwebtoken::Algorithm::EdDSA,
        ),
    };
    assert!(
        jsonwebtoken::crypto::verify(sig, input.as_bytes(), &decoding, alg).unwrap(),
        "JWT signature"
    );
    serde_json::from_slice(&b64.decode(c).unwrap()).unwrap()
}

/// A one-region policy (4 pages of kernel code at address 0) for tests that need any policy.
pub fn tiny_policy() -> vmattest_core::attest::Policy {
    vmattest_core::attest::Policy::parse(
        "name = \"p\"\n[[region]]\nname = \"code\"\nstart = 0\nlen = 0x4000\nkernel_code = true\ncritical = true\n",
        None,
    )
    .unwrap()
}

/// Registers the tiny policy and `vms` on `host` (subset `all`, threshold 50); returns the
/// policy id.
pub fn register_vms(admin: &vmattest_client::Client, host: &str, vms: &[&str]) -> String {
    let pid = admin
        .add_policy(&vmattest_api::NewPolicy {
            toml: tiny_policy().to_toml(),
        })
        .unwrap()
        .id;
    for vm in vms {
        admin
            .add_vm(&vmattest_api::NewVm {
                name: (*vm).into(),
                host: host.into(),
                policy_id: pid.clone(),
                approved_subsets: vec!["all".into()],
                threshold: 50,
                webhook: None,
                on_alert: Default::default(),
            })
            .unwrap();
    }
    pid
}

/// A new token of `role` (acting for `host`, for agents).
pub fn token(
    admin: &vmattest_client::Client,
    role: vmattest_api::Role,
    host: Option<&str>,
) -> String {
    admin
        .create_token(&vmattest_api::NewToken {
            role,
            host: host.map(str::to_string),
        })
        .unwrap()
        .token
}
