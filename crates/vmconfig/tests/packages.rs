//! Package lists: manifest and dpkg status parsers, parameters checked against `sort` and
//! `sha256sum`, and the status file read out of an ext4 image with debugfs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{oracle, pairs, tool, write};
use vmattest_vmconfig::debugfs::{DPKG_STATUS_PATH, read_file_with};
use vmattest_vmconfig::packages::{MAX_PACKAGE_INPUT_BYTES, canonical_bytes};
use vmattest_vmconfig::{
    DebugfsError, Package, PackageError, package_params, parse_manifest, parse_status,
    status_from_image,
};

fn status_fixture() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dpkg-status");
    std::fs::read_to_string(p).unwrap()
}

fn pkg(name: &str, version: &str) -> Package {
    Package {
        name: name.into(),
        version: version.into(),
    }
}

/// What the status fixture holds installed.
fn expected_packages() -> Vec<Package> {
    vec![
        pkg("base-files", "12.4+deb12u5"),
        pkg("libc6", "2.36-9+deb12u7"),
        pkg("libstdc++6", "12.2.0-14"),
        pkg("openssh-server", "1:9.2p1-2+deb12u3"),
    ]
}

/// `LC_ALL=C sort -u FILE | sha256sum`, the canonical list's digest computed by coreutils.
fn sorted_sha256(path: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("LC_ALL=C sort -u \"$1\" | sha256sum")
        .arg("sh")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn status_file_keeps_installed_packages_only() {
    let packages = parse_status(&status_fixture(), "status").unwrap();
    assert_eq!(packages, expected_packages());
}

#[test]
fn manifest_and_params() {
    let dir = tempfile::tempdir().unwrap();
    // dpkg-query order is not sorted, and lists a multi-arch package once per architecture.
    let manifest = "openssh-server 1:9.2p1-2+deb12u3\nlibc6 2.36-9+deb12u7\n\
                    base-files 12.4+deb12u5\nlibstdc++6 12.2.0-14\nlibc6 2.36-9+deb12u7\n";
    let path = write(dir.path(), "manifest", manifest.as_bytes());
    let packages = parse_manifest(manifest, "manifest").unwrap();
    assert_eq!(packages, expected_packages());
    let params = package_params(&packages).unwrap();
    let digest = sorted_sha256(&path);
    assert_eq!(
        pairs(&params),
        vec![
            ("package.base-files", "12.4+deb12u5"),
            ("package.libc6", "2.36-9+deb12u7"),
            ("package.libstdc__6", "12.2.0-14"),
            ("package.openssh-server", "1:9.2p1-2+deb12u3"),
            ("packages.sha256", digest.as_str()),
        ]
    );
    assert_eq!(
        canonical_bytes(&packages),
        "base-files 12.4+deb12u5\nlibc6 2.36-9+deb12u7\nlibstdc++6 12.2.0-14\n\
         openssh-server 1:9.2p1-2+deb12u3\n"
    );
}

#[test]
fn empty_lists() {
    assert_eq!(parse_manifest("\n\n", "m").unwrap(), vec![]);
    assert_eq!(parse_status("", "s").unwrap(), vec![]);
    let params = package_params(&[]).unwrap();
    // SHA-256 of the empty string.
    assert_eq!(
        pairs(&params),
        vec![(
            "packages.sha256",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        )]
    );
}

#[test]
fn bad_manifests_are_refused() {
    let cases = [
        ("libc6\n", "line"),
        ("libc6 1 extra\n", "line"),
        ("LibC6 1\n", "Package"),
        ("x 1\n", "Package"),
        ("libc6 1\nlibc6 2\n", "versions"),
    ];
    for (text, what) in cases {
        let err = parse_manifest(text, "m.txt").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("m.txt") && msg.contains(what),
            "{text:?}: {msg}"
        );
    }
    let err = parse_manifest("a1 1\nb2 2\nbad 1 2\n", "m.txt").unwrap_err();
    assert!(
        matches!(err, PackageError::Invalid { line: 3, .. }),
        "{err}"
    );
}

#[test]
fn bad_status_files_are_refused() {
    let cases = [
        (" continuation first\n", "continuation"),
        ("Package: a1\nno colon here\n", "Field: value"),
        ("Package: a1\nStatus: install ok installed\n", "Version"),
        ("Status: install ok installed\nVersion: 1\n", "Package"),
        (
            "Package: a1\nStatus: install ok installed\nVersion: 1\n\n\
             Package: a1\nStatus: install ok installed\nVersion: 2\n",
            "versions",
        ),
    ];
    for (text, what) in cases {
        let err = parse_status(text, "status").unwrap_err();
        assert!(err.to_string().contains(what), "{text:?}: {err}");
    }
    // A package that is not installed needs no version.
    assert_eq!(
        parse_status("Package: a1\nStatus: deinstall ok config-files\n", "s").unwrap(),
        vec![]
    );
}

#[test]
fn oversize_input_is_refused() {
    let big = "a".repeat(MAX_PACKAGE_INPUT_BYTES + 1);
    assert!(matches!(
        parse_manifest(&big, "m").unwrap_err(),
        PackageError::TooLarge { .. }
    ));
    assert!(matches!(
        parse_status(&big, "s").unwrap_err(),
        PackageError::TooLarge { .. }
    ));
}

/// This host's own dpkg database, if it has one, against `dpkg-query`.
#[test]
fn host_status_file_matches_dpkg_query() {
    let status = Path::new("/var/lib/dpkg/status");
    let Ok(text) = std::fs::read_to_string(status) else {
        eprintln!("no dpkg status file here; skipped");
        return;
    };
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "dpkg-query -W -f '${Status}\\t${Package} ${Version}\\n' | \
             awk -F '\\t' '$1 == \"install ok installed\" || $1 == \"hold ok installed\" \
             { print $2 }' | LC_ALL=C sort -u",
        )
        .output();
    let Some(out) = out.ok().filter(|o| o.status.success()) else {
        eprintln!("dpkg-query not runnable; skipped");
        return;
    };
    let packages = parse_status(&text, "status").unwrap();
    assert_eq!(
        canonical_bytes(&packages),
        String::from_utf8(out.stdout).unwrap()
    );
}

/// An ext4 image holding `files` (path in the guest, contents), built by `mkfs.ext4 -d`.
fn ext4_image(dir: &Path, files: &[(&str, &str)]) -> std::path::PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    for (path, text) in files {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let image = dir.join("guest.ext4");
    oracle(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            root.to_str().unwrap(),
            image.to_str().unwrap(),
            "8M",
        ],
    );
    image
}

#[test]
fn status_from_ext4_image() {
    let dir = tempfile::tempdir().unwrap();
    let status = status_fixture();
    let image = ext4_image(dir.path(), &[(DPKG_STATUS_PATH, &status)]);
    let text = status_from_image(&image).unwrap();
    assert_eq!(text, status);
    assert_eq!(parse_status(&text, "image").unwrap(), expected_packages());
}

#[test]
fn debugfs_errors() {
    let dir = tempfile::tempdir().unwrap();
    let image = ext4_image(dir.path(), &[("/etc/hostname", "guest\n")]);
    let err = status_from_image(&image).unwrap_err();
    assert!(matches!(err, DebugfsError::FileAbsent { .. }), "{err}");
    assert!(err.to_string().contains(DPKG_STATUS_PATH), "{err}");

    let junk = write(dir.path(), "junk.img", &common::pattern(1 << 20, 9));
    let err = status_from_image(&junk).unwrap_err();
    assert!(matches!(err, DebugfsError::Failed { .. }), "{err}");

    let err = status_from_image(&dir.path().join("absent.img")).unwrap_err();
    assert!(matches!(err, DebugfsError::Image { .. }), "{err}");

    let err = read_file_with(&dir.path().join("no-debugfs"), &image, DPKG_STATUS_PATH).unwrap_err();
    assert!(matches!(err, DebugfsError::NotInstalled), "{err}");
    assert!(err.to_string().contains("e2fsprogs"), "{err}");

    let err = read_file_with(&tool("debugfs"), &image, "/etc/host name").unwrap_err();
    assert!(matches!(err, DebugfsError::Failed { .. }), "{err}");
}
