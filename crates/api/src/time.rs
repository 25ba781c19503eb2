//! Times in API bodies: RFC 3339 strings in UTC (`2026-12-06T10:55:01Z`, nine fraction digits
//! when the time has nanoseconds), the one text form of [`UnixTime`]. Use on a field with
//! `#[serde(with = "vmattest_api::time")]`.
//!
//! EAR JWTs are not API bodies: their claims keep JWT's integer NumericDate.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};
use vmattest_core::record::UnixTime;

pub fn serialize<S: Serializer>(t: &UnixTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(t)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<UnixTime, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(D::Error::custom)
}

/// Seconds since the epoch as a time; a negative count (never written by the server) reads
/// as the epoch.
pub fn from_secs(secs: i64) -> UnixTime {
    UnixTime {
        secs: u64::try_from(secs).unwrap_or(0),
        nanos: 0,
    }
}

/// The same form for an optional time (`null` when absent): `#[serde(with = "time::opt")]`.
pub mod opt {
    use serde::{Deserialize as _, Deserializer, Serializer};
    use vmattest_core::record::UnixTime;

    pub fn serialize<S: Serializer>(t: &Option<UnixTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(t),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<UnixTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| text.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct T {
        #[serde(with = "crate::time")]
        time: UnixTime,
    }

    #[test]
    fn rfc3339_on_the_wire() {
        let t = T {
            time: from_secs(1_796_554_501),
        };
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"time":"2026-12-06T10:55:01Z"}"#);
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), t);
        let fine: T = serde_json::from_str(r#"{"time":"2026-12-06T10:55:01.5Z"}"#).unwrap();
        assert_eq!(fine.time.nanos, 500_000_000);
    }

    #[test]
    fn integers_and_offsets_are_refused() {
        for bad in [
            r#"{"time":1796554501}"#,
            r#"{"time":"2026-12-06T10:55:01+01:00"}"#,
            r#"{"time":"yesterday"}"#,
        ] {
            assert!(serde_json::from_str::<T>(bad).is_err(), "{bad}");
        }
        assert_eq!(from_secs(-5), from_secs(0));
    }
}
