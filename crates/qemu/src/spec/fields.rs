//! Field checks, and one-line TOML errors that name the field.

use std::path::Path;

use super::SpecError;

pub(super) fn check_name(name: &str) -> Result<(), String> {
    if vmattest_core::chain::is_valid_name(name, 64) {
        Ok(())
    } else {
        Err(format!(
            "expected 1 to 64 of [A-Za-z0-9._-], not starting with '.', found {name:?}"
        ))
    }
}

pub(super) fn in_range(value: i64, min: u32, max: u32) -> Result<u32, String> {
    u32::try_from(value)
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| format!("expected {min} to {max}, found {value}"))
}

pub(super) fn parse_mac(mac: &str) -> Result<String, String> {
    let bad = || format!("expected six hex octets like 52:54:00:12:34:56, found {mac:?}");
    let octets: Vec<&str> = mac.split(':').collect();
    if octets.len() != 6
        || octets
            .iter()
            .any(|o| o.len() != 2 || !o.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(bad());
    }
    let first = u8::from_str_radix(octets[0], 16).map_err(|_| bad())?;
    if first & 1 != 0 {
        return Err(format!("{mac} is a multicast address"));
    }
    Ok(mac.to_ascii_lowercase())
}

/// Turns a TOML or serde error into one line naming the field, found from the error's span.
pub(super) fn toml_error(origin: &Path, text: &str, e: &toml::de::Error) -> SpecError {
    let message = e.message().trim().replace('\n', " ");
    let path = origin.to_path_buf();
    let Some(span) = e.span() else {
        return SpecError::Syntax {
            path,
            line: 0,
            detail: message,
        };
    };
    let line = text
        .get(..span.start)
        .map_or(0, |t| t.matches('\n').count())
        + 1;
    // A missing field is reported at its table, or at the empty span 0..0 for the root.
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    let (field, detail) = match missing {
        Some(name) if span == (0..0) => (Some(name.to_string()), "missing".to_string()),
        Some(name) => (
            field_at(text, span.start).map(|table| format!("{table}.{name}")),
            format!("missing (table at line {line})"),
        ),
        None => (
            field_at(text, span.start),
            format!("{message} (line {line})"),
        ),
    };
    match field {
        Some(field) => SpecError::Invalid {
            path,
            field,
            detail,
        },
        None => SpecError::Syntax {
            path,
            line,
            detail: message,
        },
    }
}

/// The dotted key path (`disk[1].format`) of the key or value covering `pos`. Every table is
/// searched: a `[table]` header's span does not cover the keys below it.
fn field_at(text: &str, pos: usize) -> Option<String> {
    use toml::de::{DeTable, DeValue};
    fn in_table(table: &DeTable<'_>, pos: usize) -> Option<String> {
        table.iter().find_map(|(key, value)| {
            let name = key.get_ref().to_string();
            let inner = in_value(value.get_ref(), pos);
            match inner {
                Some(rest) if rest.starts_with('[') => Some(format!("{name}{rest}")),
                Some(rest) => Some(format!("{name}.{rest}")),
                None if key.span().contains(&pos) || value.span().contains(&pos) => Some(name),
                None => None,
            }
        })
    }
    fn in_value(value: &DeValue<'_>, pos: usize) -> Option<String> {
        match value {
            DeValue::Table(t) => in_table(t, pos),
            DeValue::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| match in_value(item.get_ref(), pos) {
                    Some(rest) => Some(format!("[{i}].{rest}")),
                    None if item.span().contains(&pos) => Some(format!("[{i}]")),
                    None => None,
                }),
            _ => None,
        }
    }
    in_table(DeTable::parse(text).ok()?.get_ref(), pos)
}

/// KVM only where a stock guest kernel runs: a writable /dev/kvm, not the nested paravirtual
/// kvm_pvm (it only runs PVM-aware guests), and hardware virtualisation in the CPU.
pub(super) fn kvm_usable() -> bool {
    let writable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    writable
        && !Path::new("/sys/module/kvm_pvm").exists()
        && std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
}
