//! Host workflows shared by every vmattest front end (the command line, the agent, a host
//! daemon, a libvirt hook): who signs, store secrets, snapshots of files and of VMs, rollback,
//! PCR binding and quote files, configuration measurement and the launch gate.
//!
//! Every error here knows its class ([`vmattest_core::class::ErrorClass`]);
//! [`class::classify`] finds the class of any error these workflows return.

pub mod chain;
pub mod class;
pub mod domain;
pub mod eventlog;
pub mod files;
pub mod hook;
pub mod jws;
pub mod keys;
pub mod launch;
pub mod measurement;
pub mod policy;
pub mod quotefile;
pub mod record;
pub mod release;
pub mod report;
pub mod revoke;
pub mod tpm;
pub mod verdict;
pub mod verifier;
pub mod vm;

pub use class::classify;
pub use verifier::Verifier;

/// The current time, for what a workflow signs.
pub fn now() -> vmattest_core::record::UnixTime {
    vmattest_core::record::UnixTime::from_system(std::time::SystemTime::now())
}
