//! Files that others write while they are mapped: a running guest's RAM, which QEMU maps
//! shared. A `&[u8]` over such memory would let the compiler assume bytes that change under
//! it; here no reference into the map is ever made, and bytes leave only as copies.

use std::fmt;
use std::path::{Path, PathBuf};

use memmap2::{MmapOptions, MmapRaw};

use crate::{ImageError, checked_len, open_image_file};

/// A file mapped read-only whose bytes may change at any time.
pub struct LiveImage {
    path: PathBuf,
    map: Option<MmapRaw>,
}

impl fmt::Debug for LiveImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveImage")
            .field("path", &self.path)
            .field("len", &self.len())
            .finish()
    }
}

impl LiveImage {
    pub fn open(path: &Path) -> Result<LiveImage, ImageError> {
        let file = open_image_file(path)?;
        let len = checked_len(&file, path)?;
        let map = if len == 0 {
            None
        } else {
            let map = MmapOptions::new()
                .map_raw_read_only(&file)
                .map_err(|source| ImageError::Map {
                    path: path.to_path_buf(),
                    source,
                })?;
            Some(map)
        };
        Ok(LiveImage {
            path: path.to_path_buf(),
            map,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.map.as_ref().map_or(0, |m| m.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the bytes at `offset` into `buf`, as they are at the moment of reading; returns
    /// how many there were (fewer than `buf.len()` only at the end of the file).
    #[allow(unsafe_code)]
    pub fn copy_at(&self, offset: u64, buf: &mut [u8]) -> usize {
        let Some(map) = &self.map else { return 0 };
        let len = map.len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
        let n = buf.len().min(len - start);
        let src = map.as_ptr().wrapping_add(start);
        let mut i = 0;
        // Whole words where aligned (pages always are), bytes otherwise.
        if (src as usize).is_multiple_of(WORD) {
            while i + WORD <= n {
                // SAFETY: `src + i .. src + i + WORD` is inside the map (`start + n <= len`) and
                // WORD-aligned, and the map lives as long as `self`. The bytes are written by
                // another process, outside this program's memory model; a volatile read makes
                // no reference and lets the compiler assume nothing about them (vm-memory reads
                // guest memory the same way). A file truncated under the map raises SIGBUS.
                let w = unsafe { std::ptr::read_volatile(src.add(i).cast::<u64>()) };
                buf[i..i + WORD].copy_from_slice(&w.to_ne_bytes());
                i += WORD;
            }
        }
        while i < n {
            // SAFETY: as above, for the one byte `src + i` (`i < n`).
            buf[i] = unsafe { std::ptr::read_volatile(src.add(i)) };
            i += 1;
        }
        n
    }
}

const WORD: usize = size_of::<u64>();

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

    use super::*;

    #[test]
    fn copies_match_the_file_at_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ram");
        let data: Vec<u8> = (0..3 * 4096 + 5).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let live = LiveImage::open(&path).unwrap();
        assert_eq!(live.len(), data.len() as u64);
        let mut buf = [0u8; 4096];
        for off in [0usize, 3, 4096, 8191, 3 * 4096] {
            let n = live.copy_at(off as u64, &mut buf);
            let want = &data[off..(off + 4096).min(data.len())];
            assert_eq!(&buf[..n], want, "offset {off}");
        }
        assert_eq!(live.copy_at(1 << 40, &mut buf), 0);
        // Writes after the map are seen by the next copy (the map is shared).
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"changed!", 4096).unwrap();
        live.copy_at(4096, &mut buf);
        assert_eq!(&buf[..8], b"changed!");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(LiveImage::open(&empty).unwrap().is_empty());
    }
}
