//! Naming where a region differs from the golden baseline (docs/API.md, "Locating a
//! difference"). Evidence carries one digest per region, so after a result that did not
//! match, the agent sends the region's page digests (the server answers with the pages that
//! differ) and then those pages' bytes, which the server compares with the bytes the
//! baseline keeps. None of it changes a verdict: it adds a detail to the result and alert.

use std::io::Read;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use vmattest_api::{
    AttestationResult, BaselineInfo, ErrorCode, LocateRequest, Located, PagesRequest, Role,
};
use vmattest_core::alg::{Digest, HashAlg, PAGE_SIZE, PageIndex};
use vmattest_core::attest::locate::{
    MAX_KEPT_REGION_BYTES, MAX_LOCATED_PAGES, describe, diff_page, differing_pages, kept_len,
};
use vmattest_core::attest::patch::mask_page;
use vmattest_core::attest::{Policy, Region, page_digest};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::routes::{hex_digests, json_body, parse_id, parse_result};
use crate::state::{AppState, Baseline, VmEntry, decode_baseline};

/// Request limit of the compressed bytes of one region.
pub const MAX_BYTES_BODY: usize = 64 << 20;
/// Marks the part of a region's detail the exchange added; a region is located once.
const LOCATED: &str = "bytes differ: ";

fn blocking_err(e: tokio::task::JoinError) -> ApiError {
    ApiError::from(crate::error::ServerError::Corrupt(format!(
        "locate task: {e}"
    )))
}

/// At most `max` bytes from a zstd frame; more, or a bad frame, is an error naming them.
fn unzstd(body: &[u8], max: u64) -> Result<Vec<u8>, String> {
    let dec = zstd::stream::read::Decoder::new(body).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    dec.take(max.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() as u64 > max {
        return Err(format!("more than {max} bytes"));
    }
    Ok(out)
}

/// The bytes a baseline keeps of `region`: full pages from its start, the last one cut at
/// the end of guest RAM if it must be.
fn region_len(region: &Region) -> Result<u64, ApiError> {
    kept_len(region).ok_or_else(|| {
        ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "region {}: {} pages; baselines keep the bytes of regions up to {} MiB",
                region.name,
                region.pages,
                MAX_KEPT_REGION_BYTES >> 20
            ),
        )
    })
}

/// The page digest a baseline holds for bytes `page` of `region` at page `i`.
fn masked_digest(alg: HashAlg, base: &Baseline, region: &Region, i: u64, page: &[u8]) -> Digest {
    let mut buf = page.to_vec();
    mask_page(&mut buf, region.page_addr(PageIndex(i)), base.sites.sites());
    page_digest(alg, &buf)
}

/// Checks `bytes` against the page digests of the baseline: they must be its region.
fn check_region_bytes(
    alg: HashAlg,
    base: &Baseline,
    region: &Region,
    bytes: &[u8],
) -> Result<(), ApiError> {
    let full = region_len(region)?;
    let lo = full.saturating_sub(PAGE_SIZE as u64);
    let len = bytes.len() as u64;
    if len <= lo || len > full {
        return Err(ApiError::new(
            ErrorCode::Regions,
            format!(
                "region {}: {len} bytes, expected {}..={full} ({} pages)",
                region.name,
                lo + 1,
                region.pages
            ),
        ));
    }
    let want = base
        .pages
        .get(&region.name)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for (i, page) in bytes.chunks(PAGE_SIZE).enumerate() {
        let ok = want
            .get(i)
            .is_some_and(|w| w.ct_eq(&masked_digest(alg, base, region, i as u64, page)));
        if !ok {
            return Err(ApiError::new(
                ErrorCode::Regions,
                format!(
                    "region {} page {i}: the bytes do not hash to the baseline's page digest",
                    region.name
                ),
            ));
        }
    }
    Ok(())
}

fn current_baseline(vm: &VmEntry) -> Result<&Baseline, ApiError> {
    vm.baseline.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::NoBaseline,
            format!("VM {} has no golden baseline", vm.row.name),
        )
    })
}

fn policy_region<'a>(policy: &'a Policy, vm: &str, name: &str) -> Result<&'a Region, ApiError> {
    policy.region(name).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Regions,
            format!("region {name:?}: not in VM {vm}'s policy {}", policy.name),
        )
    })
}

/// `PUT /v1/vms/{vm}/baseline/{id}/bytes/{region}`: the bytes of one region of one of the
/// VM's baselines, zstd-compressed; they must hash to the baseline's page digests.
pub async fn put_baseline_bytes(
    State(s): State<AppState>,
    caller: Caller,
    Path((name, id, region)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Json<BaselineInfo>, ApiError> {
    caller.require(&[Role::Admin])?;
    let id = parse_id("baseline", &id)?;
    s.vm(&name).await?;
    let row = s.db.baseline(&name, id).await?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("VM {name} has no baseline {id}"),
        )
    })?;
    let policy = s.policy(&row.policy_id).await?;
    let base = decode_baseline(&policy, row)?;
    let r = policy_region(&policy, &name, &region)?.clone();
    let max = region_len(&r)?;
    let (base, body) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let bytes = unzstd(&body, max).map_err(|e| {
            ApiError::new(
                ErrorCode::Malformed,
                format!(
                    "region {} bytes: expected a zstd frame of at most {max} bytes: {e}",
                    r.name
                ),
            )
        })?;
        check_region_bytes(policy.alg, &base, &r, &bytes)?;
        Ok((base, body))
    })
    .await
    .map_err(blocking_err)??;
    s.db.put_baseline_bytes(id, &region, &body).await?;
    tracing::info!(vm = %name, baseline = id, region = %region, bytes = body.len(), "baseline region bytes stored");
    Ok(Json(BaselineInfo {
        id,
        policy_id: base.policy_id,
        provenance: base.provenance,
        created: vmattest_api::time::from_secs(base.created),
    }))
}

/// Result `id`, which must be of a VM on the caller's host and not have matched `region`.
async fn failing_region(
    s: &AppState,
    caller: &Caller,
    id: &str,
    region: &str,
) -> Result<(AttestationResult, Arc<VmEntry>), ApiError> {
    let id = parse_id("result", id)?;
    let body =
        s.db.result(id)
            .await?
            .ok_or_else(|| ApiError::not_found("result", &id.to_string()))?;
    let result = parse_result(id, &body)?;
    let vm = s.vm(&result.vm).await?;
    caller.require_host(&vm.row.host, &vm.row.name)?;
    match result.regions.iter().find(|r| r.name == region) {
        None => Err(ApiError::new(
            ErrorCode::Regions,
            format!("result {id} has no region {region:?}"),
        )),
        Some(r) if r.matched => Err(ApiError::new(
            ErrorCode::Invalid,
            format!("result {id}: region {region} matched the baseline; nothing to locate"),
        )),
        Some(_) => Ok((result, vm)),
    }
}

/// `POST /v1/results/{id}/locate`: which pages of a region differ from the baseline.
pub async fn locate(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Located>, ApiError> {
    caller.require(&[Role::Agent])?;
    let req: LocateRequest = json_body(&body)?;
    let (_, vm) = failing_region(&s, &caller, &id, &req.region).await?;
    let base = current_baseline(&vm)?;
    let region = policy_region(&vm.policy, &vm.row.name, &req.region)?;
    let alg = vm.policy.alg;
    let got = hex_digests(alg, region, &req.digests, ErrorCode::Malformed)?;
    let want = base
        .pages
        .get(&region.name)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    Ok(Json(Located {
        region: region.name.clone(),
        pages: differing_pages(&got, want).iter().map(|p| p.0).collect(),
    }))
}

/// What the pages `req` sent show against the baseline's bytes (`stored`, zstd), a
/// `; `-separated list of [`describe`] lines.
fn located_text(
    vm: &VmEntry,
    base: &Baseline,
    region: &Region,
    req: &PagesRequest,
    stored: Option<&[u8]>,
) -> Result<String, ApiError> {
    let baseline_bytes = match stored {
        Some(z) => Some(unzstd(z, region_len(region)?).map_err(|e| {
            ApiError::from(crate::error::ServerError::Corrupt(format!(
                "baseline {} region {} bytes: {e}",
                base.id, region.name
            )))
        })?),
        None => None,
    };
    let want_digests = base
        .pages
        .get(&region.name)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut lines = Vec::with_capacity(req.pages.len());
    for p in &req.pages {
        let bad = |found: String| {
            ApiError::new(
                ErrorCode::Malformed,
                format!(
                    "region {} page {}: expected {}, found {found}",
                    region.name,
                    p.index,
                    if p.index < region.pages {
                        "at most 4096 bytes in hex"
                    } else {
                        "a page of the region"
                    }
                ),
            )
        };
        if p.index >= region.pages {
            return Err(bad(format!("index {} of {}", p.index, region.pages)));
        }
        let got = hex::decode(&p.data).map_err(|e| bad(e.to_string()))?;
        if got.len() > PAGE_SIZE {
            return Err(bad(format!("{} bytes", got.len())));
        }
        let page = PageIndex(p.index);
        let matches = usize::try_from(p.index)
            .ok()
            .and_then(|i| want_digests.get(i))
            .is_some_and(|w| w.ct_eq(&masked_digest(vm.policy.alg, base, region, p.index, &got)));
        lines.push(match (&baseline_bytes, matches) {
            (_, true) => describe(page, &[]),
            (Some(all), false) => {
                let lo = usize::try_from(p.index)
                    .unwrap_or(usize::MAX)
                    .saturating_mul(PAGE_SIZE);
                let want = all.get(lo..).unwrap_or(&[]);
                let want = &want[..want.len().min(PAGE_SIZE)];
                describe(
                    page,
                    &diff_page(region.page_addr(page), &got, want, base.sites.sites()),
                )
            }
            (None, false) => format!(
                "page {page} differs (the baseline keeps no bytes of this region to compare)"
            ),
        });
    }
    Ok(lines.join("; "))
}

/// `POST /v1/results/{id}/pages`: the bytes of pages `locate` named; adds what differs, by
/// page and offset, to the result's region detail and to the alert it raised.
pub async fn pages(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<AttestationResult>, ApiError> {
    caller.require(&[Role::Agent])?;
    let req: PagesRequest = json_body(&body)?;
    if req.pages.is_empty() || req.pages.len() > MAX_LOCATED_PAGES {
        return Err(ApiError::new(
            ErrorCode::Regions,
            format!(
                "region {}: expected 1 to {MAX_LOCATED_PAGES} pages, found {}",
                req.region,
                req.pages.len()
            ),
        ));
    }
    let (mut result, vm) = failing_region(&s, &caller, &id, &req.region).await?;
    let base = current_baseline(&vm)?;
    let region = policy_region(&vm.policy, &vm.row.name, &req.region)?;
    let Some(slot) = result.regions.iter_mut().find(|r| r.name == region.name) else {
        return Err(ApiError::not_found("region", &region.name));
    };
    if slot.detail.as_deref().is_some_and(|d| d.contains(LOCATED)) {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            format!(
                "result {}: region {} was already located",
                result.id, region.name
            ),
        ));
    }
    let stored = s.db.baseline_bytes(base.id, &region.name).await?;
    let text = {
        let vm = Arc::clone(&vm);
        let region = region.name.clone();
        tokio::task::spawn_blocking(move || {
            let base = current_baseline(&vm)?;
            located_text(
                &vm,
                base,
                policy_region(&vm.policy, &vm.row.name, &region)?,
                &req,
                stored.as_deref(),
            )
        })
        .await
        .map_err(blocking_err)??
    };
    let text = format!("{LOCATED}{text}");
    slot.detail = Some(match slot.detail.take() {
        Some(d) => format!("{d}; {text}"),
        None => text.clone(),
    });
    let body = serde_json::to_string(&result)
        .map_err(|e| ApiError::from(crate::error::ServerError::Corrupt(e.to_string())))?;
    s.db.locate_result(
        result.id,
        &result.vm,
        &body,
        &format!(" ({}: {text})", region.name),
    )
    .await?;
    tracing::warn!(vm = %result.vm, result = result.id, region = %region.name, "{text}");
    Ok(Json(result))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn a_region_s_bytes_are_refused_past_their_size() {
        let z = zstd::encode_all(&[7u8; 10_000][..], 3).unwrap();
        assert_eq!(unzstd(&z, 10_000).unwrap().len(), 10_000);
        assert!(unzstd(&z, 9_999).unwrap_err().contains("more than 9999"));
        assert!(unzstd(b"not zstd", 100).is_err());
    }
}
