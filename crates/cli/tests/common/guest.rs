//! A real test guest (kernel + busybox, from `scripts/build-guest.sh`) under QEMU, driven
//! through the `vmattest` binary.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::vmattest;

const TIMEOUT: Duration = Duration::from_secs(120);

pub fn guest_dir() -> PathBuf {
    let dir = std::env::var_os("VMATTEST_GUEST_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("VMATTEST_CACHE").map(|c| PathBuf::from(c).join("guest")))
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME");
            PathBuf::from(home).join(".cache/vmattest/guest")
        });
    assert!(
        dir.join("vmlinuz").is_file() && dir.join("initramfs.cpio.gz").is_file(),
        "no test guest in {}: run scripts/build-guest.sh",
        dir.display()
    );
    dir
}

/// One VM under a temp dir: spec, disk, run dir. Dropping it stops its QEMU.
pub struct Guest {
    pub spec: PathBuf,
    pub dir: PathBuf,
}

impl Guest {
    pub fn new(dir: &Path, name: &str) -> Guest {
        Guest::with_cmdline(dir, name, "")
    }

    /// A guest whose kernel command line also holds `extra` (such as `flipkeys=3`).
    pub fn with_cmdline(dir: &Path, name: &str, extra: &str) -> Guest {
        Guest::with_run_dir(dir, name, extra, &dir.join(format!("run-{name}")))
    }

    /// [`Guest::with_cmdline`] with its run directory (and so its RAM file) at `run_dir`.
    pub fn with_run_dir(dir: &Path, name: &str, extra: &str, run_dir: &Path) -> Guest {
        let g = guest_dir();
        let disk = dir.join(format!("{name}-disk0.raw"));
        std::fs::write(&disk, vec![0u8; 4 << 20]).unwrap();
        let spec = dir.join(format!("{name}.toml"));
        std::fs::write(
            &spec,
            format!(
                r#"name = "{name}"
memory_mib = 128
vcpus = 1
accel = "tcg"
run_dir = "{run_dir}"

[boot]
kernel = "{kernel}"
initrd = "{initrd}"
cmdline = "console=ttyS0 quiet panic=-1{extra}"

[[disk]]
name = "disk0"
path = "{name}-disk0.raw"
format = "raw"
"#,
                run_dir = run_dir.display(),
                kernel = g.join("vmlinuz").display(),
                initrd = g.join("initramfs.cpio.gz").display(),
                extra = if extra.is_empty() {
                    String::new()
                } else {
                    format!(" {extra}")
                },
            ),
        )
        .unwrap();
        Guest {
            spec,
            dir: run_dir.to_path_buf(),
        }
    }

    pub fn arg(&self) -> &str {
        self.spec.to_str().unwrap()
    }

    pub fn console(&self) -> String {
        console_text(&self.dir.join("console.log"))
    }

    pub fn ticks(&self) -> Vec<u64> {
        console_ticks(&self.dir.join("console.log"))
    }

    /// Waits for a tick newer than `after` and returns it.
    pub fn next_tick(&self, after: Option<u64>) -> u64 {
        wait_tick(&self.dir.join("console.log"), after, TIMEOUT)
    }

    pub fn pid(&self) -> Option<i32> {
        vmattest(["--json", "vm", "status", "--vm", self.arg()])
            .ok()
            .json()["pid"]
            .as_i64()
            .map(|p| p as i32)
    }

    pub fn start(&self) {
        vmattest(["vm", "start", "--vm", self.arg(), "--wait-for", "READY"]).ok();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = vmattest(["vm", "stop", "--vm", self.arg()]);
    }
}

/// The text of the test guest's console log at `path` (empty while there is none).
pub fn console_text(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// The "tick N" counters the test guest printed to the console log at `path`.
pub fn console_ticks(path: &Path) -> Vec<u64> {
    vmattest_testkit::console::parse_ticks(console_text(path).as_bytes())
}

/// Waits up to `timeout` for a tick newer than `after` in the console log at `path`.
pub fn wait_tick(path: &Path, after: Option<u64>, timeout: Duration) -> u64 {
    let t = Instant::now();
    loop {
        if let Some(&last) = console_ticks(path).last()
            && after.is_none_or(|a| last > a)
        {
            return last;
        }
        assert!(
            t.elapsed() < timeout,
            "no tick after {after:?}: {}",
            console_text(path)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
