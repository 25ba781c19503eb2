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

/// A walk back through a chain's links, gathering the pages they wrote.
struct Walk {
    /// The next seq to read; `None` past an anchor or the chain's first seq.
    next: Option<SeqNo>,
    pages: Vec<(u16, u64)>,
}

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
    /// when the link is no anchor: asked for, or due by the interval where it pays. It pays when
    /// the interval's links since the previous anchor and `entries` rewrote the same pages (at
    /// least twice as many page writes as distinct pages), so that the anchor holds at most half
    /// of what a replay would otherwise decode for them: a guest writing all over its memory gets
    /// no anchors, a guest with a working set gets them.
    pub(crate) fn anchor_pages(
        &self,
        head: Option<&Head>,
        seq: SeqNo,
        entries: &[DeltaEntry],
        asked: bool,
    ) -> Result<Option<Vec<(u16, u64)>>, StoreError> {
        let Some(h) = head else { return Ok(None) };
        if !asked && !self.anchor_due(seq) {
            return Ok(None);
        }
        let key = |c: u16, p: u64| move |e: &DeltaEntry| (e.component, e.page.0).cmp(&(c, p));
        let mut walk = Walk {
            next: Some(h.seq),
            pages: Vec::new(),
        };
        if !asked {
            // The window: this seq and at most `anchor_every - 1` links before it.
            self.walk_back(h, &mut walk, u64::from(self.meta.anchor_every) - 1)?;
            let written = walk.pages.len() + entries.len();
            walk.pages.sort_unstable();
            walk.pages.dedup();
            let new = (entries.iter())
                .filter(|e| walk.pages.binary_search(&(e.component, e.page.0)).is_err())
                .count();
            if (walk.pages.len() + new) * 2 > written {
                return Ok(None);
            }
        }
        // On to the previous anchor, with the window's pages already read.
        self.walk_back(h, &mut walk, u64::MAX)?;
        let mut pages = walk.pages;
        pages.sort_unstable();
        pages.dedup();
        pages.retain(|&(c, p)| entries.binary_search_by(key(c, p)).is_err());
        Ok(Some(pages))
    }

    /// Adds to `walk` the pages of at most `max` more links, going back from `walk.next` and
    /// stopping after the chain's first seq or at an anchor (neither of which is read for it).
    fn walk_back(&self, head: &Head, walk: &mut Walk, max: u64) -> Result<(), StoreError> {
        let mut read = 0u64;
        while let Some(s) = walk.next
            && read < max
        {
            if s <= head.base {
                walk.next = None;
                break;
            }
            let m = self.read_manifest(self.read_link(s)?.value())?;
            if m.anchor {
                walk.next = None;
                break;
            }
            (walk.pages).extend(m.entries.iter().map(|e| (e.component, e.page.0)));
            walk.next = Some(SeqNo(s.0 - 1));
            read += 1;
        }
        Ok(())
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
