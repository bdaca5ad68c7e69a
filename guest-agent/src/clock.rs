//! The guest's own clocks, for the ready message and benchmark timing.

use nix::time::{clock_gettime, ClockId};
use vb_protocol::msg::GuestClock;

fn read_ns(id: ClockId) -> u64 {
    // clock_gettime on these clocks cannot fail on Linux ≥ 2.6.39; 0 marks the impossible.
    clock_gettime(id).map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64).unwrap_or(0)
}

pub fn monotonic_ns() -> u64 {
    read_ns(ClockId::CLOCK_MONOTONIC)
}

/// Sleeps until CLOCK_MONOTONIC reads at least `at_ns` (at once if it already does). An
/// absolute deadline, so a signal or an early wake-up never shortens the wait.
pub fn sleep_until(at_ns: u64) {
    use nix::sys::time::TimeSpec;
    use nix::time::{clock_nanosleep, ClockNanosleepFlags};
    let ts = TimeSpec::from(std::time::Duration::from_nanos(at_ns));
    while monotonic_ns() < at_ns {
        // EINTR: go round again; any other error cannot happen with a valid absolute time,
        // and the loop condition still ends the wait.
        if let Err(e) =
            clock_nanosleep(ClockId::CLOCK_MONOTONIC, ClockNanosleepFlags::TIMER_ABSTIME, &ts)
        {
            if e != nix::errno::Errno::EINTR {
                std::thread::yield_now();
            }
        }
    }
}

/// Reads the clocks now. `read_kmsg`: look in the kernel log for when init was started
/// (only meaningful when the agent is the init of its own kernel, not in a container).
pub fn snapshot(read_kmsg: bool) -> GuestClock {
    GuestClock {
        monotonic_ns: monotonic_ns(),
        boottime_ns: read_ns(ClockId::CLOCK_BOOTTIME),
        realtime_ns: read_ns(ClockId::CLOCK_REALTIME),
        uptime_s: std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| parse_uptime(&s))
            .unwrap_or(-1.0),
        agent_start_ns: std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_starttime_ns(&s, clock_ticks())),
        kernel_init_ns: if read_kmsg { kmsg_init_ns() } else { None },
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

fn parse_uptime(s: &str) -> Option<f64> {
    s.split_whitespace().next()?.parse().ok()
}

/// Field 22 of /proc/<pid>/stat (starttime, clock ticks since boot). The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after the last ')'.
fn parse_starttime_ns(stat: &str, ticks: u64) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let start: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    Some(start * 1_000_000_000 / ticks)
}

/// Timestamp (µs in the record header) of the kernel's "Run /init as init process" line.
fn kmsg_init_ns() -> Option<u64> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .ok()?;
    // /dev/kmsg returns one record per read; stop at EAGAIN (end of the buffer).
    let mut buf = vec![0u8; 8192];
    for _ in 0..10_000 {
        let n = f.read(&mut buf).ok()?;
        if let Some(ns) = parse_kmsg_init(&String::from_utf8_lossy(&buf[..n])) {
            return Some(ns);
        }
    }
    None
}

fn parse_kmsg_init(record: &str) -> Option<u64> {
    let (hdr, msg) = record.split_once(';')?;
    if !msg.starts_with("Run ") || !msg.contains(" as init process") {
        return None;
    }
    let us: u64 = hdr.split(',').nth(2)?.parse().ok()?;
    Some(us * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(parse_uptime("12.34 20.00\n"), Some(12.34));
        let stat = "1 (my (odd) init) S 0 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 37 1 2 3";
        assert_eq!(parse_starttime_ns(stat, 100), Some(370_000_000));
        assert_eq!(
            parse_kmsg_init("6,301,1234567,-;Run /init as init process\n"),
            Some(1_234_567_000)
        );
        assert_eq!(parse_kmsg_init("6,301,1234567,-;Freeing unused kernel memory"), None);
    }

    #[test]
    fn sleep_until_reaches_the_instant() {
        let at = monotonic_ns() + 5_000_000;
        sleep_until(at);
        assert!(monotonic_ns() >= at);
        // An instant in the past returns at once.
        sleep_until(1);
    }

    #[test]
    fn snapshot_is_sane() {
        let c = snapshot(false);
        assert!(c.monotonic_ns > 0 && c.boottime_ns >= c.monotonic_ns);
        assert!(c.uptime_s > 0.0);
        assert!(c.agent_start_ns.is_some());
    }
}
