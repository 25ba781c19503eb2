//! vmattest core: digests, image trees, inclusion proofs and canonical signed records.
//!
//! Everything here works on byte slices (`limit` on a reader its caller opened); no module
//! touches the file system, the network or a clock. Adapters (image, sign, store, host) do the
//! I/O.
#![forbid(unsafe_code)]

pub mod alg;
pub mod attest;
pub mod chain;
pub mod class;
pub mod config;
pub mod limit;
pub mod record;
pub mod sig;
pub mod time;
pub mod tree;
pub mod wire;
