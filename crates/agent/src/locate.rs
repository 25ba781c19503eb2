//! After a result that did not match: asking the server where (docs/API.md, "Locating a
//! difference"). The agent sends the digests of every page of each differing region, then
//! the bytes of the pages the server names; the server compares them with its baseline.
//! Read while the guest runs: a diagnosis, not evidence, and it never changes the verdict.

use vmattest_api::{AttestationResult, ErrorCode, LocateRequest, PageBytes, PagesRequest};
use vmattest_client::Client;
use vmattest_core::alg::{PAGE_SIZE, PageIndex};
use vmattest_core::attest::Policy;
use vmattest_core::attest::locate::kept_len;

use crate::guest::Guest;
use crate::measure::{Ram, copy_page, live_sites, map_ram, page_digests};
use crate::run::RunError;

/// Locates each region `result` did not match in `ram`; returns the result as the server
/// last updated it, or `None` when no page differed any more.
pub fn locate<R: Ram + ?Sized>(
    client: &Client,
    ram: &R,
    policy: &Policy,
    result: &AttestationResult,
) -> Result<Option<AttestationResult>, RunError> {
    let sites = live_sites(ram, policy);
    let mut out = None;
    for differ in result.regions.iter().filter(|r| !r.matched) {
        let Some(region) = policy.region(&differ.name) else {
            continue;
        };
        if kept_len(region).is_none() {
            continue;
        }
        let all: Vec<PageIndex> = (0..region.pages).map(PageIndex).collect();
        let digests = page_digests(policy, ram, region, &all, &sites)
            .into_iter()
            .map(|(_, d)| d.to_hex())
            .collect();
        let located = match client.locate(
            result.id,
            &LocateRequest {
                region: region.name.clone(),
                digests,
            },
        ) {
            Ok(l) => l,
            // A server from before the exchange (no such route): nothing to name.
            Err(e) if e.code() == Some(&ErrorCode::NotFound) => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        if located.pages.is_empty() {
            continue;
        }
        let pages = located
            .pages
            .iter()
            .map(|&i| {
                let mut buf = [0u8; PAGE_SIZE];
                let n = copy_page(ram, region, PageIndex(i), &mut buf);
                PageBytes {
                    index: i,
                    data: hex::encode(&buf[..n]),
                }
            })
            .collect();
        out = Some(client.page_diff(
            result.id,
            &PagesRequest {
                region: region.name.clone(),
                pages,
            },
        )?);
    }
    Ok(out)
}

/// [`locate`] in the running guest's RAM.
pub fn locate_vm(
    client: &Client,
    guest: &Guest<'_>,
    policy: &Policy,
    result: &AttestationResult,
) -> Result<Option<AttestationResult>, RunError> {
    let ram = map_ram(&guest.layout()?.ram)?;
    locate(client, &ram, policy, result)
}
