//! Pieces shared by take, replay, rebuild and the head cache. A leaf module: it uses nothing
//! of this crate but the error type, so that those four need not import each other.

use vmattest_core::alg::PAGE_SIZE;
pub(crate) use vmattest_core::alg::is_zero;
use vmattest_core::chain::ObjectId;

use crate::StoreError;

/// Reads an object by id, refusing it above a size.
pub(crate) type ObjectFn<'a> = dyn Fn(&ObjectId, usize) -> Result<Vec<u8>, StoreError> + Sync + 'a;

/// Page `page` of `bytes`: a full page, the short last page, or empty beyond the end.
pub(crate) fn page_of(bytes: &[u8], page: u64) -> &[u8] {
    let start = usize::try_from(page)
        .unwrap_or(usize::MAX)
        .saturating_mul(PAGE_SIZE)
        .min(bytes.len());
    &bytes[start..(start + PAGE_SIZE).min(bytes.len())]
}

/// In-memory sizes and indices always fit `usize` on the 64-bit hosts vmattest supports.
pub(crate) fn idx(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Shortest run of zero pages a sparse write leaves as a hole; shorter ones are written with
/// their neighbours, so the number of writes stays small.
pub(crate) const HOLE_PAGES: usize = 16;

/// Byte ranges of `buf` a sparse write must write: its non-zero pages, joined across zero
/// runs shorter than [`HOLE_PAGES`]. The rest reads as zeros from a fresh (or truncated) file.
pub(crate) fn nonzero_runs(buf: &[u8]) -> Vec<std::ops::Range<usize>> {
    let pages = buf.len().div_ceil(PAGE_SIZE);
    let zero = |p: usize| is_zero(page_of(buf, p as u64));
    let mut runs = Vec::new();
    let mut p = 0;
    while p < pages {
        if zero(p) {
            p += 1;
            continue;
        }
        let (start, mut end) = (p, p);
        while p < pages && (!zero(p) || p - end < HOLE_PAGES) {
            if !zero(p) {
                end = p + 1;
            }
            p += 1;
        }
        runs.push(start * PAGE_SIZE..(end * PAGE_SIZE).min(buf.len()));
    }
    runs
}
