//! Rolling a domain back to a verified point of its chain, or migrating a chain into another
//! domain (another name, another host): verify and rebuild first, touch the domain only then.
//!
//! libvirt has no way in for a state whose RAM travels beside the migration stream: its restore
//! (`virsh restore`) sets its own migration capabilities and loads at once, without
//! `x-ignore-shared`. So the domain is started by libvirt itself, paused, from its own
//! definition plus QEMU's `-incoming defer`; the verified RAM is written into the shared file
//! QEMU just created; the device state is loaded through the monitor passthrough; libvirt
//! resumes it. libvirt manages the result like any domain it started (`virsh list`, `dominfo`,
//! `console`, `shutdown`), and marks it "tainted: custom-argv".

use std::path::Path;
use std::time::Instant;

use vmattest_qemu::capture::{CaptureError, DEVICE_STATE, RAM};
use vmattest_qemu::qmp::Monitor as _;
use vmattest_qemu::restore::{RestoreReport, check_shape, load_device_state, place_disks};
use vmattest_store::{ReplayOptions, Store};

use crate::capture::{capturable_layout, config_bytes, disks, ram_file};
use crate::{Connection, DomainError, DomainMonitor, DomainState};

/// libvirt's namespace for QEMU command-line additions.
const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// Verifies the chain up to `opts.upto`, then replaces domain `name`'s state with it and runs
/// it. The domain may be running (a rollback) or only defined (a migration into it); its
/// guest-visible config must be the chain's. Nothing touches the domain before the chain has
/// verified and every component is rebuilt.
pub fn restore(
    conn: &Connection,
    name: &str,
    store: &Store,
    opts: &ReplayOptions<'_>,
) -> Result<RestoreReport, DomainError> {
    let domain = conn.domain(name)?;
    let definition = domain.definition()?;
    let layout = capturable_layout(name, &definition)?;
    let disks = disks(&layout);
    let incoming = incoming_xml(&definition).ok_or_else(|| DomainError::Definition {
        domain: name.to_owned(),
    })?;

    // Guest RAM and disks are rebuilt in a fresh private (0700) directory.
    let staging = vmattest_qemu::private::owned_tempdir("vmattest-restore-", None)
        .map_err(|source| DomainError::Scratch { source })?;
    // The store writes a new directory.
    let staged = &staging.path().join("state");
    let t = Instant::now();
    let verified = store.restore(opts, staged).map_err(CaptureError::from)?;
    check_shape(name, &disks, &config_bytes(&layout), &verified, staged)?;
    let rebuild = t.elapsed();

    let t = Instant::now();
    if matches!(domain.state()?, DomainState::Running | DomainState::Paused) {
        domain.destroy()?;
    }
    drop(domain);
    // From here on the old QEMU is gone: a failure says so, and a half-started new one is
    // stopped rather than left waiting for a stream.
    let stopped = |source: DomainError| DomainError::Stopped {
        domain: name.to_owned(),
        source: Box::new(source),
    };
    place_disks(name, &disks, staged).map_err(|e| stopped(e.into()))?;
    let domain = conn
        .create_paused(name, &incoming)
        .map_err(|e| stopped(e.into()))?;
    let started = (|| {
        let ram = ram_file(&domain, layout.memory_mib)?;
        fill_ram(name, &staged.join(RAM), &ram)?;
        let mut mon = DomainMonitor::new(&domain);
        load_device_state(&mut mon, name, &staged.join(DEVICE_STATE))?;
        // libvirt's own later jobs (save, migration) must find the setting as QEMU's default.
        mon.set_capabilities(&[("x-ignore-shared", false)])
            .map_err(|source| DomainError::Qmp {
                domain: name.to_owned(),
                source,
            })?;
        Ok::<(), DomainError>(domain.resume()?)
    })();
    if let Err(e) = started {
        let _ = domain.destroy();
        return Err(stopped(e));
    }
    Ok(RestoreReport {
        verified,
        rebuild,
        switch: t.elapsed(),
    })
}

/// The definition with `-incoming defer` added to QEMU's command line, or `None` when it is
/// not a `<domain>` document as libvirt writes it.
fn incoming_xml(xml: &str) -> Option<String> {
    let start = xml.find("<domain")?;
    let tag_end = start + xml[start..].find('>')?;
    let close = xml.rfind("</domain>")?;
    if close < tag_end || xml[start..tag_end].ends_with('/') {
        return None;
    }
    let mut out = String::with_capacity(xml.len() + 256);
    out.push_str(&xml[..tag_end]);
    if !xml[start..tag_end].contains(QEMU_NS) {
        out.push_str(&format!(" xmlns:qemu='{QEMU_NS}'"));
    }
    out.push_str(&xml[tag_end..close]);
    out.push_str(
        "  <qemu:commandline>\n    <qemu:arg value='-incoming'/>\n    \
         <qemu:arg value='defer'/>\n  </qemu:commandline>\n",
    );
    out.push_str(&xml[close..]);
    Some(out)
}

/// Writes the verified RAM into the file QEMU maps, in place: QEMU holds it open and mapped
/// shared, so it must be overwritten, never replaced. A fresh file (no blocks yet) reads as
/// zeros, so only the non-zero pages of the rebuilt RAM are written: the guest's untouched
/// memory stays unallocated, and a mostly idle 1 GiB guest costs a few MiB of writes.
fn fill_ram(domain: &str, from: &Path, to: &Path) -> Result<(), DomainError> {
    use std::os::unix::fs::MetadataExt as _;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DomainError::Io { path, source }
    };
    let mut src = std::fs::File::open(from).map_err(io(from))?;
    // ram_file checked it is a regular file; O_NOFOLLOW keeps it so until it is open.
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        to,
        OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(to)(e.into()))?;
    let mut dst = std::fs::File::from(fd);
    let dst_meta = dst.metadata().map_err(io(to))?;
    let (have, want) = (src.metadata().map_err(io(from))?.len(), dst_meta.len());
    if have != want {
        return Err(DomainError::RamSize {
            domain: domain.to_owned(),
            chain: have,
            domain_ram: want,
        });
    }
    if dst_meta.blocks() != 0 {
        std::io::copy(&mut src, &mut dst).map_err(io(to))?;
        return Ok(());
    }
    write_nonzero(&src, &dst, have).map_err(io(to))
}

/// Copies every non-zero page of `src` (its data extents, by `SEEK_DATA`) to the same offset of
/// `dst`, in runs.
fn write_nonzero(src: &std::fs::File, dst: &std::fs::File, len: u64) -> std::io::Result<()> {
    use rustix::fs::SeekFrom;
    use std::os::unix::fs::FileExt as _;
    const PAGE: usize = 4096;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < len {
        let data = match rustix::fs::seek(src, SeekFrom::Data(off)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break, // only a hole is left
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(src, SeekFrom::Hole(data))?.min(len);
        let mut pos = data;
        while pos < hole {
            let n = usize::try_from(hole - pos).map_or(buf.len(), |r| r.min(buf.len()));
            let chunk = &mut buf[..n];
            src.read_exact_at(chunk, pos)?;
            let mut page = 0;
            while page < n {
                let zero = |p: usize| chunk[p..(p + PAGE).min(n)].iter().all(|&b| b == 0);
                if zero(page) {
                    page += PAGE;
                    continue;
                }
                let start = page;
                while page < n && !zero(page) {
                    page += PAGE;
                }
                let end = page.min(n);
                dst.write_all_at(&chunk[start..end], pos + start as u64)?;
            }
            pos += n as u64;
        }
        off = hole;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_nonzero_pages_are_written_into_a_fresh_file() {
        use std::os::unix::fs::{FileExt as _, MetadataExt as _};
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        let src = std::fs::File::create(&from).unwrap();
        src.set_len(8 << 20).unwrap();
        src.write_all_at(&[7u8; 5000], 4096 * 3).unwrap(); // two pages, partly
        src.write_all_at(&[0u8; 4096], 1 << 20).unwrap(); // written zeros: data, not content
        src.write_all_at(&[9u8], (8 << 20) - 1).unwrap(); // the last byte
        std::fs::File::create(&to)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        fill_ram("g", &from, &to).unwrap();
        assert_eq!(std::fs::read(&from).unwrap(), std::fs::read(&to).unwrap());
        // Three pages written, not 8 MiB.
        let blocks = std::fs::metadata(&to).unwrap().blocks();
        assert!(blocks > 0 && blocks <= 3 * 8 + 8, "{blocks} blocks");
        // A size mismatch is refused before anything is written.
        std::fs::File::create(&to)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        assert!(matches!(
            fill_ram("g", &from, &to),
            Err(DomainError::RamSize { .. })
        ));
    }

    #[test]
    fn incoming_defer_is_added_once_with_the_namespace() {
        let xml = "<domain type='qemu'>\n  <name>g</name>\n</domain>\n";
        let out = incoming_xml(xml).unwrap();
        assert!(out.starts_with(&format!("<domain type='qemu' xmlns:qemu='{QEMU_NS}'>")));
        assert!(out.contains("<qemu:arg value='-incoming'/>"));
        assert!(out.ends_with("</qemu:commandline>\n</domain>\n"));
        // A definition that already has the namespace keeps one declaration.
        let again = incoming_xml(&out).unwrap();
        assert_eq!(again.matches("xmlns:qemu").count(), 1);
        assert!(incoming_xml("<domain/>").is_none());
        assert!(incoming_xml("<other/>").is_none());
    }
}
