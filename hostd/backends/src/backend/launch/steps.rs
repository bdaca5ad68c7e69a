//! Where a launch's time goes: the wall time of each of its steps, logged per guest at
//! debug level (`RUST_LOG=hostd_backends=debug`), so that a fleet's start time beyond its
//! floor can be attributed to steps by measurement rather than guessed.

use std::fmt;
use std::time::{Duration, Instant};

/// The steps of one launch so far, each with the wall time since the previous mark.
pub struct Steps {
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Steps {
    /// Starts timing at the launch request.
    pub fn start() -> Self {
        Self { last: Instant::now(), done: Vec::with_capacity(12) }
    }

    /// Step `name` ends now.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.done.push((name, now - self.last));
        self.last = now;
    }

    /// One debug line for guest `guest`: every step's milliseconds, in order.
    pub fn log(&self, guest: &str) {
        tracing::debug!(guest, "launch steps (ms): {self}");
    }
}

impl fmt::Display for Steps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, d)) in self.done.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={:.3}", d.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_listed_in_order_with_their_milliseconds() {
        let mut s = Steps::start();
        s.mark("a");
        std::thread::sleep(Duration::from_millis(3));
        s.mark("b");
        let text = s.to_string();
        let (a, b) = text.split_once(' ').expect("two steps");
        assert!(a.starts_with("a="), "{text}");
        let ms: f64 = b.strip_prefix("b=").expect("b second").parse().expect("a number");
        assert!(ms >= 3.0, "{text}");
    }
}
