//! `vmattest-loadgen`: benchmarks a running attestation server with many simulated agents.
//!
//! Setup (admin token): one policy, then per agent a host with its own Ed25519 key, a VM on it
//! with a golden baseline, and an agent token. Load: every agent loops challenge → signed
//! evidence → check the result is "affirming", until the duration or the request budget is
//! spent. Reports evidence/s and the latency of the evidence POST and of the whole round.

mod client;
mod fake;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use vmattest_api::{
    AlertAction, AttestationResult, BaselineInfo, Challenge, Health, Host, NewBaseline, NewHost,
    NewPolicy, NewToken, NewVm, PolicyInfo, Role, TokenIssued, Vm,
};
use vmattest_sign::{SecretKey, SigAlg, Signer};

use crate::client::{Api, CallError};
use crate::fake::FakeVm;
use crate::stats::{AgentStats, Report};

/// Setup requests in flight at once.
const SETUP_CONCURRENCY: usize = 16;
/// Pause after a transport error, so that a dead server is not spun on.
const ERROR_BACKOFF: Duration = Duration::from_millis(20);
const EXPECTED_STATUS: &str = "affirming";

#[derive(Debug, Parser)]
#[command(
    name = "vmattest-loadgen",
    version,
    about = "Load benchmark for `vmattest serve`"
)]
struct Args {
    /// The server, as http://HOST:PORT (plain HTTP only).
    #[arg(long)]
    server: String,
    /// File holding an admin token (the server's bootstrap admin token file).
    #[arg(long)]
    admin_token_file: PathBuf,
    /// Simulated agents, each with its own host, key, VM and token.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    agents: u32,
    /// Seconds of load (after setup).
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Stop after this many rounds in total.
    #[arg(long, default_value_t = 200_000)]
    max_requests: u64,
    /// Seconds before one request counts as timed out.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Jump-label sites in the VM's kernel-code region (6,300 in a distribution kernel): the
    /// evidence then carries site reports, which the server checks. 0 = no jump table.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1 << 20))]
    patch_sites: u32,
    /// Static-call sites and trampolines besides the jump labels (4,700 in a distribution
    /// kernel); needs --patch-sites. 0 = no static calls.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1 << 19))]
    static_calls: u32,
    /// Send every site report whole, never by the fingerprint a challenge names (the cost of a
    /// kernel that patched since the last round, every round).
    #[arg(long)]
    whole_site_reports: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Exit non-zero if any round failed.
    #[arg(long)]
    strict: bool,
}

/// One simulated agent: its VM, key and token.
#[derive(Debug)]
struct Agent {
    vm: String,
    token: String,
    key: SecretKey,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmattest-loadgen: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("vmattest-loadgen: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                print!("{}", report.table());
            }
            if report.evidence_ok == 0 || (args.strict && report.errors_total > 0) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("vmattest-loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: &Args) -> Result<Report, String> {
    if !(args.duration.is_finite() && args.duration > 0.0) {
        return Err(format!(
            "--duration {}: expected a positive number",
            args.duration
        ));
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(format!(
            "--timeout {}: expected a positive number",
            args.timeout
        ));
    }
    let admin = std::fs::read_to_string(&args.admin_token_file)
        .map_err(|e| format!("{}: {e}", args.admin_token_file.display()))?
        .trim()
        .to_string();
    if admin.is_empty() {
        return Err(format!("{}: empty", args.admin_token_file.display()));
    }
    let agents = usize::try_from(args.agents).map_err(|e| e.to_string())?;
    let api = Api::new(
        &args.server,
        agents + SETUP_CONCURRENCY,
        Duration::from_secs_f64(args.timeout),
    )?;
    let health: Health = api
        .get("/health", None)
        .await
        .map_err(|e| format!("GET /v1/health: {e}"))?;

    let started = Instant::now();
    let (vm, agents) = setup(&api, &admin, agents, args.patch_sites, args.static_calls).await?;
    let setup_time = started.elapsed();
    eprintln!(
        "vmattest-loadgen: set up {} agents in {:.2} s; load for {} s or {} rounds",
        agents.len(),
        setup_time.as_secs_f64(),
        args.duration,
        args.max_requests
    );

    let budget = Arc::new(AtomicU64::new(0));
    let vm = Arc::new(vm);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let mut tasks = JoinSet::new();
    for agent in agents {
        let (api, vm, budget) = (api.clone(), Arc::clone(&vm), Arc::clone(&budget));
        let (max, whole) = (args.max_requests, args.whole_site_reports);
        tasks.spawn(
            async move { agent_loop(&api, &vm, &agent, &budget, max, deadline, whole).await },
        );
    }
    let mut total = AgentStats::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(stats) => total.merge(stats),
            Err(e) => total.error(format!("agent task: {e}")),
        }
    }
    let elapsed = started.elapsed();
    Ok(Report::new(
        args.server.clone(),
        health.database,
        usize::try_from(args.agents).unwrap_or(usize::MAX),
        setup_time,
        elapsed,
        total,
    ))
}

/// Registers the policy, then every agent's host, VM, baseline and token.
async fn setup(
    api: &Api,
    admin: &str,
    n: usize,
    sites: u32,
    calls: u32,
) -> Result<(FakeVm, Vec<Agent>), String> {
    let mut tag = [0u8; 4];
    getrandom::fill(&mut tag).map_err(|e| format!("randomness: {e}"))?;
    let tag = hex::encode(tag);
    let policy = fake::policy(&format!("loadgen-{tag}"), sites, calls)?;
    let info: PolicyInfo = api
        .post_json(
            "/policies",
            admin,
            &NewPolicy {
                toml: policy.to_toml(),
            },
        )
        .await
        .map_err(|e| format!("POST /v1/policies: {e}"))?;
    if info.id != policy.id().to_hex() {
        eprintln!(
            "vmattest-loadgen: warning: the server's policy id {} is not the policy's digest {}",
            info.id,
            policy.id().to_hex()
        );
    }
    let vm = FakeVm::new(policy, sites, calls);
    let limit = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let (api, limit, vm, admin) = (
            api.clone(),
            Arc::clone(&limit),
            vm.clone(),
            admin.to_string(),
        );
        let (tag, policy_id) = (tag.clone(), info.id.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire().await.map_err(|e| e.to_string())?;
            setup_agent(&api, &admin, &vm, &policy_id, &format!("lg-{tag}-{i}")).await
        });
    }
    let mut agents = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        agents.push(done.map_err(|e| format!("setup task: {e}"))??);
    }
    agents.sort_by(|a, b| a.vm.cmp(&b.vm));
    Ok((vm, agents))
}

async fn setup_agent(
    api: &Api,
    admin: &str,
    fake: &FakeVm,
    policy_id: &str,
    name: &str,
) -> Result<Agent, String> {
    let key = SecretKey::generate(SigAlg::Ed25519).map_err(|e| format!("keygen: {e}"))?;
    let host = format!("{name}-host");
    let vm = format!("{name}-vm");
    let _: Host = api
        .post_json(
            "/hosts",
            admin,
            &NewHost {
                name: host.clone(),
                public_key_pem: key.public_key().to_pem(),
                tpm: None,
                group: None,
            },
        )
        .await
        .map_err(|e| format!("POST /v1/hosts ({host}): {e}"))?;
    let _: Vm = api
        .post_json(
            "/vms",
            admin,
            &NewVm {
                name: vm.clone(),
                host: host.clone(),
                policy_id: policy_id.to_string(),
                approved_subsets: vec!["all".into()],
                threshold: 50,
                webhook: None,
                on_alert: AlertAction::None,
            },
        )
        .await
        .map_err(|e| format!("POST /v1/vms ({vm}): {e}"))?;
    let _: BaselineInfo = api
        .post_json(
            &format!("/vms/{vm}/baseline"),
            admin,
            &NewBaseline {
                policy_id: policy_id.to_string(),
                regions: fake.baseline_regions(),
                patch_sites: fake.patch_sites(),
                call_sites: fake.call_sites(),
                provenance: fake.provenance(&vm, &key),
            },
        )
        .await
        .map_err(|e| format!("POST /v1/vms/{vm}/baseline: {e}"))?;
    let token: TokenIssued = api
        .post_json(
            "/tokens",
            admin,
            &NewToken {
                role: Role::Agent,
                host: Some(host.clone()),
            },
        )
        .await
        .map_err(|e| format!("POST /v1/tokens (agent of {host}): {e}"))?;
    Ok(Agent {
        vm,
        token: token.token,
        key,
    })
}

/// Rounds until the deadline or until `max` rounds were started by all agents together.
async fn agent_loop(
    api: &Api,
    fake: &FakeVm,
    agent: &Agent,
    budget: &AtomicU64,
    max: u64,
    deadline: Instant,
    whole: bool,
) -> AgentStats {
    let mut stats = AgentStats::default();
    while Instant::now() < deadline && budget.fetch_add(1, Ordering::Relaxed) < max {
        let round = Instant::now();
        match one_round(api, fake, agent, whole).await {
            Ok(evidence_time) => {
                stats.ok += 1;
                stats.evidence_us.push(micros(evidence_time));
                stats.round_us.push(micros(round.elapsed()));
            }
            Err(kind) => {
                if kind.starts_with("transport") {
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
                stats.error(kind);
            }
        }
    }
    stats
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Challenge, evidence, result check; the evidence POST's duration, or an error kind.
async fn one_round(
    api: &Api,
    fake: &FakeVm,
    agent: &Agent,
    whole: bool,
) -> Result<Duration, String> {
    let kind = |step: &str, e: CallError| format!("{step}: {}", e.kind());
    let challenge: Challenge = api
        .post_empty(&format!("/vms/{}/challenge", agent.vm), &agent.token)
        .await
        .map_err(|e| kind("challenge", e))?;
    let nonce =
        hex::decode(&challenge.nonce).map_err(|_| "challenge: nonce not hex".to_string())?;
    let evidence = fake
        .evidence(
            &agent.vm,
            &nonce,
            &challenge.subset,
            &agent.key,
            fake::now(),
            challenge.site_report.as_deref().filter(|_| !whole),
        )
        .map_err(|_| "challenge: unknown subset".to_string())?;
    let body = fake::sign(evidence, &agent.key).map_err(|_| "evidence: encode".to_string())?;
    let posted = Instant::now();
    let result: AttestationResult = api
        .post_bytes("/evidence", &agent.token, body)
        .await
        .map_err(|e| kind("evidence", e))?;
    let took = posted.elapsed();
    if result.status != EXPECTED_STATUS {
        return Err(format!("evidence: status {}", result.status));
    }
    Ok(took)
}
