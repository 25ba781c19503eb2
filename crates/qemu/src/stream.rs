//! QEMU's migration stream as a background snapshot (`background-snapshot`) writes it: the
//! header, the configuration, the RAM section (its block list, then every page QEMU sends,
//! each once), then the device state, which is kept whole as opaque bytes. docs/FORMAT.md,
//! "QEMU migration stream", lists what is read and what is refused.
//!
//! The reader streams: a page is handed out from a buffer of its own and never collected, so a
//! stream of any RAM size is read in constant memory. Counts, lengths and offsets from the
//! stream are checked before use; a stream that is not a plain background snapshot (XBZRLE,
//! compression, mapped-ram, ignored shared RAM, postcopy, another iterable section) is refused.

use std::io::Read;

/// QEMU's target page size on x86; the configuration must say 12 bits if it says any.
pub const PAGE_SIZE: usize = 4096;
/// RAM blocks a stream may list (a PC has about ten: RAM, BIOS, option ROMs, VGA RAM).
pub const MAX_BLOCKS: usize = 256;
/// Device state after the RAM: a PC's is well under 1 MiB.
pub const MAX_DEVICE_STATE: u64 = 64 << 20;
/// Total RAM the block list may add up to (16 TiB).
pub const MAX_RAM: u64 = 1 << 44;

const MAGIC: u32 = 0x5145_564d; // "QEVM"
const VERSION: u32 = 3;
const RAM_VERSION: u32 = 4;

// Section types.
const EOF: u8 = 0x00;
const SECTION_START: u8 = 0x01;
const SECTION_PART: u8 = 0x02;
const SECTION_END: u8 = 0x03;
const SECTION_FULL: u8 = 0x04;
const SUBSECTION: u8 = 0x05;
const CONFIGURATION: u8 = 0x07;
const COMMAND: u8 = 0x08;
const FOOTER: u8 = 0x7e;
const CMD_SWITCHOVER_START: u16 = 0x0b;

// RAM page flags: the low bits of each page header.
const FLAG_ZERO: u64 = 0x02;
const FLAG_MEM_SIZE: u64 = 0x04;
const FLAG_PAGE: u64 = 0x08;
const FLAG_EOS: u64 = 0x10;
const FLAG_CONTINUE: u64 = 0x20;
const FLAG_MULTIFD_FLUSH: u64 = 0x200;
const FLAG_MASK: u64 = PAGE_SIZE as u64 - 1;

/// Capabilities that change the RAM section's layout or content: refused.
const REFUSED_CAPS: [&str; 6] = [
    "x-ignore-shared",
    "mapped-ram",
    "postcopy-ram",
    "xbzrle",
    "compress",
    "multifd",
];

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("migration stream: reading at byte {offset}")]
    Io {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("migration stream: {what} at byte {offset}: the stream ends")]
    Truncated { what: &'static str, offset: u64 },
    #[error("migration stream: {what} at byte {offset}: expected {expected}, found {found}")]
    Bad {
        what: &'static str,
        offset: u64,
        expected: &'static str,
        found: String,
    },
}

/// A RAM block as the stream lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// QEMU's id of the block (`pc.ram`, `/objects/mem`, `pc.bios`, ...).
    pub name: String,
    /// Bytes; a whole number of pages.
    pub len: u64,
}

impl Block {
    pub fn pages(&self) -> u64 {
        self.len / PAGE_SIZE as u64
    }
}

/// One page of the stream: the block (an index into [`Stream::blocks`]), the page's index in
/// it and its bytes. Pages the stream does not hold are zero.
#[derive(Debug)]
pub struct Page<'a> {
    pub block: usize,
    pub index: u64,
    pub data: &'a [u8; PAGE_SIZE],
}

/// The source, with a byte of lookahead and the offset of the next byte.
#[derive(Debug)]
struct Src<R> {
    r: R,
    offset: u64,
    peeked: Option<u8>,
    /// Every byte consumed, while set: the stream's head, which a device-state stream repeats.
    kept: Option<Vec<u8>>,
}

impl<R: Read> Src<R> {
    fn fill(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), StreamError> {
        let at = self.offset;
        let mut start = 0;
        if let (Some(b), Some(first)) = (self.peeked, buf.first_mut()) {
            *first = b;
            self.peeked = None;
            start = 1;
        }
        self.r.read_exact(&mut buf[start..]).map_err(|source| {
            if source.kind() == std::io::ErrorKind::UnexpectedEof {
                StreamError::Truncated { what, offset: at }
            } else {
                StreamError::Io { offset: at, source }
            }
        })?;
        self.offset += buf.len() as u64;
        if let Some(k) = &mut self.kept {
            k.extend_from_slice(buf);
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], StreamError> {
        let mut b = [0u8; N];
        self.fill(&mut b, what)?;
        Ok(b)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, StreamError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, StreamError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, StreamError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, StreamError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// `n` (at most 255) bytes of UTF-8.
    fn string(&mut self, what: &'static str, n: usize) -> Result<String, StreamError> {
        let at = self.offset;
        let mut b = [0u8; 255];
        let b = b
            .get_mut(..n)
            .ok_or_else(|| bad(what, at, "at most 255 bytes", n.to_string()))?;
        self.fill(b, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| bad(what, at, "UTF-8", hex(b)))
    }

    fn peek(&mut self) -> Result<Option<u8>, StreamError> {
        if self.peeked.is_none() {
            let mut b = [0u8; 1];
            let n = self.r.read(&mut b).map_err(|source| StreamError::Io {
                offset: self.offset,
                source,
            })?;
            if n == 1 {
                self.peeked = Some(b[0]);
            }
        }
        Ok(self.peeked)
    }
}

fn bad(what: &'static str, offset: u64, expected: &'static str, found: String) -> StreamError {
    StreamError::Bad {
        what,
        offset,
        expected,
        found,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A background snapshot's stream, read from its start.
#[derive(Debug)]
pub struct Stream<R> {
    src: Src<R>,
    machine: String,
    /// The configuration's capabilities, with their offsets.
    caps: Vec<(u64, String)>,
    blocks: Vec<Block>,
    /// One bit per page of each block: sent already.
    seen: Vec<Vec<u64>>,
    ram_section: u32,
    /// The head: from the start through the block list.
    head: Vec<u8>,
    /// QEMU closes each RAM part with a footer (machine types since 2.x do).
    footers: bool,
    current: Option<usize>,
    /// Inside a RAM part, before its end-of-section flag.
    in_part: bool,
    /// The first byte after the RAM, once read: the device state starts with it.
    after_ram: Option<u8>,
    page: Box<[u8; PAGE_SIZE]>,
}

impl<R: Read> Stream<R> {
    fn new(r: R) -> Stream<R> {
        Stream {
            src: Src {
                r,
                offset: 0,
                peeked: None,
                kept: Some(Vec::new()),
            },
            machine: String::new(),
            caps: Vec::new(),
            blocks: Vec::new(),
            seen: Vec::new(),
            ram_section: 0,
            head: Vec::new(),
            footers: false,
            current: None,
            in_part: false,
            after_ram: None,
            page: Box::new([0; PAGE_SIZE]),
        }
    }

    fn header(&mut self) -> Result<(), StreamError> {
        let magic = self.src.u32("magic")?;
        if magic != MAGIC {
            return Err(bad("magic", 0, "QEVM", format!("{magic:#010x}")));
        }
        let version = self.src.u32("version")?;
        if version != VERSION {
            return Err(bad("version", 4, "3", version.to_string()));
        }
        Ok(())
    }

    /// Reads the header, the configuration and the RAM block list.
    pub fn open(r: R) -> Result<Stream<R>, StreamError> {
        let mut s = Stream::new(r);
        s.header()?;
        loop {
            let at = s.src.offset;
            match s.src.u8("section type")? {
                CONFIGURATION => {
                    s.configuration()?;
                    if let Some((at, cap)) = s
                        .caps
                        .iter()
                        .find(|(_, c)| REFUSED_CAPS.contains(&c.as_str()))
                    {
                        return Err(bad(
                            "capability",
                            *at,
                            "none that changes the RAM section",
                            cap.clone(),
                        ));
                    }
                }
                SECTION_START => {
                    s.ram_start(at)?;
                    // The setup part's footer, if QEMU writes footers, ends the head.
                    if s.src.peek()? == Some(FOOTER) {
                        let at = s.src.offset;
                        s.src.u8("section type")?;
                        s.section_id(at)?;
                        s.footers = true;
                    }
                    s.head = s.src.kept.take().unwrap_or_default();
                    return Ok(s);
                }
                t => {
                    return Err(bad(
                        "section type",
                        at,
                        "the configuration or the RAM section's start",
                        format!("{t:#04x}"),
                    ));
                }
            }
        }
    }

    /// The machine type the configuration names (empty when it has none).
    pub fn machine(&self) -> &str {
        &self.machine
    }

    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The stream's first bytes, through the RAM block list (and its part's footer).
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.src.offset
    }

    /// The next page, or `None` once the RAM is read; then [`Stream::device_state`].
    pub fn next_page(&mut self) -> Result<Option<Page<'_>>, StreamError> {
        loop {
            if self.after_ram.is_some() {
                return Ok(None);
            }
            if !self.in_part {
                self.next_part()?;
                continue;
            }
            if let Some((block, index)) = self.page()? {
                return Ok(Some(Page {
                    block,
                    index,
                    data: &self.page,
                }));
            }
        }
    }

    /// The device state: every byte after the RAM to the stream's end (the non-iterable
    /// sections, QEMU's end mark and its JSON description). Only after [`Stream::next_page`]
    /// gave `None`.
    pub fn device_state(mut self) -> Result<Vec<u8>, StreamError> {
        let at = self.src.offset;
        let Some(first) = self.after_ram else {
            return Err(bad(
                "device state",
                at,
                "the RAM read to its end first",
                "pages left".into(),
            ));
        };
        let mut out = vec![first];
        (&mut self.src.r)
            .take(MAX_DEVICE_STATE)
            .read_to_end(&mut out)
            .map_err(|source| StreamError::Io { offset: at, source })?;
        if self.src.peek()?.is_some() {
            return Err(bad("device state", at, "at most 64 MiB", "more".into()));
        }
        Ok(out)
    }

    /// Past the sections between RAM parts (footers, commands) into the next RAM part; or, at
    /// the first non-iterable section or the end mark, notes that the RAM is over.
    fn next_part(&mut self) -> Result<(), StreamError> {
        loop {
            let at = self.src.offset;
            match self.src.u8("section type")? {
                SECTION_PART | SECTION_END => {
                    self.section_id(at)?;
                    self.in_part = true;
                    return Ok(());
                }
                FOOTER => {
                    self.section_id(at)?;
                    self.footers = true;
                }
                COMMAND => {
                    let cmd = self.src.u16("command")?;
                    let len = self.src.u16("command length")?;
                    if cmd != CMD_SWITCHOVER_START || len != 0 {
                        return Err(bad(
                            "command",
                            at,
                            "switchover-start, of no data",
                            format!("{cmd:#x} of {len} bytes"),
                        ));
                    }
                }
                t @ (SECTION_FULL | EOF) => {
                    self.after_ram = Some(t);
                    return Ok(());
                }
                t => {
                    return Err(bad(
                        "section type",
                        at,
                        "a RAM part, a footer, device state or the end",
                        format!("{t:#04x}"),
                    ));
                }
            }
        }
    }

    fn section_id(&mut self, at: u64) -> Result<(), StreamError> {
        let id = self.src.u32("section id")?;
        if id != self.ram_section {
            return Err(bad("section id", at, "the RAM section's", id.to_string()));
        }
        Ok(())
    }

    /// The configuration: the machine type, then subsections of which only the page size,
    /// the capabilities and the UUID are known.
    fn configuration(&mut self) -> Result<(), StreamError> {
        let at = self.src.offset;
        let n = self.src.u32("machine type length")?;
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if n > 255 {
            return Err(bad("machine type length", at, "at most 255", n.to_string()));
        }
        self.machine = self.src.string("machine type", n)?;
        while self.src.peek()? == Some(SUBSECTION) {
            self.src.u8("subsection")?;
            let at = self.src.offset;
            let len = self.src.u8("subsection name length")?;
            let name = self.src.string("subsection name", usize::from(len))?;
            self.src.u32("subsection version")?;
            match name.as_str() {
                "configuration/target-page-bits" => {
                    let at = self.src.offset;
                    let bits = self.src.u32("target page bits")?;
                    if bits != 12 {
                        return Err(bad("target page bits", at, "12", bits.to_string()));
                    }
                }
                "configuration/capabilities" => self.capabilities()?,
                "configuration/uuid" => {
                    self.src.array::<16>("uuid")?;
                }
                _ => {
                    return Err(bad(
                        "configuration subsection",
                        at,
                        "target-page-bits, capabilities or uuid",
                        name,
                    ));
                }
            }
        }
        Ok(())
    }

    fn capabilities(&mut self) -> Result<(), StreamError> {
        let at = self.src.offset;
        let count = self.src.u32("capability count")?;
        if count > 64 {
            return Err(bad("capability count", at, "at most 64", count.to_string()));
        }
        for _ in 0..count {
            let at = self.src.offset;
            let len = self.src.u8("capability length")?;
            let cap = self.src.string("capability", usize::from(len))?;
            self.caps.push((at, cap));
        }
        Ok(())
    }

    /// The RAM section's start: its header, the block list, and the end of the setup part.
    fn ram_start(&mut self, at: u64) -> Result<(), StreamError> {
        self.ram_section = self.src.u32("section id")?;
        let len = self.src.u8("section name length")?;
        let name = self.src.string("section name", usize::from(len))?;
        let instance = self.src.u32("instance id")?;
        let version = self.src.u32("section version")?;
        if name != "ram" || instance != 0 || version != RAM_VERSION {
            return Err(bad(
                "section",
                at,
                "ram, instance 0, version 4 (the only iterable section)",
                format!("{name}, instance {instance}, version {version}"),
            ));
        }
        let at = self.src.offset;
        let header = self.src.u64("RAM size header")?;
        if header & FLAG_MASK != FLAG_MEM_SIZE {
            return Err(bad(
                "RAM size header",
                at,
                "the block list flag",
                format!("flags {:#x}", header & FLAG_MASK),
            ));
        }
        let total = header & !FLAG_MASK;
        if total > MAX_RAM {
            return Err(bad("RAM size", at, "at most 16 TiB", total.to_string()));
        }
        let mut left = total;
        while left > 0 {
            let at = self.src.offset;
            if self.blocks.len() == MAX_BLOCKS {
                return Err(bad("RAM blocks", at, "at most 256", "more".into()));
            }
            let n = self.src.u8("block name length")?;
            let name = self.src.string("block name", usize::from(n))?;
            let at = self.src.offset;
            let len = self.src.u64("block length")?;
            if len % PAGE_SIZE as u64 != 0 || len > left || len == 0 {
                return Err(bad(
                    "block length",
                    at,
                    "whole pages within the RAM size",
                    format!("{len} for block {name}"),
                ));
            }
            if self.blocks.iter().any(|b| b.name == name) {
                return Err(bad("block name", at, "each block once", name));
            }
            left -= len;
            let words = usize::try_from((len / PAGE_SIZE as u64).div_ceil(64)).unwrap_or(0);
            self.seen.push(vec![0; words]);
            self.blocks.push(Block { name, len });
        }
        // The setup part holds the list only; then its end-of-section flag.
        loop {
            let at = self.src.offset;
            match self.src.u64("page header")? {
                FLAG_MULTIFD_FLUSH => {}
                FLAG_EOS => return Ok(()),
                h => {
                    return Err(bad(
                        "page header",
                        at,
                        "the end of the block list",
                        format!("{h:#x}"),
                    ));
                }
            }
        }
    }

    /// One page into `self.page`: `Some` with its place, `None` at the end of the part.
    fn page(&mut self) -> Result<Option<(usize, u64)>, StreamError> {
        loop {
            let at = self.src.offset;
            let header = self.src.u64("page header")?;
            let flags = header & FLAG_MASK;
            let addr = header & !FLAG_MASK;
            match flags {
                FLAG_MULTIFD_FLUSH => continue,
                FLAG_EOS => {
                    self.in_part = false;
                    return Ok(None);
                }
                _ => {}
            }
            let kind = flags & !FLAG_CONTINUE;
            if kind != FLAG_ZERO && kind != FLAG_PAGE {
                return Err(bad(
                    "page flags",
                    at,
                    "a zero page or a page (maybe continuing its block), or the end of the part",
                    format!("{flags:#x}"),
                ));
            }
            let block = if flags & FLAG_CONTINUE != 0 {
                self.current.ok_or_else(|| {
                    bad("page flags", at, "a block named before", "continue".into())
                })?
            } else {
                let n = self.src.u8("block name length")?;
                let name = self.src.string("block name", usize::from(n))?;
                let b = self.blocks.iter().position(|b| b.name == name);
                b.ok_or_else(|| bad("block name", at, "a block of the list", name))?
            };
            self.current = Some(block);
            let b = &self.blocks[block];
            if addr >= b.len {
                return Err(bad(
                    "page address",
                    at,
                    "within the block",
                    format!("{addr:#x} in {} of {} bytes", b.name, b.len),
                ));
            }
            let index = addr / PAGE_SIZE as u64;
            let (word, bit) = (
                usize::try_from(index / 64).unwrap_or(usize::MAX),
                index % 64,
            );
            let seen = self.seen[block]
                .get_mut(word)
                .ok_or_else(|| bad("page address", at, "within the block", format!("{addr:#x}")))?;
            if *seen & (1 << bit) != 0 {
                return Err(bad(
                    "page",
                    at,
                    "each page once",
                    format!("page {index} of {} again", b.name),
                ));
            }
            *seen |= 1 << bit;
            if kind == FLAG_ZERO {
                let fill = self.src.u8("zero page fill")?;
                self.page.fill(fill);
            } else {
                self.src.fill(&mut self.page[..], "page")?;
            }
            return Ok(Some((block, index)));
        }
    }
}

/// The capabilities a stream's configuration lists (those both ends must share, such as
/// `x-ignore-shared`), from its head alone: any QEMU stream, not only a background snapshot's.
pub fn capabilities<R: Read>(r: R) -> Result<Vec<String>, StreamError> {
    let mut s = Stream::new(r);
    s.header()?;
    if s.src.peek()? == Some(CONFIGURATION) {
        s.src.u8("section type")?;
        s.configuration()?;
    }
    Ok(s.caps.into_iter().map(|(_, c)| c).collect())
}

/// The blocks besides guest RAM a device-state stream may hold (a PC's ROMs and video RAM are
/// well under this).
pub const MAX_OTHER_BLOCKS: u64 = 256 << 20;

/// A device-state stream made from a background snapshot: its head, every page of the blocks
/// other than guest RAM (ROMs, video RAM) in one final RAM part, then its device state. Every
/// page is written whole, in block order, so the stream's length depends only on the block
/// list and the device state. QEMU loads it with `x-ignore-shared` off into a guest whose RAM
/// file already holds guest RAM.
#[derive(Debug)]
pub struct DeviceStream {
    head: Vec<u8>,
    section: u32,
    footers: bool,
    /// Each block but guest RAM, with its bytes as the stream sent them (zero if not sent).
    blocks: Vec<Option<(String, Vec<u8>)>>,
}

impl DeviceStream {
    /// For the stream `s`, whose block `ram` is guest RAM.
    pub fn new<R: Read>(s: &Stream<R>, ram: usize) -> Result<DeviceStream, StreamError> {
        let other: u64 = (s.blocks.iter().enumerate())
            .filter(|(i, _)| *i != ram)
            .map(|(_, b)| b.len)
            .sum();
        if other > MAX_OTHER_BLOCKS {
            return Err(bad(
                "RAM blocks",
                s.src.offset,
                "at most 256 MiB besides guest RAM",
                other.to_string(),
            ));
        }
        let blocks = (s.blocks.iter().enumerate())
            .map(|(i, b)| {
                let len = usize::try_from(b.len).unwrap_or(0);
                (i != ram).then(|| (b.name.clone(), vec![0; len]))
            })
            .collect();
        Ok(DeviceStream {
            head: s.head.clone(),
            section: s.ram_section,
            footers: s.footers,
            blocks,
        })
    }

    /// Keeps a page of a block other than guest RAM.
    pub fn page(&mut self, p: &Page<'_>) {
        if let Some(Some((_, bytes))) = self.blocks.get_mut(p.block) {
            let at = usize::try_from(p.index).unwrap_or(usize::MAX) * PAGE_SIZE;
            if let Some(dst) = bytes.get_mut(at..at + PAGE_SIZE) {
                dst.copy_from_slice(p.data);
            }
        }
    }

    /// The stream: the head, the pages, the part's end (and footer if QEMU wrote footers),
    /// then `device_state`.
    pub fn finish(self, device_state: &[u8]) -> Vec<u8> {
        let mut buf = self.head;
        buf.push(SECTION_END);
        buf.extend_from_slice(&self.section.to_be_bytes());
        for (name, bytes) in self.blocks.into_iter().flatten() {
            for (i, page) in bytes.chunks(PAGE_SIZE).enumerate() {
                let addr = (i * PAGE_SIZE) as u64;
                if i == 0 {
                    buf.extend_from_slice(&(addr | FLAG_PAGE).to_be_bytes());
                    buf.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
                    buf.extend_from_slice(name.as_bytes());
                } else {
                    buf.extend_from_slice(&(addr | FLAG_PAGE | FLAG_CONTINUE).to_be_bytes());
                }
                buf.extend_from_slice(page);
            }
        }
        buf.extend_from_slice(&FLAG_EOS.to_be_bytes());
        if self.footers {
            buf.push(FOOTER);
            buf.extend_from_slice(&self.section.to_be_bytes());
        }
        buf.extend_from_slice(device_state);
        buf
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
