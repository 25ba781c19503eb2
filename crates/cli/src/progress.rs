//! Progress bars on a terminal, silence elsewhere.

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use vmattest_core::tree::Progress;

/// Inputs below this size finish too fast to need a bar.
const MIN_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone)]
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar for `total` bytes, drawn only when stderr is a terminal and output is for humans.
    pub fn new(total: u64, label: &str, json: bool) -> Bar {
        if json || total < MIN_BYTES || !std::io::stderr().is_terminal() {
            return Bar(ProgressBar::with_draw_target(
                Some(total),
                ProgressDrawTarget::hidden(),
            ));
        }
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template(
            "{msg} {bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(label.to_owned());
        Bar(bar)
    }

    /// A bar whose total is announced later through [`Progress::set_total`].
    pub fn later(label: &str, json: bool) -> Bar {
        Bar::new(if json { 0 } else { MIN_BYTES }, label, json)
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Bar {
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    fn set_total(&self, bytes: u64) {
        self.0.set_length(bytes);
    }
}
