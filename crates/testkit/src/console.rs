//! A test guest's serial console (QEMU's `console.log`): the guest prints `tick N` every
//! second, and tests read the counter to tell whether it ran, stopped or was rolled back.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Only the end of the console is scanned for the last tick.
const CONSOLE_TAIL: u64 = 64 << 10;

/// The number in the last complete `tick N` line of the console log at `path`.
pub fn last_tick(path: &Path) -> Option<u64> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(CONSOLE_TAIL);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let tail = if start > 0 {
        // The window may open mid-line.
        tail.iter()
            .position(|&b| b == b'\n')
            .map_or(&[][..], |i| &tail[i + 1..])
    } else {
        &tail[..]
    };
    parse_ticks(tail).last().copied()
}

/// Every complete `tick N` line in console output, in order. Partial lines, other text and
/// bytes that are not UTF-8 are skipped.
pub fn parse_ticks(console: &[u8]) -> Vec<u64> {
    let mut lines: Vec<&[u8]> = console.split(|&b| b == b'\n').collect();
    lines.pop(); // after the last newline: incomplete
    lines
        .into_iter()
        .filter_map(|line| {
            let digits = line.trim_ascii_end().strip_prefix(b"tick ")?;
            if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(digits).ok()?.parse().ok()
        })
        .collect()
}
