//! The config tree: salted leaves in an RFC 6962-style binary Merkle tree over SHA-256.
//!
//! ```text
//! leaf      = SHA-256("vmattest config-leaf v1\0" || u32 len(salt) || salt
//!                     || u32 len(name) || name || u32 len(value) || value)
//! tree leaf = SHA-256(0x00 || leaf)
//! node      = SHA-256(0x01 || left || right)
//! MTH(n)    = tree leaf                                     for n = 1
//!           = node(MTH(first k), MTH(remaining n - k))      k = largest power of two < n
//! ```

use crate::alg::{Digest, HashAlg};

use super::{ConfigError, MAX_PARAMS};

/// Domain tag of every salted leaf.
pub const LEAF_DOMAIN: &[u8] = b"vmattest config-leaf v1\0";
/// Longest inclusion path: the depth of a tree of [`MAX_PARAMS`] leaves.
pub const MAX_PATH_LEN: usize = 16;

const ALG: HashAlg = HashAlg::Sha256;

fn len32(b: &[u8]) -> [u8; 4] {
    u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes()
}

/// The salted leaf of one parameter (before the tree's 0x00 prefix). Callers keep the salt,
/// name and value within their limits (64, 128 and 65536 bytes).
pub fn leaf_digest(name: &str, value: &str, salt: &[u8]) -> Digest {
    ALG.hash(&[
        LEAF_DOMAIN,
        &len32(salt),
        salt,
        &len32(name.as_bytes()),
        name.as_bytes(),
        &len32(value.as_bytes()),
        value.as_bytes(),
    ])
}

pub(crate) fn tree_leaf(leaf: &Digest) -> Digest {
    ALG.hash(&[&[0x00], leaf.as_bytes()])
}

fn node(left: &Digest, right: &Digest) -> Digest {
    ALG.hash(&[&[0x01], left.as_bytes(), right.as_bytes()])
}

/// Largest power of two below `n` (n >= 2).
fn split(n: usize) -> usize {
    1usize << (usize::BITS - 1 - (n - 1).leading_zeros())
}

fn split64(n: u64) -> u64 {
    1u64 << (u64::BITS - 1 - (n - 1).leading_zeros())
}

/// The root over `leaves` (tree leaves, already 0x00-hashed); `leaves` is not empty.
pub(crate) fn root_of(leaves: &[Digest]) -> Digest {
    match leaves {
        [] => ALG.hash(&[]),
        [one] => *one,
        _ => {
            let k = split(leaves.len());
            node(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// The audit path of leaf `index` (RFC 6962 section 2.1.1), from the leaf's sibling up.
pub(crate) fn path_of(leaves: &[Digest], index: usize) -> Vec<Digest> {
    let mut path = Vec::with_capacity(MAX_PATH_LEN);
    let (mut lo, mut hi, mut m) = (0usize, leaves.len(), index);
    // Walk down, collecting siblings top-down, then reverse.
    while hi - lo > 1 {
        let k = split(hi - lo);
        if m < k {
            path.push(root_of(&leaves[lo + k..hi]));
            hi = lo + k;
        } else {
            path.push(root_of(&leaves[lo..lo + k]));
            lo += k;
            m -= k;
        }
    }
    path.reverse();
    path
}

/// For each level from the top, whether leaf `index` lies in the left subtree; `None` unless
/// `index < count <= MAX_PARAMS`.
fn sides(index: u64, count: u64) -> Option<Vec<bool>> {
    if index >= count || count > MAX_PARAMS as u64 {
        return None;
    }
    let mut out = Vec::with_capacity(MAX_PATH_LEN);
    let (mut m, mut n) = (index, count);
    while n > 1 {
        let k = split64(n);
        if m < k {
            out.push(true);
            n = k;
        } else {
            out.push(false);
            m -= k;
            n -= k;
        }
    }
    Some(out)
}

/// Length of the path of leaf `index` in a tree of `count` leaves; `None` unless
/// `index < count <= 65536`.
pub fn path_len(index: u64, count: u64) -> Option<usize> {
    sides(index, count).map(|s| s.len())
}

/// Recomputes the root from a salted leaf and its path, refusing an index outside the tree,
/// a path of the wrong length and digests that are not SHA-256.
pub(crate) fn root_from_path(
    leaf: &Digest,
    index: u64,
    count: u64,
    path: &[Digest],
) -> Result<Digest, ConfigError> {
    if count == 0 || count > MAX_PARAMS as u64 {
        return Err(ConfigError::Disclosure {
            field: "count",
            expected: format!("1 to {MAX_PARAMS}"),
            found: count.to_string(),
        });
    }
    let sides = sides(index, count).ok_or_else(|| ConfigError::Disclosure {
        field: "index",
        expected: format!("below the count {count}"),
        found: index.to_string(),
    })?;
    if path.len() != sides.len() {
        return Err(ConfigError::Disclosure {
            field: "path",
            expected: format!("{} digests for leaf {index} of {count}", sides.len()),
            found: path.len().to_string(),
        });
    }
    if let Some((i, d)) = path.iter().enumerate().find(|(_, d)| d.alg() != ALG) {
        return Err(ConfigError::Disclosure {
            field: "path",
            expected: format!("sha256 digests (digest {i})"),
            found: d.alg().to_string(),
        });
    }
    let mut r = tree_leaf(leaf);
    for (sib, left) in path.iter().zip(sides.iter().rev()) {
        r = if *left { node(&r, sib) } else { node(sib, &r) };
    }
    Ok(r)
}
