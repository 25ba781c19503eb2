//! Evidence appraisal: every check of docs/API.md in order, then the comparison with the
//! golden baseline, the EAR, and one group-committed write that consumes the nonce.

use std::borrow::Cow;
use std::time::Instant;

use vmattest_api::{AlertAction, AttestationResult, RegionResult, Role};
use vmattest_core::alg::{Digest, HashAlg, PAGE_SIZE, PageIndex};
use vmattest_core::attest::patch::{self, SiteFinding};
use vmattest_core::attest::{
    Evidence, Region, RegionOutcome, SignedEvidence, SiteEvidence, SiteReport, appraise,
    region_digest, sample_pages,
};
use vmattest_core::record::{Signable, Signed};
use vmattest_sign::record::{RecordSigError, verify_signed};

use crate::auth::Caller;
use crate::db::{AlertDraft, EvidenceCommit, NonceOutcome};
use crate::ear::EarClaims;
use crate::error::ApiError;
use crate::nonce::NonceError;
use crate::state::{AppState, Baseline, VmEntry, now_secs};
use vmattest_api::ErrorCode;

/// One signature, by the key registered for the VM's host. `what` names the object in errors.
pub(crate) fn check_host_signature<T: Signable>(
    signed: &Signed<T>,
    vm: &VmEntry,
    what: &str,
) -> Result<(), ApiError> {
    if signed.signatures.len() != 1 {
        return Err(ApiError::new(
            ErrorCode::BadSignature,
            format!(
                "{what}: expected one signature, found {}",
                signed.signatures.len()
            ),
        ));
    }
    verify_signed(signed, std::slice::from_ref(&vm.host_key)).map_err(|e| match e {
        RecordSigError::UnknownSigner { key_id, .. } => ApiError::new(
            ErrorCode::UnknownKey,
            format!(
                "{what} signed by key {key_id}, which is not the key registered for host {}",
                vm.row.host
            ),
        ),
        other => ApiError::new(ErrorCode::BadSignature, format!("{what}: {other}")),
    })
}

fn check_claims(ev: &Evidence, vm: &VmEntry, now: i64, window: i64) -> Result<(), ApiError> {
    let time = i64::try_from(ev.time.secs).unwrap_or(i64::MAX);
    if (time - now).abs() > window {
        return Err(ApiError::new(
            ErrorCode::Stale,
            format!(
                "evidence time {time} is {}s from the server's clock {now}; the window is {window}s",
                time - now
            ),
        ));
    }
    let policy_id = &vm.policy_id;
    if ev.policy_id.to_hex() != *policy_id {
        return Err(ApiError::new(
            ErrorCode::PolicyMismatch,
            format!(
                "evidence names policy {}, expected {policy_id}",
                ev.policy_id
            ),
        ));
    }
    if !vm.row.subsets.contains(&ev.subset) || vm.policy.subset(&ev.subset).is_none() {
        return Err(ApiError::new(
            ErrorCode::UnapprovedSubset,
            format!(
                "subset {:?} is not approved for VM {}; approved: {}",
                ev.subset,
                vm.row.name,
                vm.row.subsets.join(", ")
            ),
        ));
    }
    if ev.alg != vm.policy.alg {
        return Err(ApiError::new(
            ErrorCode::Algorithm,
            format!(
                "evidence uses {}, the policy allows {}",
                ev.alg, vm.policy.alg
            ),
        ));
    }
    Ok(())
}

/// With patch-site tables in the policy: why the site report of `pages` of `region` does not
/// fit the baseline's sites there, naming page and offset where it can; `None` when it fits.
/// A report named by fingerprint must be the last whole one that passed, or the agent is told
/// to send it whole.
fn site_detail(
    vm: &VmEntry,
    region: &Region,
    pages: &[PageIndex],
    base: &Baseline,
    got: Option<&SiteEvidence>,
) -> Result<Option<String>, ApiError> {
    if !vm.policy.has_sites() {
        return Ok(None);
    }
    let all = base.sites.sites();
    let expected = patch::sites_of_pages(all, region.start, region.pages, pages);
    // Usually the evidence covers every site of the baseline: its groups are already known.
    let whole = matches!(expected, Cow::Borrowed(e) if e.len() == all.len());
    let report = match got {
        None => {
            return Ok(Some(
                "no patch-site report, and the policy has patch-site tables".into(),
            ));
        }
        Some(SiteEvidence::Same(print)) => {
            return if whole && base.passed(print) {
                Ok(None)
            } else {
                Err(ApiError::new(
                    ErrorCode::UnknownSiteReport,
                    format!(
                        "region {}: evidence names patch-site report {print}, which is not the \
                         last that passed for VM {}; send it whole",
                        region.name, vm.row.name
                    ),
                ))
            };
        }
        Some(SiteEvidence::Whole(report)) => report,
    };
    let (alg, text) = (vm.policy.alg, vm.policy.text());
    let checked = if whole {
        check_whole(base, alg, report, text)
    } else {
        patch::check_report(alg, &expected, report, text)
    };
    let Err(finding) = checked else {
        return Ok(None);
    };
    Ok(Some(match finding.site() {
        Some(site) => {
            let off = site.addr.0.saturating_sub(region.start.0);
            let page = PAGE_SIZE as u64;
            format!(
                "page {} offset {:#x}: {}",
                off / page,
                off % page,
                finding.describe()
            )
        }
        None => finding.describe(),
    }))
}

/// A report of every baseline site; one equal to the last that passed passes again.
fn check_whole(
    base: &Baseline,
    alg: HashAlg,
    report: &SiteReport,
    text: Option<(u64, u64)>,
) -> Result<(), SiteFinding> {
    // The policy (its algorithm and kernel text) is fixed for the baseline's lifetime.
    let print = report.fingerprint();
    if base.passed(&print) {
        return Ok(());
    }
    base.sites.check(alg, report, text)?;
    base.set_passed(print);
    Ok(())
}

/// Compares each region with the baseline; returns the outcome of every region considered.
fn compare(ev: &Evidence, vm: &VmEntry, base: &Baseline) -> Result<Vec<RegionOutcome>, ApiError> {
    let subset = vm
        .policy
        .subset(&ev.subset)
        .ok_or_else(|| ApiError::new(ErrorCode::UnapprovedSubset, "unknown subset"))?;
    let names: Vec<&str> = ev.regions.iter().map(|r| r.name.as_str()).collect();
    if names
        != subset
            .regions
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    {
        return Err(ApiError::new(
            ErrorCode::Regions,
            format!(
                "evidence has regions [{}], subset {} has [{}]",
                names.join(", "),
                subset.id,
                subset.regions.join(", ")
            ),
        ));
    }
    let mut outcomes = Vec::with_capacity(ev.regions.len() + 1);
    for got in &ev.regions {
        let Some(region) = vm.policy.region(&got.name) else {
            return Err(ApiError::new(
                ErrorCode::Regions,
                format!("unknown region {}", got.name),
            ));
        };
        let pages = sample_pages(&ev.nonce, region);
        if got.pages != pages.len() as u64 {
            return Err(ApiError::new(
                ErrorCode::Regions,
                format!(
                    "region {} covers {} pages, expected {}",
                    got.name,
                    got.pages,
                    pages.len()
                ),
            ));
        }
        let base_pages = base
            .pages
            .get(&region.name)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let expected = if pages.len() as u64 == region.pages {
            base.full.get(&region.name).copied()
        } else {
            let entries: Option<Vec<(PageIndex, Digest)>> = pages
                .iter()
                .map(|p| {
                    usize::try_from(p.0)
                        .ok()
                        .and_then(|i| base_pages.get(i))
                        .map(|d| (*p, *d))
                })
                .collect();
            entries.map(|e| region_digest(vm.policy.alg, &region.name, &e))
        };
        let detail = site_detail(vm, region, &pages, base, got.sites.as_ref())?;
        outcomes.push(RegionOutcome {
            name: region.name.clone(),
            weight: region.weight,
            critical: region.critical,
            kernel_code: region.kernel_code,
            matched: expected.is_some_and(|d| d.ct_eq(&got.digest)) && detail.is_none(),
            detail,
        });
    }
    // Kernel code is judged in full whatever the subset samples.
    if let Some(kc) = vm.policy.regions.iter().find(|r| r.kernel_code) {
        // A subset region covering every page of it was checked with its sites above.
        let covered = ev
            .regions
            .iter()
            .any(|r| r.name == kc.name && r.pages == kc.pages);
        let detail = if covered {
            None
        } else {
            let all: Vec<PageIndex> = (0..kc.pages).map(PageIndex).collect();
            site_detail(vm, kc, &all, base, ev.kernel_code_sites.as_ref())?
        };
        let matched = detail.is_none()
            && match (&ev.kernel_code, base.full.get(&kc.name)) {
                (Some(got), Some(want)) => got.ct_eq(want),
                _ => false,
            };
        match outcomes.iter_mut().find(|o| o.name == kc.name) {
            Some(o) => {
                o.matched &= matched;
                o.detail = o.detail.take().or(detail);
            }
            None => outcomes.push(RegionOutcome {
                name: kc.name.clone(),
                weight: kc.weight,
                critical: kc.critical,
                kernel_code: true,
                matched,
                detail,
            }),
        }
    }
    Ok(outcomes)
}

pub async fn submit(
    state: &AppState,
    caller: &Caller,
    body: &[u8],
) -> Result<AttestationResult, ApiError> {
    let started = Instant::now();
    let out = submit_inner(state, caller, body).await;
    state.metrics.evidence(&out, started.elapsed());
    out
}

async fn submit_inner(
    state: &AppState,
    caller: &Caller,
    body: &[u8],
) -> Result<AttestationResult, ApiError> {
    caller.require(&[Role::Agent])?;
    let signed = SignedEvidence::decode(body)
        .map_err(|e| ApiError::new(ErrorCode::Malformed, format!("evidence: {e}")))?;
    let ev = signed.value();
    let vm = state.vm(&ev.vm).await.map_err(|e| {
        if e.code == ErrorCode::NotFound {
            ApiError::new(
                ErrorCode::UnknownVm,
                format!("VM {} is not registered", ev.vm),
            )
        } else {
            e
        }
    })?;
    caller.require_host(&vm.row.host, &vm.row.name)?;
    check_host_signature(&signed, &vm, "evidence")?;
    let now = now_secs();
    check_claims(ev, &vm, now, state.settings.window_secs)?;
    let expires = state
        .nonces
        .check(&ev.nonce, &ev.vm, &ev.subset, now)
        .map_err(|e| match e {
            NonceError::Unknown => ApiError::new(
                ErrorCode::UnknownNonce,
                format!(
                    "nonce {} was not issued by this server for VM {} and subset {}",
                    hex::encode(&ev.nonce),
                    ev.vm,
                    ev.subset
                ),
            ),
            NonceError::Expired { expires } => ApiError::new(
                ErrorCode::ExpiredNonce,
                format!("nonce expired at {expires}, {}s ago", now - expires),
            ),
        })?;
    let base = vm.baseline.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::NoBaseline,
            format!("VM {} has no golden baseline for its policy", vm.row.name),
        )
    })?;
    let outcomes = compare(ev, &vm, base)?;
    let appraisal = appraise(&outcomes, vm.tpm_backed);
    let regions: Vec<(String, bool)> = outcomes
        .iter()
        .map(|o| (o.name.clone(), o.matched))
        .collect();
    let policy_id = &vm.policy_id;
    let ear = state.ear.current().ear(&EarClaims {
        vm: &ev.vm,
        iat: now,
        nonce: &ev.nonce,
        policy_id,
        subset: &ev.subset,
        appraisal: &appraisal,
        regions: &regions,
        baseline_id: base.id,
    })?;
    let alert = appraisal.score < vm.row.threshold;
    let mut result = AttestationResult {
        id: 0,
        vm: ev.vm.clone(),
        time: vmattest_api::time::from_secs(now),
        score: appraisal.score,
        status: appraisal.status.name().to_string(),
        trust_vector: appraisal
            .vector
            .claims()
            .iter()
            .map(|(k, v)| ((*k).to_string(), *v))
            .collect(),
        regions: outcomes
            .iter()
            .map(|o| RegionResult {
                name: o.name.clone(),
                matched: o.matched,
                weight: o.weight,
                critical: o.critical,
                detail: o.detail.clone(),
            })
            .collect(),
        alert,
        rollback_seq: (alert && vm.on_alert == AlertAction::Rollback)
            .then_some(base.provenance.seq),
        ear,
    };
    let draft = alert.then(|| {
        let failed: Vec<&str> = outcomes
            .iter()
            .filter(|o| !o.matched)
            .map(|o| o.name.as_str())
            .collect();
        let details: Vec<String> = outcomes
            .iter()
            .filter_map(|o| o.detail.as_ref().map(|d| format!("{}: {d}", o.name)))
            .collect();
        let cause = if failed.is_empty() {
            "score below threshold".to_string()
        } else {
            format!("regions differ: {}", failed.join(", "))
        };
        // Details stay out of the cause, which keys the one active alert per VM and cause.
        let more = if details.is_empty() {
            String::new()
        } else {
            format!(" ({})", details.join("; "))
        };
        AlertDraft {
            message: format!(
                "VM {} scored {} (threshold {}), status {}; {cause}{more}",
                ev.vm, appraisal.score, vm.row.threshold, appraisal.status,
            ),
            cause,
            webhook: vm.row.webhook_url.is_some(),
        }
    });
    let body_json = serde_json::to_string(&result)
        .map_err(|e| ApiError::from(crate::error::ServerError::Corrupt(e.to_string())))?;
    let outcome = state
        .writer
        .submit(EvidenceCommit {
            nonce: ev.nonce.clone(),
            expires,
            vm: ev.vm.clone(),
            now,
            time: i64::try_from(ev.time.secs).unwrap_or(i64::MAX),
            score: i64::from(appraisal.score),
            status: appraisal.status.name().to_string(),
            body: body_json,
            evidence: body.to_vec(),
            alert: draft.clone(),
        })
        .await?;
    match outcome {
        NonceOutcome::Stored { result_id, alert } => {
            result.id = result_id;
            state
                .metrics
                .vm_result(&ev.vm, now, appraisal.score, appraisal.status.name());
            match (alert, draft) {
                (Some(a), Some(d)) if a.new => {
                    tracing::warn!(vm = %ev.vm, alert = a.id, result_id, score = appraisal.score, status = %appraisal.status, "{}", d.message);
                    state.metrics.alert();
                    if d.webhook {
                        state.webhook_wake.notify_one();
                    }
                }
                (Some(a), _) => {
                    tracing::info!(vm = %ev.vm, alert = a.id, result_id, score = appraisal.score, status = %appraisal.status, "below threshold again; counted in the active alert");
                }
                _ => {
                    tracing::info!(vm = %ev.vm, result_id, score = appraisal.score, status = %appraisal.status, "appraised");
                }
            }
            Ok(result)
        }
        NonceOutcome::Replayed => Err(ApiError::new(
            ErrorCode::ReplayedNonce,
            format!(
                "nonce {} was already used: evidence is accepted once",
                hex::encode(&ev.nonce)
            ),
        )),
    }
}
