//! Kernel symbol tables in System.map form (`nm -n` output: address, type, name).

use std::collections::HashMap;

use super::AttestError;

pub const MAX_SYSTEM_MAP_BYTES: usize = 64 << 20;
/// Kernel addresses are relative to this symbol, whose physical address the policy gives.
pub const ANCHOR_SYMBOL: &str = "_text";

#[derive(Debug, Clone)]
pub struct SystemMap {
    symbols: HashMap<String, u64>,
}

impl SystemMap {
    pub fn parse(text: &str) -> Result<SystemMap, AttestError> {
        if text.len() > MAX_SYSTEM_MAP_BYTES {
            return Err(AttestError::SystemMap {
                line: 0,
                reason: format!(
                    "expected at most {MAX_SYSTEM_MAP_BYTES} bytes, found {}",
                    text.len()
                ),
            });
        }
        let mut symbols = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let mut parts = line.split_ascii_whitespace();
            let (Some(addr), Some(_kind), Some(name), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(AttestError::SystemMap {
                    line: i + 1,
                    reason: format!("expected \"ADDRESS TYPE NAME\", found {line:?}"),
                });
            };
            let addr = u64::from_str_radix(addr, 16).map_err(|_| AttestError::SystemMap {
                line: i + 1,
                reason: format!("expected a hexadecimal address, found {addr:?}"),
            })?;
            // The first definition wins, as in `nm -n` order.
            symbols.entry(name.to_string()).or_insert(addr);
        }
        if !symbols.contains_key(ANCHOR_SYMBOL) {
            return Err(AttestError::SystemMap {
                line: 0,
                reason: format!("expected the symbol {ANCHOR_SYMBOL}, found none"),
            });
        }
        Ok(SystemMap { symbols })
    }

    pub fn addr(&self, name: &str) -> Option<u64> {
        self.symbols.get(name).copied()
    }

    /// Guest-physical address of `name` when `_text` was loaded at `load`.
    pub fn phys(&self, name: &str, load: u64) -> Result<u64, AttestError> {
        let addr = self
            .addr(name)
            .ok_or_else(|| AttestError::UnknownSymbol(name.to_string()))?;
        let anchor = self.addr(ANCHOR_SYMBOL).unwrap_or(0);
        addr.checked_sub(anchor)
            .and_then(|off| load.checked_add(off))
            .ok_or_else(|| AttestError::Policy {
                field: format!("symbol {name}"),
                expected: format!("an address at or after {ANCHOR_SYMBOL}"),
                found: format!("{addr:#x}"),
            })
    }
}
