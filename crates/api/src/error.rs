//! The error codes of the server's error responses: one enum, shared by the server (which
//! sends them) and the client (which matches on them), so that neither spells a code as a
//! string literal.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vmattest_core::class::ErrorClass;

/// The `code` of an [`crate::ErrorBody`]. On the wire a snake_case string (docs/API.md lists
/// them all with their HTTP status and class).
///
/// A code this build does not know (a newer server's) decodes as [`ErrorCode::Other`] with its
/// text, rather than failing the whole response: the message still reaches the user, and the
/// HTTP status still says what kind of refusal it was.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorCode {
    /// The body, or a field of it, does not decode.
    Malformed,
    /// The request decodes but is not acceptable (a bad name, key, policy or reference).
    Invalid,
    /// No such endpoint, or the named object does not exist.
    NotFound,
    /// The VM that signed evidence names is not registered.
    UnknownVm,
    /// A host or VM of that name is already registered.
    Exists,
    /// The token to revoke is the only admin token.
    LastAdmin,
    /// The VM has no golden baseline for the policy.
    NoBaseline,
    /// The VM has no reference configuration to check against.
    NoReference,
    /// The request body is over the server's limit.
    TooLarge,
    /// The endpoint exists but not for this method.
    MethodNotAllowed,
    /// No token, or a token the server does not know.
    Unauthorized,
    /// The token's role may not call the endpoint, or an agent acts for another host's VM.
    Forbidden,
    /// A signature is not by the key registered for the host.
    UnknownKey,
    /// A signature does not verify.
    BadSignature,
    /// A TPM key's certification by the attestation key does not verify.
    TpmBinding,
    /// A signed time is outside the server's window.
    Stale,
    /// Evidence or a baseline names another policy than the VM's.
    PolicyMismatch,
    /// A subset the VM is not approved for.
    UnapprovedSubset,
    /// A hash algorithm other than the policy's.
    Algorithm,
    /// A snapshot report without a nonce.
    MissingNonce,
    /// A nonce this server did not issue for this VM (and subset).
    UnknownNonce,
    /// A nonce whose challenge expired.
    ExpiredNonce,
    /// A nonce already used, or a snapshot request already answered.
    ReplayedNonce,
    /// Regions are not exactly the subset's, or a page count differs.
    Regions,
    /// A configuration opening does not open the signed root.
    RootMismatch,
    /// Evidence names a patch-site report by fingerprint that the server does not hold;
    /// the agent sends the whole report instead.
    UnknownSiteReport,
    /// A host's quote does not satisfy its group's host policy, so nothing is released to it.
    HostUntrusted,
    /// No key of the VM is held for release, or none for this host.
    NoKey,
    /// The request body did not arrive in time.
    BodyTimeout,
    /// The server failed; the details are in its log only.
    Internal,
    /// A code this build does not know, as the server sent it.
    Other(String),
}

impl ErrorCode {
    /// Every code this build knows, in documentation order.
    pub const KNOWN: [ErrorCode; 30] = [
        ErrorCode::Malformed,
        ErrorCode::Invalid,
        ErrorCode::NotFound,
        ErrorCode::UnknownVm,
        ErrorCode::Exists,
        ErrorCode::LastAdmin,
        ErrorCode::NoBaseline,
        ErrorCode::NoReference,
        ErrorCode::TooLarge,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::UnknownKey,
        ErrorCode::BadSignature,
        ErrorCode::TpmBinding,
        ErrorCode::Stale,
        ErrorCode::PolicyMismatch,
        ErrorCode::UnapprovedSubset,
        ErrorCode::Algorithm,
        ErrorCode::MissingNonce,
        ErrorCode::UnknownNonce,
        ErrorCode::ExpiredNonce,
        ErrorCode::ReplayedNonce,
        ErrorCode::Regions,
        ErrorCode::RootMismatch,
        ErrorCode::UnknownSiteReport,
        ErrorCode::HostUntrusted,
        ErrorCode::NoKey,
        ErrorCode::BodyTimeout,
        ErrorCode::Internal,
    ];

    /// The code on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::Invalid => "invalid",
            ErrorCode::NotFound => "not_found",
            ErrorCode::UnknownVm => "unknown_vm",
            ErrorCode::Exists => "exists",
            ErrorCode::LastAdmin => "last_admin",
            ErrorCode::NoBaseline => "no_baseline",
            ErrorCode::NoReference => "no_reference",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UnknownKey => "unknown_key",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::TpmBinding => "tpm_binding",
            ErrorCode::Stale => "stale",
            ErrorCode::PolicyMismatch => "policy_mismatch",
            ErrorCode::UnapprovedSubset => "unapproved_subset",
            ErrorCode::Algorithm => "algorithm",
            ErrorCode::MissingNonce => "missing_nonce",
            ErrorCode::UnknownNonce => "unknown_nonce",
            ErrorCode::ExpiredNonce => "expired_nonce",
            ErrorCode::ReplayedNonce => "replayed_nonce",
            ErrorCode::Regions => "regions",
            ErrorCode::RootMismatch => "root_mismatch",
            ErrorCode::UnknownSiteReport => "unknown_site_report",
            ErrorCode::HostUntrusted => "host_untrusted",
            ErrorCode::NoKey => "no_key",
            ErrorCode::BodyTimeout => "body_timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::Other(code) => code,
        }
    }

    /// The code of a wire name; never fails (see [`ErrorCode::Other`]).
    pub fn from_name(name: &str) -> ErrorCode {
        ErrorCode::KNOWN
            .iter()
            .find(|c| c.as_str() == name)
            .cloned()
            .unwrap_or_else(|| ErrorCode::Other(name.to_owned()))
    }

    /// The HTTP status the server sends this code with (400 for a code it does not know).
    pub fn status(&self) -> u16 {
        match self {
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound | ErrorCode::UnknownVm => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::BodyTimeout => 408,
            ErrorCode::Exists
            | ErrorCode::LastAdmin
            | ErrorCode::NoBaseline
            | ErrorCode::NoReference
            | ErrorCode::NoKey
            | ErrorCode::HostUntrusted
            | ErrorCode::UnknownSiteReport => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::Internal => 500,
            _ => 400,
        }
    }

    /// What kind of failure the code reports. A code names one check, so it has one class
    /// wherever it is used. An unknown code is [`ErrorClass::Input`] here; a client that has
    /// the HTTP status classifies it by that instead.
    pub fn class(&self) -> ErrorClass {
        match self {
            // A check of signed data against keys, nonces, times or references failed.
            ErrorCode::UnknownKey
            | ErrorCode::BadSignature
            | ErrorCode::TpmBinding
            | ErrorCode::Stale
            | ErrorCode::PolicyMismatch
            | ErrorCode::UnapprovedSubset
            | ErrorCode::Algorithm
            | ErrorCode::MissingNonce
            | ErrorCode::UnknownNonce
            | ErrorCode::ExpiredNonce
            | ErrorCode::ReplayedNonce
            | ErrorCode::Regions
            | ErrorCode::RootMismatch
            | ErrorCode::HostUntrusted
            | ErrorCode::UnknownSiteReport => ErrorClass::Verification,
            ErrorCode::Unauthorized | ErrorCode::Forbidden => ErrorClass::Denied,
            ErrorCode::BodyTimeout | ErrorCode::Internal => ErrorClass::Environment,
            ErrorCode::Malformed
            | ErrorCode::Invalid
            | ErrorCode::NotFound
            | ErrorCode::UnknownVm
            | ErrorCode::Exists
            | ErrorCode::LastAdmin
            | ErrorCode::NoBaseline
            | ErrorCode::NoReference
            | ErrorCode::NoKey
            | ErrorCode::TooLarge
            | ErrorCode::MethodNotAllowed
            | ErrorCode::Other(_) => ErrorClass::Input,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ErrorCode, D::Error> {
        let name = String::deserialize(d)?;
        Ok(ErrorCode::from_name(&name))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        let mut names: Vec<&str> = ErrorCode::KNOWN.iter().map(ErrorCode::as_str).collect();
        for code in &ErrorCode::KNOWN {
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(&serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
            assert!(!matches!(
                ErrorCode::from_name(code.as_str()),
                ErrorCode::Other(_)
            ));
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::KNOWN.len());
    }

    #[test]
    fn an_unknown_code_still_decodes() {
        let code: ErrorCode = serde_json::from_str("\"quota_exceeded\"").unwrap();
        assert_eq!(code, ErrorCode::Other("quota_exceeded".into()));
        assert_eq!(code.to_string(), "quota_exceeded");
        assert_eq!(serde_json::to_string(&code).unwrap(), "\"quota_exceeded\"");
    }

    #[test]
    fn classes_follow_the_status() {
        for code in &ErrorCode::KNOWN {
            let expected = match code.status() {
                401 | 403 => ErrorClass::Denied,
                408 | 500 => ErrorClass::Environment,
                _ => code.class(),
            };
            assert_eq!(code.class(), expected, "{code}");
        }
        assert_eq!(ErrorCode::BadSignature.class().exit_code(), 1);
        assert_eq!(ErrorCode::NotFound.class().exit_code(), 2);
    }
}
