#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use super::*;

/// Writes a stream the way QEMU's background snapshot does, piece by piece.
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn u8(mut self, v: u8) -> W {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> W {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> W {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> W {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn name(self, s: &str) -> W {
        let mut w = self.u8(s.len() as u8);
        w.0.extend_from_slice(s.as_bytes());
        w
    }
    fn raw(mut self, b: &[u8]) -> W {
        self.0.extend_from_slice(b);
        self
    }
    fn header(self) -> W {
        self.u32(MAGIC).u32(VERSION)
    }
    fn config(self, caps: &[&str]) -> W {
        let machine = "pc-i440fx-9.2";
        let mut w = self
            .u8(CONFIGURATION)
            .u32(machine.len() as u32)
            .raw(machine.as_bytes())
            .u8(SUBSECTION)
            .name("configuration/target-page-bits")
            .u32(1)
            .u32(12)
            .u8(SUBSECTION)
            .name("configuration/capabilities")
            .u32(1)
            .u32(caps.len() as u32);
        for c in caps {
            w = w.name(c);
        }
        w
    }
    /// The RAM section's header, section id 2.
    fn ram_header(self) -> W {
        self.u8(SECTION_START)
            .u32(2)
            .name("ram")
            .u32(0)
            .u32(RAM_VERSION)
    }
    /// RAM start with blocks `pc.ram` (2 pages) and `pc.bios` (1 page).
    fn ram_start(self) -> W {
        self.ram_header()
            .u64((3 * 4096) | FLAG_MEM_SIZE)
            .name("pc.ram")
            .u64(2 * 4096)
            .name("pc.bios")
            .u64(4096)
            .u64(FLAG_MULTIFD_FLUSH)
            .u64(FLAG_EOS)
            .u8(FOOTER)
            .u32(2)
    }
}

fn page(b: u8) -> Vec<u8> {
    (0..PAGE_SIZE).map(|i| b ^ (i as u8)).collect()
}

/// A whole stream: two pages of `pc.ram` (the second zero), one of `pc.bios`, a command between
/// parts, then device state.
fn stream() -> Vec<u8> {
    W::default()
        .header()
        .config(&["background-snapshot"])
        .ram_start()
        .u8(SECTION_PART)
        .u32(2)
        .u64(FLAG_PAGE)
        .name("pc.ram")
        .raw(&page(1))
        .u64(4096 | FLAG_ZERO | FLAG_CONTINUE)
        .u8(0)
        .u64(FLAG_EOS)
        .u8(FOOTER)
        .u32(2)
        .u8(COMMAND)
        .u16(CMD_SWITCHOVER_START)
        .u16(0)
        .u8(SECTION_END)
        .u32(2)
        .u64(FLAG_PAGE)
        .name("pc.bios")
        .raw(&page(2))
        .u64(FLAG_EOS)
        .u8(FOOTER)
        .u32(2)
        .u8(SECTION_FULL)
        .raw(b"device state, then QEMU's end and its JSON")
        .0
}

type Read = (Vec<(usize, u64, Vec<u8>)>, Vec<u8>);

fn read(bytes: &[u8]) -> Result<Read, StreamError> {
    let mut s = Stream::open(bytes)?;
    let mut pages = Vec::new();
    while let Some(p) = s.next_page()? {
        pages.push((p.block, p.index, p.data.to_vec()));
    }
    Ok((pages, s.device_state()?))
}

fn error(bytes: &[u8]) -> String {
    read(bytes).unwrap_err().to_string()
}

#[test]
fn a_background_snapshot_stream_gives_its_pages_once_and_the_device_state_whole() {
    let bytes = stream();
    let s = Stream::open(&bytes[..]).unwrap();
    assert_eq!(s.machine(), "pc-i440fx-9.2");
    assert_eq!(
        s.blocks(),
        [
            Block {
                name: "pc.ram".into(),
                len: 8192
            },
            Block {
                name: "pc.bios".into(),
                len: 4096
            }
        ]
    );
    let (pages, device) = read(&bytes).unwrap();
    assert_eq!(
        pages,
        [(0, 0, page(1)), (0, 1, vec![0; PAGE_SIZE]), (1, 0, page(2))]
    );
    assert_eq!(device[0], SECTION_FULL);
    assert!(device.ends_with(b"its JSON"));
}

#[test]
fn every_truncation_is_an_error_naming_its_offset() {
    let bytes = stream();
    // Up to the device state's first byte every cut is an error; after it, the state is
    // whatever follows.
    let device = bytes.len() - 43;
    assert_eq!(bytes[device], SECTION_FULL);
    for n in 0..=device {
        let e = error(&bytes[..n]);
        assert!(e.contains("the stream ends"), "cut at {n}: {e}");
    }
}

/// Replaces the bytes at `at` with `v`.
fn patched(at: usize, v: &[u8]) -> Vec<u8> {
    let mut b = stream();
    b[at..at + v.len()].copy_from_slice(v);
    b
}

fn find(needle: &[u8]) -> usize {
    let b = stream();
    b.windows(needle.len()).position(|w| w == needle).unwrap()
}

fn rfind(needle: &[u8]) -> usize {
    let b = stream();
    b.windows(needle.len()).rposition(|w| w == needle).unwrap()
}

#[test]
fn a_stream_that_is_not_a_plain_background_snapshot_is_refused() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (patched(0, b"QEVX"), "magic at byte 0: expected QEVM"),
        (patched(4, &[0, 0, 0, 2]), "version at byte 4: expected 3"),
        // The page size is 12 bits or nothing.
        (
            patched(find(&[0, 0, 0, 12]), &[0, 0, 0, 16]),
            "target page bits",
        ),
        // Another iterable section than RAM.
        (
            patched(find(b"ram"), b"blk"),
            "expected ram, instance 0, version 4",
        ),
        // A page of a block the list does not have.
        (patched(rfind(b"pc.bios"), b"pc.biox"), "block name"),
        // The second pc.ram page sent as XBZRLE.
        (
            patched(
                find(&(4096 | FLAG_ZERO | FLAG_CONTINUE).to_be_bytes()),
                &(4096 | 0x40u64).to_be_bytes(),
            ),
            "page flags",
        ),
        // A page past its block's end.
        (
            patched(
                find(&(4096 | FLAG_ZERO | FLAG_CONTINUE).to_be_bytes()),
                &(8192 | FLAG_ZERO | FLAG_CONTINUE).to_be_bytes(),
            ),
            "0x2000 in pc.ram of 8192 bytes",
        ),
        // The same page twice.
        (
            patched(
                find(&(4096 | FLAG_ZERO | FLAG_CONTINUE).to_be_bytes()),
                &(FLAG_ZERO | FLAG_CONTINUE).to_be_bytes(),
            ),
            "page 0 of pc.ram again",
        ),
        // A part of another section.
        (
            patched(find(&[SECTION_END, 0, 0, 0, 2]), &[SECTION_END, 0, 0, 0, 3]),
            "section id",
        ),
    ];
    for (bytes, needle) in cases {
        let e = error(&bytes);
        assert!(e.contains(needle), "{needle}: {e}");
    }
}

#[test]
fn capabilities_that_change_the_ram_section_are_refused() {
    for cap in REFUSED_CAPS {
        let bytes = W::default().header().config(&[cap]).ram_start().0;
        let e = Stream::open(&bytes[..]).unwrap_err().to_string();
        assert!(e.contains(&format!("found {cap}")), "{cap}: {e}");
    }
}

#[test]
fn oversize_counts_are_refused_before_use() {
    // A block list longer than the RAM size it announced.
    let bytes = W::default()
        .header()
        .ram_header()
        .u64(4096 | FLAG_MEM_SIZE)
        .name("pc.ram")
        .u64(1 << 40)
        .0;
    let e = Stream::open(&bytes[..]).unwrap_err().to_string();
    assert!(e.contains("whole pages within the RAM size"), "{e}");
    let bytes = W::default()
        .header()
        .ram_header()
        .u64((1 << 50) | FLAG_MEM_SIZE)
        .0;
    let e = Stream::open(&bytes[..]).unwrap_err().to_string();
    assert!(e.contains("at most 16 TiB"), "{e}");
    let bytes = W::default().header().u8(CONFIGURATION).u32(1 << 30).0;
    let e = Stream::open(&bytes[..]).unwrap_err().to_string();
    assert!(
        e.contains("machine type length at byte 9: expected at most 255"),
        "{e}"
    );
    // Device state past its cap.
    let mut big = stream();
    big.resize(big.len() + (MAX_DEVICE_STATE as usize), 0);
    assert!(error(&big).contains("at most 64 MiB"));
}

#[test]
fn the_fuzz_seed_is_a_whole_stream() {
    let seed = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/seeds/qemu_stream/background-snapshot"
    );
    let (pages, device) = read(&std::fs::read(seed).unwrap()).unwrap();
    assert_eq!(pages.len(), 3);
    assert_eq!(device, b"\x04device state\x00");
}

/// A live capture's device-state stream: the head as QEMU wrote it, every page of the blocks
/// other than guest RAM whole and in order, the footer, the device state. Our reader reads it
/// back; its length does not depend on which pages were zero.
#[test]
fn a_device_stream_holds_the_other_blocks_whole_and_the_device_state() {
    let bytes = stream();
    let mut s = Stream::open(&bytes[..]).unwrap();
    let mut d = DeviceStream::new(&s, 0).unwrap();
    while let Some(p) = s.next_page().unwrap() {
        d.page(&p);
    }
    let head_len = s.head().len();
    assert_eq!(&bytes[..head_len], s.head(), "the head is QEMU's bytes");
    let tail = s.device_state().unwrap();
    let out = d.finish(&tail);

    let (pages, device) = read(&out).unwrap();
    assert_eq!(pages, [(1, 0, page(2))], "pc.bios only, whole");
    assert_eq!(device, tail);
    // The same stream with the BIOS page zero: the same length.
    let at = find(&page(2));
    let mut zero_bios = stream();
    zero_bios[at..at + PAGE_SIZE].fill(0);
    let mut s = Stream::open(&zero_bios[..]).unwrap();
    let mut d = DeviceStream::new(&s, 0).unwrap();
    while let Some(p) = s.next_page().unwrap() {
        d.page(&p);
    }
    let tail = s.device_state().unwrap();
    assert_eq!(d.finish(&tail).len(), out.len());
}

#[test]
fn other_blocks_over_the_cap_are_refused() {
    let bytes = W::default()
        .header()
        .ram_header()
        .u64((MAX_OTHER_BLOCKS + 8192) | FLAG_MEM_SIZE)
        .name("pc.ram")
        .u64(4096)
        .name("vga.vram")
        .u64(MAX_OTHER_BLOCKS + 4096)
        .u64(FLAG_EOS)
        .0;
    let s = Stream::open(&bytes[..]).unwrap();
    let e = DeviceStream::new(&s, 0).unwrap_err().to_string();
    assert!(e.contains("at most 256 MiB besides guest RAM"), "{e}");
}

/// A restore reads the capabilities to choose how QEMU loads a device-state stream: those of
/// a paused capture (which `Stream::open` refuses) and of a live one alike.
#[test]
fn capabilities_are_read_from_any_stream_head() {
    let paused = W::default()
        .header()
        .config(&["x-ignore-shared"])
        .ram_start()
        .0;
    assert_eq!(capabilities(&paused[..]).unwrap(), ["x-ignore-shared"]);
    assert_eq!(
        capabilities(&stream()[..]).unwrap(),
        ["background-snapshot"]
    );
    let bare = W::default().header().ram_start().0;
    assert!(capabilities(&bare[..]).unwrap().is_empty());
    assert!(capabilities(&b"QEV"[..]).is_err());
}
