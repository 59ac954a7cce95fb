//! Progress bars of long data work (decoding a split, packing shards). They join the
//! program's [`MultiProgress`] once it is [attached](attach), so that its log lines
//! print above them; before that they draw on their own.
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::sync::OnceLock;

static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// Draws this crate's progress bars inside `bars` (the caller's log lines print above
/// it). The first call wins.
pub fn attach(bars: &MultiProgress) {
    let _ = BARS.set(bars.clone());
}

/// A bar of `len` steps drawn with `template` (indicatif's syntax; a constant of the
/// caller).
pub fn bar(len: u64, template: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let bar = match BARS.get() {
        Some(bars) => bars.add(bar),
        None => bar,
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}
