//! Reading input of bounded size. Every parser refuses oversize input; the readers that feed
//! them stop one byte past the cap instead of reading whatever they are given. The caller
//! opens the source (a file, a pipe, a child's stdout): this module does no I/O of its own.

use std::io::Read;

/// Reads `r` to its end, or one byte past `max`: `Ok(None)` when it holds more than `max`
/// bytes. `capacity` is what the caller expects (a file's length), reserved up front so that
/// the buffer is not regrown (and secret bytes not left behind in freed memory) for a file of
/// that length.
pub fn read_to_cap(r: impl Read, max: u64, capacity: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut out =
        Vec::with_capacity(usize::try_from(capacity.min(max).saturating_add(1)).unwrap_or(0));
    r.take(max.saturating_add(1)).read_to_end(&mut out)?;
    if u64::try_from(out.len()).unwrap_or(u64::MAX) > max {
        return Ok(None);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::read_to_cap;

    #[test]
    fn stops_one_byte_past_the_cap() {
        let data = [7u8; 10];
        assert_eq!(read_to_cap(&data[..], 10, 0).unwrap(), Some(data.to_vec()));
        assert_eq!(read_to_cap(&data[..], 9, 0).unwrap(), None);
        assert_eq!(read_to_cap(&data[..0], 0, 0).unwrap(), Some(Vec::new()));
        // An endless source is refused after max + 1 bytes.
        assert_eq!(read_to_cap(std::io::repeat(1), 1 << 20, 0).unwrap(), None);
    }
}
