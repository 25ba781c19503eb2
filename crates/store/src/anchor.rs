//! Anchor links: every `anchor_every` seqs (or on demand) a link also stores, whole, every page
//! that changed since the previous anchor, so that a replay applies the chain's first manifest,
//! the anchors, and only the links after the last anchor.

use std::borrow::Cow;

use vmattest_core::chain::{DeltaEntry, PageChange, SeqNo};
use vmattest_core::tree::ImageTree;

use crate::cache::HeadPages;
use crate::pages::is_zero;
use crate::take::Source;
use crate::{Head, StoreError, StoreWriter};

/// Anchor interval of a store made without one (`snapshot init` writes it explicitly).
pub const DEFAULT_ANCHOR_EVERY: u32 = 16;

/// Where a take's stored pages come from: the captured pages, and for an anchor's carried
/// pages (`origin` `None`) the head cache or, failing that, the mapped component files.
pub(crate) struct Pages<'s, 'k> {
    source: &'s Source,
    /// Per entry, its index among the captured entries; `None` when carried. Absent: identity.
    origin: Option<&'s [Option<usize>]>,
    cache: &'s [Option<HeadPages<'k>>],
}

impl<'s, 'k> Pages<'s, 'k> {
    /// The captured pages alone.
    pub fn captured(source: &'s Source) -> Pages<'s, 'k> {
        Pages {
            source,
            origin: None,
            cache: &[],
        }
    }

    /// The captured pages merged with carried ones, `origin` as [`merge`] returns it.
    pub fn carrying(
        source: &'s Source,
        cache: &'s [Option<HeadPages<'k>>],
        origin: &'s [Option<usize>],
    ) -> Pages<'s, 'k> {
        Pages {
            source,
            origin: Some(origin),
            cache,
        }
    }

    pub fn get(&self, i: usize, e: &DeltaEntry) -> Cow<'s, [u8]> {
        match self.origin.map(|o| o.get(i).copied().flatten()) {
            None => Cow::Borrowed(self.source.page(i, e)),
            Some(Some(j)) => Cow::Borrowed(self.source.page(j, e)),
            Some(None) => unchanged(self.source, self.cache, e),
        }
    }

    /// Whether entry `i` is a carried page (unchanged at this seq).
    pub fn is_carried(&self, i: usize) -> bool {
        self.origin
            .is_some_and(|o| o.get(i).copied().flatten().is_none())
    }
}

/// An unchanged page's bytes: the cache holds the previous seq's, which are this seq's.
fn unchanged<'s>(
    source: &'s Source,
    cache: &'s [Option<HeadPages<'_>>],
    e: &DeltaEntry,
) -> Cow<'s, [u8]> {
    let c = usize::from(e.component);
    match cache.get(c).and_then(Option::as_ref) {
        Some(h) => h.page(e.page.0),
        None => Cow::Borrowed(source.mapped_page(c, e.page.0).unwrap_or(&[])),
    }
}

impl StoreWriter {
    /// Whether seq `seq` is due to be an anchor by the store's interval.
    pub(crate) fn anchor_due(&self, seq: SeqNo) -> bool {
        let every = u64::from(self.meta.anchor_every);
        every > 0 && seq.0 > 0 && seq.0.is_multiple_of(every)
    }

    /// The pages an anchor at `seq` carries besides `entries` (this seq's changes), or `None`
    /// when the link is no anchor: asked for, or due by the interval where it pays.
    pub(crate) fn anchor_pages(
        &self,
        head: Option<&Head>,
        seq: SeqNo,
        entries: &[DeltaEntry],
        asked: bool,
    ) -> Result<Option<Vec<(u16, u64)>>, StoreError> {
        let Some(h) = head else { return Ok(None) };
        let due = asked || (self.anchor_due(seq) && self.anchor_pays(h, entries)?);
        if !due {
            return Ok(None);
        }
        let mut pages = self.pages_since_anchor(h)?;
        pages.retain(|&(c, p)| {
            entries
                .binary_search_by(|e| (e.component, e.page.0).cmp(&(c, p)))
                .is_err()
        });
        Ok(Some(pages))
    }

    /// Whether an anchor due by the interval pays for its bytes: the links since the previous
    /// one (at most the interval's) and `entries` rewrote the same pages, so that the anchor
    /// holds at most half the pages a replay would otherwise decode for them. A guest writing
    /// all over its memory gets no anchors, a guest with a working set gets them.
    pub(crate) fn anchor_pays(
        &self,
        head: &Head,
        entries: &[DeltaEntry],
    ) -> Result<bool, StoreError> {
        let mut pages: Vec<(u16, u64)> = entries.iter().map(|e| (e.component, e.page.0)).collect();
        let (mut s, mut links) = (head.seq.0, 1u32);
        while s > head.base.0 && links < self.meta.anchor_every {
            let m = self.manifest_at(head, SeqNo(s))?;
            if m.anchor {
                break;
            }
            pages.extend(m.entries.iter().map(|e| (e.component, e.page.0)));
            (s, links) = (s - 1, links + 1);
        }
        let written = pages.len();
        pages.sort_unstable();
        pages.dedup();
        Ok(pages.len() * 2 <= written)
    }

    /// Pages written by the links after the previous anchor (or after the chain's first seq)
    /// up to the head, sorted and unique, as (component, page).
    pub(crate) fn pages_since_anchor(&self, head: &Head) -> Result<Vec<(u16, u64)>, StoreError> {
        let mut pages: Vec<(u16, u64)> = Vec::new();
        let mut s = head.seq.0;
        while s > head.base.0 {
            let m = self.manifest_at(head, SeqNo(s))?;
            if m.anchor {
                break;
            }
            pages.extend(m.entries.iter().map(|e| (e.component, e.page.0)));
            s -= 1;
        }
        pages.sort_unstable();
        pages.dedup();
        Ok(pages)
    }

    /// Whether every page of `carried` can be read at commit time: from the head cache, or
    /// from component files that stay mapped until the commit.
    pub(crate) fn can_carry(
        carried: &[(u16, u64)],
        cache: &[Option<HeadPages<'_>>],
        source: &Source,
    ) -> bool {
        carried.iter().all(|&(c, p)| {
            let c = usize::from(c);
            cache.get(c).is_some_and(Option::is_some) || source.mapped_page(c, p).is_some()
        })
    }
}

/// An anchor's entries: `captured` (this seq's changes) merged with the `carried` pages not
/// among them, and each entry's index in `captured` (`None` when carried). A carried page that
/// is all zeros becomes a zero entry; the others carry their digest in `trees`.
pub(crate) fn merge(
    captured: Vec<DeltaEntry>,
    carried: &[(u16, u64)],
    trees: &[ImageTree],
    source: &Source,
    cache: &[Option<HeadPages<'_>>],
) -> (Vec<DeltaEntry>, Vec<Option<usize>>) {
    let mut entries = Vec::with_capacity(captured.len() + carried.len());
    let mut origin = Vec::with_capacity(captured.len() + carried.len());
    let mut rest = carried.iter().peekable();
    let carry = |entries: &mut Vec<DeltaEntry>, origin: &mut Vec<Option<usize>>, c, p| {
        let Some(tree) = trees.get(usize::from(c)) else {
            return;
        };
        let page = vmattest_core::alg::PageIndex(p);
        let mut e = DeltaEntry {
            component: c,
            page,
            change: PageChange::Carried,
            digest: tree
                .page_digest(page)
                .unwrap_or_else(|| tree.alg().zero_digest()),
        };
        if is_zero(&unchanged(source, cache, &e)) {
            e.change = PageChange::Zero;
        }
        entries.push(e);
        origin.push(None);
    };
    for (j, e) in captured.into_iter().enumerate() {
        let key = (e.component, e.page.0);
        while let Some(&&(c, p)) = rest.peek()
            && (c, p) <= key
        {
            rest.next();
            if (c, p) < key {
                carry(&mut entries, &mut origin, c, p);
            }
        }
        entries.push(e);
        origin.push(Some(j));
    }
    for &(c, p) in rest {
        carry(&mut entries, &mut origin, c, p);
    }
    (entries, origin)
}
