use super::*;
use crate::record::Signed;
use crate::sig::SigAlg;
use keys::MAX_REASON_LEN;

fn key(b: u8) -> ChainKey {
    ChainKey {
        alg: SigAlg::Ed25519,
        raw: vec![b; 32],
    }
}

fn origin() -> Digest {
    Digest::new(HashAlg::Blake3, &[7; 32]).unwrap()
}

fn link(seq: u64, signers: &[&ChainKey], announce: Announce) -> Link {
    Link {
        seq: SeqNo(seq),
        prev: origin(),
        delta: origin(),
        state_root: origin(),
        manifest: ObjectId([4; 32]),
        time: UnixTime { secs: 5, nanos: 6 },
        key_ids: signers.iter().map(|k| k.id()).collect(),
        announce,
    }
}

fn rotate(to: &[&ChainKey]) -> Announce {
    Announce {
        signers: to.iter().map(|k| (*k).clone()).collect(),
        revokers: Vec::new(),
    }
}

fn revocation(of: &ChainKey, from: u64, successors: &[&ChainKey], by: &[&ChainKey]) -> Revocation {
    Revocation {
        origin: origin(),
        key: of.id(),
        from: SeqNo(from),
        successors: successors.iter().map(|k| (*k).clone()).collect(),
        reason: "key left the host".into(),
        time: UnixTime { secs: 9, nanos: 0 },
        key_ids: by.iter().map(|k| k.id()).collect(),
    }
}

/// Walks `links` and returns the first seq the schedule refuses, with its error.
fn walk(s: &mut KeySchedule, links: &[Link]) -> Option<(u64, KeyError)> {
    links.iter().find_map(|l| {
        s.expect(l.seq, &l.announce, &l.key_ids)
            .err()
            .map(|e| (l.seq.0, e))
    })
}

#[test]
fn announcing_link_round_trips_and_v2_links_still_read() {
    let (a, b, r) = (key(1), key(2), key(3));
    let mut l = link(0, &[&a, &b], rotate(&[&b]));
    l.announce.revokers = vec![r];
    let enc = l.encode().unwrap();
    assert_eq!(Link::decode(&enc).unwrap(), l);

    // A version-2 link is the same body without the announcement.
    let plain = link(1, &[&a], Announce::default());
    let mut v2 = plain.encode().unwrap();
    v2.truncate(v2.len() - 2);
    v2[10..12].copy_from_slice(&2u16.to_be_bytes());
    let len = u32::try_from(v2.len() - HEADER_LEN).unwrap();
    v2[12..16].copy_from_slice(&len.to_be_bytes());
    assert_eq!(Link::decode(&v2).unwrap(), plain);

    // The same key announced twice is refused, naming the field.
    let mut twice = link(1, &[&a, &b], rotate(&[&b, &b]));
    twice.announce.signers.push(b.clone());
    let e = Link::decode(&twice.encode().unwrap()).unwrap_err();
    assert!(e.to_string().contains("public key"), "{e}");
    for cut in [enc.len() - 1, enc.len() - 40] {
        assert!(Link::decode(&enc[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn revocation_round_trips_and_refuses_damage() {
    let (a, b, r) = (key(1), key(2), key(3));
    let rev = revocation(&a, 4, &[&b], &[&r]);
    let enc = rev.encode().unwrap();
    assert_eq!(Revocation::decode(&enc).unwrap(), rev);
    for cut in [HEADER_LEN, enc.len() / 2, enc.len() - 1] {
        assert!(Revocation::decode(&enc[..cut]).is_err(), "cut at {cut}");
    }
    let big = vec![0u8; Kind::Revocation.max_body() + HEADER_LEN + 1];
    assert!(Revocation::decode(&big).is_err());
    let mut long = rev.clone();
    long.reason = "x".repeat(MAX_REASON_LEN + 1);
    assert!(long.encode().is_err());
    let s = Signed::new(rev).unwrap();
    assert_eq!(s.value().from, SeqNo(4));
}

#[test]
fn rotation_moves_the_signer_set_and_an_unannounced_key_is_refused() {
    let (a, b, c) = (key(1), key(2), key(3));
    let mut s = KeySchedule::new(vec![a.clone()], Vec::new());
    let chain = [
        link(0, &[&a], Announce::default()),
        link(1, &[&a, &b], rotate(&[&b])),
        link(2, &[&b], Announce::default()),
    ];
    assert_eq!(walk(&mut s, &chain), None);
    assert_eq!(s.current(), std::slice::from_ref(&b));

    // The retired key, an extra key, or a rotation without the old key's signature.
    for bad in [
        link(3, &[&a], Announce::default()),
        link(3, &[&b, &c], Announce::default()),
        link(3, &[&c], rotate(&[&c])),
    ] {
        let mut t = s.clone();
        assert!(
            matches!(walk(&mut t, &[bad]), Some((3, KeyError::Signers { .. }))),
            "{s:?}"
        );
    }
    // Revokers come from the baseline only.
    let late = Announce {
        signers: Vec::new(),
        revokers: vec![c.clone()],
    };
    assert_eq!(
        walk(&mut s, &[link(3, &[&b], late)]),
        Some((3, KeyError::LateRevokers { seq: SeqNo(3) }))
    );
}

#[test]
fn revocation_bars_a_key_from_its_seq_and_successors_take_over() {
    let (a, b, r) = (key(1), key(2), key(9));
    let baseline = Announce {
        signers: Vec::new(),
        revokers: vec![r.clone()],
    };
    let mut s = KeySchedule::new(vec![a.clone()], vec![r.clone()]);
    s.add_revocation(revocation(&a, 2, &[&b], &[&r]));
    let ok = [
        link(0, &[&a], baseline),
        link(1, &[&a], Announce::default()),
    ];
    assert_eq!(walk(&mut s, &ok), None);
    let mut t = s.clone();
    assert_eq!(
        walk(&mut t, &[link(2, &[&a], Announce::default())]),
        Some((
            2,
            KeyError::Revoked {
                key: a.id(),
                from: SeqNo(2)
            }
        ))
    );
    assert_eq!(walk(&mut s, &[link(2, &[&b], Announce::default())]), None);

    // Without successors the chain's only key leaves no signer, not even of a rotation.
    let mut s = KeySchedule::new(vec![a.clone()], Vec::new());
    s.add_revocation(revocation(&a, 1, &[], &[&a]));
    assert_eq!(walk(&mut s, &[link(0, &[&a], Announce::default())]), None);
    let mut t = s.clone();
    assert!(matches!(
        walk(&mut t, &[link(1, &[&a], Announce::default())]),
        Some((1, KeyError::Revoked { .. }))
    ));
    for seq in [1, 2] {
        assert_eq!(
            walk(&mut s, &[link(seq, &[&b], rotate(&[&b]))]),
            Some((seq, KeyError::NoKeys { from: SeqNo(1) }))
        );
    }
    // A revoked key cannot come back by rotation.
    let mut s = KeySchedule::new(vec![b.clone()], Vec::new());
    s.add_revocation(revocation(&a, 0, &[], &[&a]));
    assert!(matches!(
        walk(&mut s, &[link(0, &[&b, &a], rotate(&[&a]))]),
        Some((0, KeyError::Revoked { .. }))
    ));
}

#[test]
fn revocation_signers_are_the_key_itself_or_the_baseline_revokers() {
    let (a, b, r, x) = (key(1), key(2), key(9), key(8));
    let s = KeySchedule::new(vec![a.clone()], vec![r.clone()]);
    let known = [a.clone(), b.clone()];
    let by_self = revocation(&a, 1, &[], &[&a]);
    assert_eq!(
        s.revocation_signers(&by_self, &origin(), &known),
        Ok(vec![a.clone()])
    );
    let by_revoker = revocation(&a, 1, &[&b], &[&r]);
    assert_eq!(
        s.revocation_signers(&by_revoker, &origin(), &known),
        Ok(vec![r.clone()])
    );
    for bad in [
        revocation(&a, 1, &[&b], &[&a]),
        revocation(&a, 1, &[], &[&x]),
        revocation(&x, 1, &[], &[&x]),
        revocation(&a, 1, &[], &[&a, &b]),
    ] {
        assert!(
            matches!(
                s.revocation_signers(&bad, &origin(), &known),
                Err(KeyError::Revocation { .. })
            ),
            "{bad:?}"
        );
    }
    let other = Digest::new(HashAlg::Blake3, &[6; 32]).unwrap();
    assert!(s.revocation_signers(&by_self, &other, &known).is_err());
}
