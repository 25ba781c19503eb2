//! The guest's serial console, as QEMU writes it to `console.log`: raw bytes, possibly a
//! partial last line and text that is not UTF-8.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use super::{VmError, last_error_line, live_pid};
use crate::spec::VmSpec;

/// Longest console line kept while searching; longer lines are cut.
const MAX_CONSOLE_LINE: usize = 64 << 10;

/// Waits for a complete console line containing `needle` and returns it. Fails early when
/// QEMU exits.
pub fn wait_console(spec: &VmSpec, needle: &str, timeout: Duration) -> Result<String, VmError> {
    let path = spec.console_path();
    let deadline = Instant::now() + timeout;
    let mut offset = 0u64;
    let mut line: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match File::open(&path) {
            Ok(mut f) => {
                if f.metadata().is_ok_and(|m| m.len() < offset) {
                    offset = 0; // replaced by a new start
                    line.clear();
                }
                f.seek(SeekFrom::Start(offset))
                    .and_then(|_| f.read(&mut chunk))
                    .unwrap_or(0)
            }
            Err(_) => 0,
        };
        offset += n as u64;
        for &b in &chunk[..n] {
            if b == b'\n' {
                if contains(&line, needle.as_bytes()) {
                    let text = String::from_utf8_lossy(&line);
                    return Ok(text.trim_end_matches('\r').to_string());
                }
                line.clear();
            } else if line.len() < MAX_CONSOLE_LINE {
                line.push(b);
            }
        }
        if n > 0 {
            continue;
        }
        if live_pid(spec).is_none() {
            return Err(VmError::Exited {
                name: spec.name().to_string(),
                what: format!("console line {needle:?}"),
                detail: last_error_line(spec),
            });
        }
        if Instant::now() >= deadline {
            return Err(VmError::ConsoleTimeout {
                name: spec.name().to_string(),
                needle: needle.to_string(),
                after: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
