//! Progress of long work on stderr.

use indicatif::{ProgressBar, ProgressStyle};
use std::cell::{Cell, RefCell};
use std::io::IsTerminal;
use std::time::Instant;

pub(crate) fn progress_bar(len: u64, what: &str) -> Progress {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    let plain = (!std::io::stderr().is_terminal()).then(|| Plain {
        what: what.to_owned(),
        len,
        pos: Cell::new(0),
        msg: RefCell::new(String::new()),
        start: Instant::now(),
        last: Cell::new(Instant::now()),
    });
    Progress { bar, plain }
}

/// Progress of long work: a bar on a terminal; elsewhere (a pipe, a log file, CI), where
/// the bar is hidden, a plain line at most every [`PLAIN_EVERY_S`] seconds, written when the
/// position moves (so callers set the message first).
pub(crate) struct Progress {
    bar: ProgressBar,
    plain: Option<Plain>,
}

const PLAIN_EVERY_S: f64 = 5.0;

struct Plain {
    what: String,
    len: u64,
    pos: Cell<u64>,
    msg: RefCell<String>,
    start: Instant,
    last: Cell<Instant>,
}

impl Progress {
    pub(crate) fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
        if let Some(p) = &self.plain {
            p.pos.set(pos);
            if p.last.get().elapsed().as_secs_f64() >= PLAIN_EVERY_S {
                p.last.set(Instant::now());
                let secs = p.start.elapsed().as_secs_f64();
                let eta = if pos > 0 {
                    format!(
                        ", eta {:.0} s",
                        secs * (p.len.saturating_sub(pos)) as f64 / pos as f64
                    )
                } else {
                    String::new()
                };
                let msg = p.msg.borrow();
                eprintln!(
                    "{}: {pos}/{} after {secs:.0} s{eta}{}{}",
                    p.what,
                    p.len,
                    if msg.is_empty() { "" } else { " — " },
                    msg
                );
            }
        }
    }

    pub(crate) fn set_message(&self, msg: impl Into<String>) {
        let msg = msg.into();
        if let Some(p) = &self.plain {
            p.msg.replace(msg.clone());
        }
        self.bar.set_message(msg);
    }

    pub(crate) fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }
}
