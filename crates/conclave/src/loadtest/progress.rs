//! The progress line on stderr.

use std::io::Write as _;
use std::time::{Duration, Instant};

/// One progress line on stderr: rewritten in place on a terminal, every 5 s otherwise.
pub(crate) struct Progress {
    pub(crate) tty: bool,
    pub(crate) last: Instant,
}

impl Progress {
    pub(crate) fn show(&mut self, line: &str) {
        if self.tty {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        } else if self.last.elapsed() >= Duration::from_secs(5) {
            eprintln!("{line}");
            self.last = Instant::now();
        }
    }

    pub(crate) fn done(&mut self, line: &str) {
        if self.tty {
            eprintln!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

pub(crate) fn bar(done: usize, total: usize) -> String {
    let width = 30;
    let filled = (done * width)
        .checked_div(total)
        .unwrap_or(width)
        .min(width);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}
