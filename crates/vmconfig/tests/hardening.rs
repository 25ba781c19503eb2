//! Hostile inputs to configuration measurement: XML that would make parsing quadratic, and
//! FIFOs (or other special files) named where a file or disk is expected.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{pattern, write};
use vmattest_qemu::VmSpec;
use vmattest_testkit::images::error_chain as chain;
use vmattest_vmconfig::libvirt::{MAX_ATTRIBUTES, MAX_DEPTH};
use vmattest_vmconfig::{XmlError, domain_params, load_domain_params, spec_params};

/// A kernel-boot domain whose `<devices>` holds `extra` (inserted verbatim).
fn domain(dir: &Path, extra: &str) -> String {
    format!(
        "<domain type='kvm'>\n<memory unit='MiB'>256</memory>\n<vcpu>1</vcpu>\n\
         <os><type machine='pc'>hvm</type><kernel>{}/vmlinuz</kernel></os>\n\
         <devices>\n{extra}</devices>\n</domain>\n",
        dir.display()
    )
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

/// Runs `f` on another thread and fails the test if it has not returned within `limit`: a
/// hang must fail the test, not stall the suite.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not return within {limit:?}"))
}

#[test]
fn regression_quadratic_attributes_refused_in_linear_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "vmlinuz", &pattern(10_000, 1));
    // 80,000 attributes on one element: refused before the parser's pairwise check.
    let mut attrs = String::new();
    for i in 0..80_000 {
        write!(attrs, " a{i}='x'").unwrap();
    }
    let xml = domain(d, &format!("<memballoon{attrs}/>\n"));
    let t = Instant::now();
    let err = domain_params(&xml, Path::new("dom.xml")).unwrap_err();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(
        matches!(&err, XmlError::Limit { element, line: 6, .. } if element == "memballoon"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert!(
        msg.contains(&format!("more than {MAX_ATTRIBUTES} attributes")),
        "{msg}"
    );

    // The same 80,000 attributes spread over elements that each stay at the cap parse, and
    // in time linear in their number.
    let spread = |n: usize| {
        let mut s = String::new();
        for e in 0..n / MAX_ATTRIBUTES {
            s.push_str("<memballoon");
            for i in 0..MAX_ATTRIBUTES {
                write!(s, " a{i}='{e}'").unwrap();
            }
            s.push_str("/>\n");
        }
        domain(d, &s)
    };
    let time = |xml: &str| {
        let t = Instant::now();
        domain_params(xml, Path::new("dom.xml")).unwrap();
        t.elapsed()
    };
    let (small, large) = (spread(8_000), spread(80_000));
    let (t_small, t_large) = (time(&small), time(&large));
    assert!(t_large < Duration::from_secs(1), "took {t_large:?}");
    // Ten times the input may cost at most ~10x (with slack for noise), not 100x.
    assert!(
        t_large < t_small * 30 + Duration::from_millis(50),
        "8,000 attributes {t_small:?}, 80,000 {t_large:?}"
    );

    // Many plain elements (a large but legal document) parse in linear time too.
    let many = |n: usize| domain(d, &"<memballoon model='virtio'/>\n".repeat(n));
    let (t_small, t_large) = (time(&many(6_000)), time(&many(60_000)));
    assert!(t_large < Duration::from_secs(2), "took {t_large:?}");
    assert!(
        t_large < t_small * 30 + Duration::from_millis(50),
        "6,000 elements {t_small:?}, 60,000 {t_large:?}"
    );
    eprintln!("refused in {took:?}; 60,000 elements parsed in {t_large:?}");
}

#[test]
fn regression_deep_nesting_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "vmlinuz", &pattern(10_000, 1));
    let n = 100_000;
    let xml = domain(d, &format!("{}{}", "<x>".repeat(n), "</x>".repeat(n)));
    let t = Instant::now();
    let err = domain_params(&xml, Path::new("dom.xml")).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(
        err.to_string()
            .contains(&format!("more than {MAX_DEPTH} levels of nesting")),
        "{err}"
    );
    // Quoted `=` and `>` and comments do not count as attributes or tags.
    let ok = domain(
        d,
        &format!(
            "<!-- {} --><memballoon model='a=b>c' x=\"=\"/>\n",
            "a= ".repeat(1000)
        ),
    );
    domain_params(&ok, Path::new("dom.xml")).unwrap();
}

#[test]
fn regression_fifo_as_disk_kernel_or_xml_never_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    write(&d, "vmlinuz", &pattern(10_000, 1));
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    let limit = Duration::from_secs(5);

    // As a libvirt disk source, raw and qcow2.
    for format in ["raw", "qcow2"] {
        let xml = domain(
            &d,
            &format!(
                "<disk type='file'><driver name='qemu' type='{format}'/>\
                 <source file='{}'/><target dev='vda'/></disk>\n",
                fifo.display()
            ),
        );
        let err = within(limit, move || {
            domain_params(&xml, Path::new("dom.xml")).map(drop)
        })
        .unwrap_err();
        let err = chain(&err);
        assert!(
            err.contains("found a FIFO") && err.contains("fifo"),
            "{err}"
        );
    }
    // As the backing file of a qcow2 disk (qemu-img itself would block on it).
    let top = d.join("top.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-u", "-b", "fifo", "-F", "raw"])
        .arg(&top)
        .arg("1M")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = top.clone();
    let err = within(limit, move || {
        vmattest_vmconfig::disk_root(&t, "qcow2").map(drop)
    })
    .unwrap_err();
    let err = chain(&err);
    assert!(
        err.contains("fifo: expected") && err.contains("found a FIFO"),
        "{err}"
    );

    // As the kernel, the XML file itself, and a spec's kernel and disk.
    let xml = domain(&d, "").replace(
        &format!("{}/vmlinuz", d.display()),
        &fifo.display().to_string(),
    );
    let err = within(limit, move || {
        domain_params(&xml, Path::new("dom.xml")).map(drop)
    })
    .unwrap_err();
    let err = chain(&err);
    assert!(
        err.contains("<os><kernel>") && err.contains("found a FIFO"),
        "{err}"
    );
    let f = fifo.clone();
    let err = within(limit, move || load_domain_params(&f).map(drop)).unwrap_err();
    let err = chain(&err);
    assert!(err.contains("found a FIFO"), "{err}");

    write(&d, "disk.raw", &[0u8; 8192]);
    for (kernel, disk) in [
        (&fifo, d.join("disk.raw")),
        (&d.join("vmlinuz"), fifo.clone()),
    ] {
        let spec = spec_file(&d, kernel, &disk);
        let err = within(limit, move || {
            let spec = VmSpec::load(&spec).unwrap();
            spec_params(&spec).map(drop)
        })
        .unwrap_err();
        let err = chain(&err);
        assert!(err.contains("found a FIFO"), "{err}");
    }

    // A directory and a character device are refused too; a symlink to a file is followed.
    let err = chain(&vmattest_vmconfig::sha256_file(&d).unwrap_err());
    assert!(err.contains("found a directory"), "{err}");
    let err = vmattest_vmconfig::disk_root(Path::new("/dev/null"), "raw").unwrap_err();
    let err = chain(&err);
    assert!(err.contains("found a character device"), "{err}");
    std::os::unix::fs::symlink(d.join("vmlinuz"), d.join("link")).unwrap();
    assert_eq!(
        vmattest_vmconfig::sha256_file(&d.join("link")).unwrap(),
        vmattest_vmconfig::sha256_file(&d.join("vmlinuz")).unwrap()
    );
}

fn spec_file(dir: &Path, kernel: &Path, disk: &Path) -> PathBuf {
    let p = dir.join("spec.toml");
    let text = format!(
        "name = \"fifo\"\nmemory_mib = 64\nvcpus = 1\naccel = \"tcg\"\nrun_dir = \"run\"\n\
         [boot]\nkernel = \"{}\"\n[[disk]]\nname = \"disk0\"\npath = \"{}\"\nformat = \"raw\"\n",
        kernel.display(),
        disk.display()
    );
    std::fs::write(&p, text).unwrap();
    p
}
