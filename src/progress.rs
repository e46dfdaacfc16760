//! Progress bars for long work (docs/CONTRACT.md §2: more than ~100 MiB, only on a terminal).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

const THRESHOLD: u64 = 100 << 20;

pub fn bar(total: u64, what: &str) -> ProgressBar {
    if total < THRESHOLD || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(total);
    b.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap()
            .progress_chars("=> "),
    );
    b.set_message(what.to_string());
    b
}
