//! Progress bars for long commands (`hostd run`, `bench`, `boot`, `xen-lab`): on stderr,
//! drawn only when stderr is a terminal and `-q` was not given; the log lines they replace
//! still print above the bar, or plainly when it is hidden.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);

/// `-q`: no bars at all (errors only on stderr).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Where bars draw: stderr (indicatif hides it when stderr is not a terminal), or nowhere
/// under `-q`.
pub fn target() -> ProgressDrawTarget {
    if QUIET.load(Ordering::Relaxed) {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    }
}

/// A set of bars drawn together (the fleets of `hostd boot`).
pub fn multi() -> MultiProgress {
    MultiProgress::with_draw_target(target())
}

/// A bar of `len` steps showing position, ETA and the current step.
pub fn steps(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::with_draw_target(Some(len), target());
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{pos}}/{{len}} [{{bar:30}}] {{elapsed}} elapsed, ETA {{eta}} {{msg}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    b
}

/// A spinner for work without a known length, showing elapsed time and the current phase.
pub fn spinner(what: &str) -> ProgressBar {
    let b = ProgressBar::with_draw_target(None, target());
    b.set_style(
        ProgressStyle::with_template(&format!("{{spinner}} {what} {{elapsed}}: {{msg}}"))
            .expect("valid template"),
    );
    b.enable_steady_tick(Duration::from_millis(250));
    b
}

/// Prints a log line above the bar (plainly on stderr when the bar is hidden: a hidden
/// bar's println prints nothing); nothing under `-q`, which keeps stderr to errors.
pub fn line(bar: &ProgressBar, text: &str) {
    if QUIET.load(Ordering::Relaxed) {
        return;
    }
    if bar.is_hidden() {
        eprintln!("{text}");
    } else {
        bar.println(text);
    }
}
