//! The input shape of the targets that parse kernel tables from guest memory: 16 bytes choose
//! the table's guest-physical start (below 64 KiB) and the end of the range kept (below
//! 128 KiB); the rest is the memory.

/// `(start, span, memory)`, or `None` for an input under 16 bytes.
pub fn split(data: &[u8]) -> Option<(u64, u64, &[u8])> {
    if data.len() < 16 {
        return None;
    }
    let (head, mem) = data.split_at(16);
    let mut word = [0u8; 8];
    word.copy_from_slice(&head[..8]);
    let start = u64::from_le_bytes(word) % 0x1_0000;
    word.copy_from_slice(&head[8..]);
    let span = u64::from_le_bytes(word) % 0x2_0000;
    Some((start, span, mem))
}
