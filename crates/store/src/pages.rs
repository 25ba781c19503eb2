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
