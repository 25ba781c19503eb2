//! Deterministic test data: VM-like images, and errors as they are printed.

/// The page size every image here is cut into.
const PAGE: usize = 4096;

/// A VM-like image: zero pages, random pages and low-entropy (text-like) pages, from an
/// xorshift stream seeded by `seed` (the recipe of the core's golden tree vectors).
pub fn vm_like(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = vec![0u8; len];
    for (i, page) in out.chunks_mut(PAGE).enumerate() {
        match next() % 4 {
            0 => {}
            1 => page.iter_mut().for_each(|b| *b = next().to_le_bytes()[0]),
            _ => {
                let base = (next() % 26).to_le_bytes()[0] + b'a';
                for (j, b) in page.iter_mut().enumerate() {
                    *b = base + ((j + i) % 7).to_le_bytes()[0];
                }
            }
        }
    }
    out
}

/// The error and its causes, as a front end prints them: one after another.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
