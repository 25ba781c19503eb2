use std::path::Path;

use anyhow::bail;
use serde::Serialize;
use vmattest_core::chain::Link;
use vmattest_core::record::{MeasurementRecord, Signed, SignedRecord};
use vmattest_core::tree::PageProof;
use vmattest_core::wire::{HEADER_LEN, Kind, MAGIC};

use super::read_capped;
use crate::output::{self, ImageJson};

#[derive(Debug, Serialize)]
struct ShowJson {
    kind: &'static str,
    time: Option<String>,
    key_ids: Vec<String>,
    signatures: Vec<String>,
    images: Vec<ImageJson>,
    root: Option<String>,
    first_page: Option<u64>,
    pages: Option<u64>,
}

pub fn run(path: &Path, json: bool) -> anyhow::Result<()> {
    let max = Kind::PageProof.max_body() + HEADER_LEN;
    let bytes = read_capped(path, max, "vmattest file")?;
    let kind = bytes.get(..10).filter(|h| h[..8] == MAGIC).and_then(|h| {
        Kind::ALL
            .into_iter()
            .find(|k| k.id() == u16::from_be_bytes([h[8], h[9]]))
    });
    let mut out = ShowJson {
        kind: "",
        time: None,
        key_ids: vec![],
        signatures: vec![],
        images: vec![],
        root: None,
        first_page: None,
        pages: None,
    };
    let fill = |out: &mut ShowJson, r: &MeasurementRecord| {
        out.time = Some(r.time.to_string());
        out.key_ids = r.key_ids.iter().map(|k| k.to_hex()).collect();
        out.images = r.images.iter().map(ImageJson::from).collect();
    };
    match kind {
        Some(Kind::MeasurementRecord) => fill(&mut out, &MeasurementRecord::decode(&bytes)?),
        Some(Kind::Signed) => match SignedRecord::decode(&bytes) {
            Ok(s) => {
                fill(&mut out, s.value());
                out.signatures = s
                    .signatures
                    .iter()
                    .map(|e| format!("{} by {}", e.alg, e.key_id))
                    .collect();
            }
            Err(_) => {
                let l = Signed::<Link>::decode(&bytes)?;
                out.time = Some(l.value().time.to_string());
                out.key_ids = l.value().key_ids.iter().map(|k| k.to_hex()).collect();
                out.root = Some(l.value().state_root.to_hex());
                out.signatures = l
                    .signatures
                    .iter()
                    .map(|e| format!("{} by {}", e.alg, e.key_id))
                    .collect();
            }
        },
        Some(
            Kind::Manifest
            | Kind::Link
            | Kind::Batch
            | Kind::Bundle
            | Kind::Evidence
            | Kind::SnapshotReport
            | Kind::ConfigStatement
            | Kind::ConfigDisclosure,
        ) => {}
        Some(Kind::PageProof) => {
            let p = PageProof::decode(&bytes)?;
            out.root = Some(p.root.to_hex());
            out.first_page = Some(p.first.0);
            out.pages = Some(p.count);
        }
        None => bail!(
            "{}: not a vmattest file (expected magic \"VMATTEST\" and a known kind)",
            path.display()
        ),
    }
    out.kind = kind.map_or("", Kind::name);
    if json {
        return output::print(&out);
    }
    println!("{}: {}", path.display(), out.kind);
    if let Some(t) = &out.time {
        println!("  time  {t}");
    }
    for s in &out.signatures {
        println!("  signature {s}");
    }
    for m in &out.images {
        println!(
            "  image {}  {}  {} pages  {}",
            m.root, m.alg, m.pages, m.path
        );
    }
    if let (Some(r), Some(f), Some(n)) = (&out.root, out.first_page, out.pages) {
        println!("  proof of pages {f}..{} under root {r}", f + n);
    }
    Ok(())
}
