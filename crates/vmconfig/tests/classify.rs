//! Error classes of configuration measurement: what the caller handed over is Input, a tool or
//! the OS failing is Environment.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use vmattest_core::class::{Classify, ErrorClass};
use vmattest_vmconfig::{
    MeasureError, PackageError, XmlError, domain_params, load_domain_params, parse_manifest,
    sha256_file,
};

#[test]
fn missing_files_are_input() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent");
    let e = sha256_file(&missing).unwrap_err();
    assert!(matches!(e, MeasureError::Read { .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Input);
    let e = load_domain_params(&missing).unwrap_err();
    assert!(matches!(e, XmlError::Io { .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Input);
}

#[test]
fn malformed_and_truncated_descriptions_are_input() {
    let origin = Path::new("dom.xml");
    let e = domain_params("<domain type='kvm'><memory", origin).unwrap_err();
    assert!(matches!(e, XmlError::Parse { .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Input);
    let e = domain_params("<network/>", origin).unwrap_err();
    assert!(matches!(e, XmlError::NotDomain { .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Input);
    let e = parse_manifest("bash 5.2\nbash 5.1\n", "manifest").unwrap_err();
    assert!(matches!(e, PackageError::Conflict { .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Input);
}
