//! The agent loop: ask the server for a challenge, measure what it asks for, sign, submit;
//! repeat on the policy's schedule; roll the VM back when the server's alert action says so.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vmattest_core::class::{Classify, ErrorClass};

use vmattest_api::{AttestationResult, Challenge, ErrorCode};
use vmattest_client::{Client, ClientError};
use vmattest_core::attest::{AttestError, Policy};
use vmattest_host::Verifier;
use vmattest_host::vm::HostVmError;
use vmattest_qemu::restore::RestoreReport;
use vmattest_sign::Signer;

use crate::evidence::{EvidenceError, Measured, evidence_bytes, name_known_reports};
use crate::guest::Guest;
use crate::measure::{MeasureError, measure_vm};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("challenge for {vm}: policy")]
    Policy {
        vm: String,
        #[source]
        source: AttestError,
    },
    #[error(
        "challenge for {vm}: policy id {given} does not match its policy, whose id is {actual}"
    )]
    PolicyId {
        vm: String,
        given: String,
        actual: String,
    },
    #[error("challenge for {vm}: {field}: expected {expected}, found {found:?}")]
    Challenge {
        vm: String,
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error(transparent)]
    Measure(#[from] MeasureError),
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
    #[error("snapshot request")]
    Report(#[from] crate::report::ReportError),
    #[error("rollback to seq {seq}")]
    Rollback {
        seq: u64,
        #[source]
        source: HostVmError,
    },
    #[error("rollback to seq {seq}")]
    DomainRollback {
        seq: u64,
        #[source]
        source: vmattest_host::domain::HostDomainError,
    },
}

impl Classify for RunError {
    /// A challenge the server sent that cannot be used is the server failing (environment);
    /// a policy that does not hash to the id it was sent under fails verification.
    fn class(&self) -> ErrorClass {
        match self {
            RunError::Client(e) => e.class(),
            RunError::Policy { .. } | RunError::Challenge { .. } => ErrorClass::Environment,
            RunError::PolicyId { .. } => ErrorClass::Verification,
            RunError::Measure(e) => e.class(),
            RunError::Evidence(e) => e.class(),
            RunError::Report(e) => e.class(),
            RunError::Rollback { source, .. } => source.class(),
            RunError::DomainRollback { source, .. } => source.class(),
        }
    }
}

/// One challenge answered: the server's result and the policy's schedule.
#[derive(Debug)]
pub struct Answered {
    /// With what the server named of its differing regions when they could be located.
    pub result: AttestationResult,
    pub schedule_secs: u64,
    /// Why the differing regions could not be located; the result stands.
    pub locate_error: Option<RunError>,
}

/// Checks a challenge and returns its policy and nonce.
pub fn check_challenge(vm: &str, c: &Challenge) -> Result<(Policy, Vec<u8>), RunError> {
    if c.vm != vm {
        return Err(RunError::Challenge {
            vm: vm.to_owned(),
            field: "vm",
            expected: "the VM asked for",
            found: c.vm.clone(),
        });
    }
    let policy = Policy::parse(&c.policy_toml, None).map_err(|source| RunError::Policy {
        vm: vm.to_owned(),
        source,
    })?;
    let actual = policy.id().to_hex();
    if !actual.eq_ignore_ascii_case(&c.policy_id) {
        return Err(RunError::PolicyId {
            vm: vm.to_owned(),
            given: c.policy_id.clone(),
            actual,
        });
    }
    let nonce = hex::decode(&c.nonce).map_err(|_| RunError::Challenge {
        vm: vm.to_owned(),
        field: "nonce",
        expected: "hex",
        found: c.nonce.clone(),
    })?;
    Ok((policy, nonce))
}

/// Challenge, measure, sign, submit: one round. A site report is named by fingerprint when
/// the challenge says the server holds it; should the server have lost it since (a restart,
/// another server), the round is made again with the report whole.
pub fn answer_challenge(
    client: &Client,
    guest: &Guest<'_>,
    signer: &dyn Signer,
    vm_name: &str,
    paused: bool,
) -> Result<Answered, RunError> {
    whole_if_unknown(|by_fingerprint| {
        answer(client, guest, signer, vm_name, paused, by_fingerprint)
    })
}

/// `round(true)`; once more as `round(false)` if the server did not hold the site report the
/// first named.
fn whole_if_unknown<T>(mut round: impl FnMut(bool) -> Result<T, RunError>) -> Result<T, RunError> {
    match round(true) {
        Err(RunError::Client(e)) if e.code() == Some(&ErrorCode::UnknownSiteReport) => round(false),
        r => r,
    }
}

fn answer(
    client: &Client,
    guest: &Guest<'_>,
    signer: &dyn Signer,
    vm_name: &str,
    paused: bool,
    by_fingerprint: bool,
) -> Result<Answered, RunError> {
    let challenge = client.challenge(vm_name)?;
    let (policy, nonce) = check_challenge(vm_name, &challenge)?;
    let mut measurement = measure_vm(guest, &policy, &challenge.subset, &nonce, paused)?;
    if by_fingerprint {
        name_known_reports(&mut measurement, challenge.site_report.as_deref());
    }
    let bytes = evidence_bytes(
        Measured {
            vm: vm_name,
            nonce: &nonce,
            policy: &policy,
            subset: &challenge.subset,
            measurement,
        },
        signer,
    )?;
    let mut result = client.evidence(&bytes)?;
    let mut locate_error = None;
    if result.regions.iter().any(|r| !r.matched) {
        match crate::locate::locate_vm(client, guest, &policy, &result) {
            Ok(Some(r)) => result = r,
            Ok(None) => {}
            Err(e) => locate_error = Some(e),
        }
    }
    Ok(Answered {
        result,
        schedule_secs: policy.schedule_secs,
        locate_error,
    })
}

/// One attestation of the VM: the server's result.
pub fn attest_once(
    client: &Client,
    guest: &Guest<'_>,
    signer: &dyn Signer,
    vm_name: &str,
    paused: bool,
) -> Result<AttestationResult, RunError> {
    Ok(answer_challenge(client, guest, signer, vm_name, paused)?.result)
}

/// The chain a VM is rolled back from, and the keys and secret it is verified with.
#[derive(Debug, Clone, Copy)]
pub struct Rollback<'a> {
    pub store: &'a Path,
    pub verifier: &'a Verifier,
}

/// Verifies the chain up to `seq` and rolls the VM back to it: the one rollback of
/// `snapshot restore --vm` and of the server's alert action.
pub fn roll_back(
    guest: &Guest<'_>,
    from: &Rollback<'_>,
    seq: u64,
) -> Result<RestoreReport, RunError> {
    guest.roll_back(from.store, from.verifier, seq)
}

#[derive(Debug, Clone, Copy)]
pub struct LoopOptions<'a> {
    pub vm_name: &'a str,
    /// Pause the guest while its memory is read.
    pub paused: bool,
    /// Between rounds; the policy's `schedule_secs` when `None`.
    pub interval: Option<Duration>,
    /// Stop after this many rounds (answered or failed).
    pub count: Option<u64>,
    /// Roll back when a result asks for it.
    pub rollback: Option<Rollback<'a>>,
}

/// What happened in one round of [`run_loop`].
#[derive(Debug)]
pub enum Event {
    Answered {
        round: u64,
        result: AttestationResult,
    },
    RolledBack {
        round: u64,
        seq: u64,
        report: RestoreReport,
    },
    /// A snapshot request was answered with a signed report.
    Reported {
        round: u64,
        request: i64,
        seq: u64,
        verdict: String,
    },
    /// A result asked for a rollback, but the agent has no store to roll back from.
    RollbackSkipped {
        round: u64,
        seq: u64,
    },
    Failed {
        round: u64,
        error: RunError,
    },
    /// A result did not match, and naming where failed; the result stands.
    LocateFailed {
        round: u64,
        error: RunError,
    },
}

/// Used between rounds until a policy has been seen.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// Attests the VM every interval until `stop` is set or `count` rounds ran; a round that
/// fails is reported and the loop goes on. Returns the number of rounds.
pub fn run_loop(
    client: &Client,
    guest: &Guest<'_>,
    signer: &dyn Signer,
    opts: &LoopOptions<'_>,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(Event),
) -> u64 {
    let mut schedule = DEFAULT_INTERVAL;
    let mut round = 0u64;
    while !stop.load(Ordering::SeqCst) {
        round += 1;
        let started = Instant::now();
        match answer_challenge(client, guest, signer, opts.vm_name, opts.paused) {
            Ok(a) => {
                schedule = Duration::from_secs(a.schedule_secs);
                let rollback_seq = a.result.rollback_seq;
                on_event(Event::Answered {
                    round,
                    result: a.result,
                });
                if let Some(error) = a.locate_error {
                    on_event(Event::LocateFailed { round, error });
                }
                match (rollback_seq, &opts.rollback) {
                    (Some(seq), Some(from)) => match roll_back(guest, from, seq) {
                        Ok(report) => on_event(Event::RolledBack { round, seq, report }),
                        Err(error) => on_event(Event::Failed { round, error }),
                    },
                    (Some(seq), None) => on_event(Event::RollbackSkipped { round, seq }),
                    (None, _) => {}
                }
            }
            Err(error) => on_event(Event::Failed { round, error }),
        }
        if let Some(from) = &opts.rollback {
            answer_snapshot_requests(client, guest, signer, opts.vm_name, from, round, on_event);
        }
        if opts.count.is_some_and(|n| round >= n) {
            break;
        }
        let wait = opts.interval.unwrap_or(schedule);
        while !stop.load(Ordering::SeqCst) && started.elapsed() < wait {
            std::thread::sleep(
                wait.saturating_sub(started.elapsed())
                    .min(Duration::from_millis(100)),
            );
        }
    }
    round
}

/// Answers the server's pending snapshot requests: each is a signed report comparing the
/// running VM with the requested seq of the store, carrying the request's nonce.
pub fn answer_snapshot_requests(
    client: &Client,
    guest: &Guest<'_>,
    signer: &dyn Signer,
    vm_name: &str,
    from: &Rollback<'_>,
    round: u64,
    on_event: &mut dyn FnMut(Event),
) {
    let requests = match client.snapshot_requests(vm_name) {
        Ok(r) => r,
        Err(e) => {
            return on_event(Event::Failed {
                round,
                error: e.into(),
            });
        }
    };
    for req in requests {
        let outcome = hex::decode(&req.nonce)
            .map_err(|_| RunError::Challenge {
                vm: vm_name.to_owned(),
                field: "snapshot request nonce",
                expected: "hex",
                found: req.nonce.clone(),
            })
            .and_then(|nonce| {
                let chain = crate::report::ChainCheck {
                    store: from.store,
                    seq: req.seq,
                    keys: from.verifier.pinned(),
                    secret: from.verifier.secret(),
                };
                let signed = crate::report::attest_snapshot(&chain, guest, signer, &nonce)?;
                let verdict = signed.value().verdict().to_owned();
                client.post_report(vm_name, &signed.encode().map_err(EvidenceError::from)?)?;
                Ok(verdict)
            });
        match outcome {
            Ok(verdict) => on_event(Event::Reported {
                round,
                request: req.id,
                seq: req.seq,
                verdict,
            }),
            Err(error) => on_event(Event::Failed { round, error }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const POLICY: &str = "name = \"p\"\n[[region]]\nname = \"a\"\nstart = 0\nlen = 0x2000\n";

    #[test]
    fn a_round_whose_site_report_the_server_lost_is_made_again_whole() {
        let refused = |code: ErrorCode| {
            RunError::Client(ClientError::Refused {
                status: code.status(),
                code,
                message: "m".into(),
            })
        };
        let mut calls = Vec::new();
        let r = whole_if_unknown(|by_fingerprint| {
            calls.push(by_fingerprint);
            if by_fingerprint {
                Err(refused(ErrorCode::UnknownSiteReport))
            } else {
                Ok(7)
            }
        });
        assert_eq!((r.unwrap(), calls), (7, vec![true, false]));
        // Any other refusal is the round's outcome; nothing is sent again.
        let mut calls = 0;
        let r: Result<(), _> = whole_if_unknown(|_| {
            calls += 1;
            Err(refused(ErrorCode::ReplayedNonce))
        });
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }

    fn challenge() -> Challenge {
        let p = Policy::parse(POLICY, None).unwrap();
        Challenge {
            vm: "web1".into(),
            nonce: "00112233445566778899aabbccddeeff".into(),
            policy_id: p.id().to_hex(),
            policy_toml: p.to_toml(),
            subset: "all".into(),
            expires: vmattest_api::time::from_secs(0),
            site_report: None,
        }
    }

    #[test]
    fn a_challenge_is_checked() {
        let (p, nonce) = check_challenge("web1", &challenge()).unwrap();
        assert_eq!(p.name, "p");
        assert_eq!(nonce.len(), 16);
        assert_eq!(nonce[15], 0xff);
        let mut c = challenge();
        c.policy_id = "00".repeat(32);
        let e = check_challenge("web1", &c).unwrap_err().to_string();
        assert!(e.contains("policy id"), "{e}");
        let e = check_challenge("web2", &challenge())
            .unwrap_err()
            .to_string();
        assert!(e.contains("vm"), "{e}");
        let mut c = challenge();
        c.nonce = "zz".into();
        assert!(check_challenge("web1", &c).is_err());
        let mut c = challenge();
        c.policy_toml = "name = 1".into();
        let e = check_challenge("web1", &c).unwrap_err().to_string();
        assert!(e.contains("policy"), "{e}");
    }
}
