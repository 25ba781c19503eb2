//! Bundles (`snapshot import`), through the store's streaming reader: the header, then every
//! frame until the trailer. The first byte picks the input as it is, or with its trailer digest
//! recomputed so that mutated frames also reach the trailer. A bundle read to its trailer
//! must be written back, frame by frame in the documented layout, as the same bytes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vmattest_core::wire::{Kind, Writer};
use vmattest_fuzz::{same_bytes, select};
use vmattest_store::{BundleReader, Frame};

/// Largest object a bundle may carry (a manifest can be larger; the fuzz inputs are small).
const MAX_OBJECT: usize = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let (case, rest) = select(data);
    let mut input = rest.to_vec();
    if case % 2 == 1 && input.len() >= 33 && input[input.len() - 33] == 0xff {
        let at = input.len() - 33;
        let digest = blake3::hash(&input[..at]);
        input[at + 1..].copy_from_slice(digest.as_bytes());
    }
    let Ok((mut reader, header)) = BundleReader::new(input.as_slice(), Path::new("fuzz.bundle"))
    else {
        return;
    };
    // The bundle as the reader understood it, written back.
    let meta = serde_json::to_vec(&header.meta).expect("store meta serializes");
    let mut w = Writer::new();
    w.bytes(&meta).u64(header.first.0).u64(header.last.0);
    let mut again = w.envelope(Kind::Bundle);
    loop {
        let mut object = Vec::new();
        match reader.next_frame(&mut object, MAX_OBJECT) {
            Ok(Some(Frame::Link(link))) => {
                let bytes = link.encode().expect("a decoded link encodes");
                again.push(1);
                again.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                again.extend_from_slice(&bytes);
            }
            Ok(Some(Frame::Rebase(rebase))) => {
                let bytes = rebase.encode().expect("a decoded rebase encodes");
                again.push(3);
                again.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                again.extend_from_slice(&bytes);
            }
            Ok(Some(Frame::Revocation(rev))) => {
                let bytes = rev.encode().expect("a decoded revocation encodes");
                again.push(4);
                again.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                again.extend_from_slice(&bytes);
            }
            Ok(Some(Frame::Object { id, len })) => {
                assert_eq!(len, object.len() as u64, "object length");
                assert_eq!(id, vmattest_core::chain::ObjectId::of(&object), "object id");
                again.push(2);
                again.extend_from_slice(&(object.len() as u32).to_be_bytes());
                again.extend_from_slice(&object);
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }
    let digest = blake3::hash(&again);
    again.push(0xff);
    again.extend_from_slice(digest.as_bytes());
    // The header's JSON may be written differently (key order, spaces) and still be accepted;
    // compare from the frames on, and the header's meta by value.
    let body_len = |b: &[u8]| 16 + u32::from_be_bytes([b[12], b[13], b[14], b[15]]) as usize;
    let (a, b) = (body_len(&input), body_len(&again));
    same_bytes(
        "bundle frames",
        &input[a..input.len() - 32],
        &again[b..again.len() - 32],
    );
});
