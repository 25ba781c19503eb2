//! dm-verity format 1 hashing: `H(salt || block)` for data and hash blocks alike, digests in
//! power-of-two slots, hash blocks zero-padded to 4096 bytes.

use sha2::{Digest as _, Sha256, Sha384};

use crate::alg::{HashAlg, PAGE_SIZE};

/// Bytes a digest occupies inside a hash block.
pub(crate) fn slot_len(alg: HashAlg) -> usize {
    alg.digest_len().next_power_of_two()
}

/// Digests per 4096-byte hash block: 128 for SHA-256, 64 for SHA-384.
pub(crate) fn arity(alg: HashAlg) -> usize {
    PAGE_SIZE / slot_len(alg)
}

/// `H(salt || data || zero padding to 4096)` into `out`.
pub(crate) fn hash_block(alg: HashAlg, salt: &[u8], data: &[u8], out: &mut [u8]) {
    const ZEROS: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
    let pad = &ZEROS[..PAGE_SIZE.saturating_sub(data.len())];
    match alg {
        HashAlg::Sha384 => {
            let mut h = Sha384::new();
            h.update(salt);
            h.update(data);
            h.update(pad);
            out.copy_from_slice(&h.finalize());
        }
        _ => {
            let mut h = Sha256::new();
            h.update(salt);
            h.update(data);
            h.update(pad);
            out.copy_from_slice(&h.finalize());
        }
    }
}

/// Hashes a group of child digests (stride `digest_len`) as one hash block.
pub(crate) fn hash_group(alg: HashAlg, salt: &[u8], group: &[u8], out: &mut [u8]) {
    let dlen = alg.digest_len();
    let slot = slot_len(alg);
    if slot == dlen {
        hash_block(alg, salt, group, out);
        return;
    }
    let mut block = [0u8; PAGE_SIZE];
    for (i, d) in group.chunks_exact(dlen).enumerate() {
        block[i * slot..i * slot + dlen].copy_from_slice(d);
    }
    hash_block(alg, salt, &block, out);
}

/// Superblock plus hash levels, top level first, as `veritysetup format` writes them.
///
/// ```text
/// 0    "verity\0\0"     8   signature
/// 8    version u32 LE   1
/// 12   hash_type u32    1 (normal)
/// 16   uuid             16
/// 32   algorithm        32, NUL-padded ("sha256")
/// 64   data_block_size  u32 4096
/// 68   hash_block_size  u32 4096
/// 72   data_blocks      u64
/// 80   salt_size        u16, then 6 pad bytes
/// 88   salt             256, zero-padded; 168 more pad bytes to 512, then zeros to 4096
/// ```
pub(crate) fn hash_device(
    alg: HashAlg,
    salt: &[u8],
    pages: u64,
    levels_top_down: &[&[u8]],
    uuid: [u8; 16],
) -> Vec<u8> {
    let mut out = vec![0u8; PAGE_SIZE];
    out[..8].copy_from_slice(b"verity\0\0");
    out[8..12].copy_from_slice(&1u32.to_le_bytes());
    out[12..16].copy_from_slice(&1u32.to_le_bytes());
    out[16..32].copy_from_slice(&uuid);
    out[32..32 + alg.name().len()].copy_from_slice(alg.name().as_bytes());
    out[64..68].copy_from_slice(&4096u32.to_le_bytes());
    out[68..72].copy_from_slice(&4096u32.to_le_bytes());
    out[72..80].copy_from_slice(&pages.to_le_bytes());
    out[80..82].copy_from_slice(&u16::try_from(salt.len()).unwrap_or(u16::MAX).to_le_bytes());
    out[88..88 + salt.len()].copy_from_slice(salt);
    let dlen = alg.digest_len();
    let slot = slot_len(alg);
    for level in levels_top_down {
        for group in level.chunks(arity(alg) * dlen) {
            let mut block = [0u8; PAGE_SIZE];
            for (i, d) in group.chunks_exact(dlen).enumerate() {
                block[i * slot..i * slot + dlen].copy_from_slice(d);
            }
            out.extend_from_slice(&block);
        }
    }
    out
}
