//! Concurrent runs that start on one instant, and the evidence that they ran together
//! (docs/protocol.md, "Start instant"; docs/methodology.md, "Start skew and overlap").
//!
//! A guest's clock is not the host's (a VM's CLOCK_MONOTONIC starts at its own boot), so the
//! host cannot send one number. Before each concurrent run it estimates every guest's clock
//! offset θ = guest − host with a few pings (the NTP estimate from the ping of smallest round
//! trip: the guest read its clock somewhere inside that round trip, so the error is at most
//! half of it), picks a common instant T0 = now + lead on its own clock, and sends each guest
//! T0 + θ on the guest's clock. Agents prepare (allocate, open, connect), then wait for that
//! instant. The reports' times, mapped back with θ, give each instance's start skew
//! (start − T0) and the run's overlap. A guest whose times cannot be true (outside the time
//! its request was out, allowing for the clock error) fails its run: it is untrusted.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use vb_protocol::bench::{BenchReport, BenchRequest};
use vb_protocol::msg::{Command, ReplyBody};

use crate::channel::AgentConn;
use crate::guest::RunningGuest;
use crate::microbench::run_once;

/// Samples whose run overlapped less than this are flagged (`low_overlap`).
pub const MIN_OVERLAP: f64 = 0.95;
/// Pings per guest for its clock offset; the one with the smallest round trip counts.
const PINGS: usize = 4;
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// The first run's lead: time for hostd to send every request and for agents to prepare.
const FIRST_LEAD: Duration = Duration::from_millis(250);
/// Leads grow up to this (well inside the agents' own limit, `MAX_START_AHEAD_NS`).
const MAX_LEAD: Duration = Duration::from_secs(30);
/// Slack on the untrusted-time check beyond the clock error (scheduling of hostd's reads).
const SLACK_NS: i128 = 2_000_000;

/// The host's CLOCK_MONOTONIC in ns (the clock the guests' instants are mapped to).
pub fn host_ns() -> i128 {
    // clock_gettime(CLOCK_MONOTONIC) cannot fail on Linux; 0 marks the impossible.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
        .unwrap_or(0)
}

/// A guest clock's offset from the host's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Offset {
    /// guest − host, ns.
    pub theta_ns: i128,
    /// Bound on the estimate's error: half the round trip it came from, ns.
    pub err_ns: i128,
}

/// The NTP-style estimate from one ping: sent at host `t1`, answered with guest clock `g`,
/// answer read at host `t2`.
pub fn offset_of(t1: i128, g: u64, t2: i128) -> Offset {
    let rtt = (t2 - t1).max(0);
    Offset { theta_ns: g as i128 - (t1 + rtt / 2), err_ns: (rtt + 1) / 2 }
}

/// Why a guest's run could not be put on the common start instant, by step.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum StartSyncError {
    /// Which ping: a channel that loses some frames (a byte it eats) fails on one only.
    #[error("clock ping {k} of {PINGS}: {source}")]
    Ping { k: usize, source: crate::channel::ChannelError },
    #[error("clock ping {k} of {PINGS} answered {reply}")]
    NotPong { k: usize, reply: String },
    /// The guest's times, mapped to the host's clock, fall outside the time its request was
    /// out: a lie or a broken clock.
    #[error(
        "guest reports its {what} time {at_s:.6} s outside the {out_s:.6} s its request was out (clock offset {theta_s:.6} s ± {err_s:.6} s)"
    )]
    OutsideWindow { what: &'static str, at_s: f64, out_s: f64, theta_s: f64, err_s: f64 },
}

async fn clock_offset(conn: &AgentConn) -> Result<Offset, StartSyncError> {
    let mut best: Option<Offset> = None;
    for k in 1..=PINGS {
        let t1 = host_ns();
        let g = match conn.request(Command::Ping, PING_TIMEOUT).await {
            Ok(ReplyBody::Pong { monotonic_ns }) => monotonic_ns,
            Ok(other) => return Err(StartSyncError::NotPong { k, reply: format!("{other:?}") }),
            Err(source) => return Err(StartSyncError::Ping { k, source }),
        };
        let o = offset_of(t1, g, host_ns());
        if best.is_none_or(|b| o.err_ns < b.err_ns) {
            best = Some(o);
        }
    }
    Ok(best.expect("PINGS is at least 1"))
}

/// How one instance's run related to the common instant and to the other instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StartSync {
    /// This instance's start minus the common instant, on the host's clock, s. Late starts
    /// are positive; within ±`clock_err_s` of 0 is on time.
    pub start_skew_s: f64,
    /// Bound on the error of mapping this guest's clock to the host's, s.
    pub clock_err_s: f64,
    /// The run's overlap ([`overlap`]), the same for every instance of one run.
    pub overlap: f64,
    /// overlap < [`MIN_OVERLAP`]: the instances did not all run together for most of it.
    pub low_overlap: bool,
}

/// One guest's answer to a concurrent run.
#[derive(Debug, Clone)]
pub struct Timed {
    /// What the guest answered.
    pub report: BenchReport,
    /// Per instance, for runs of more than one instance in all.
    pub sync: Option<Vec<StartSync>>,
}

/// The overlap of concurrent runs given as (start, end, error) on one clock, each time known
/// to ± its error: the time all of them were running (from the last start to the first end)
/// over the time from the first start to the first end, at its lowest within the errors. 1
/// when they all started together, whatever their lengths (the isolation test's copies
/// legitimately end at different times); lower by the fraction of that span some instance
/// was not yet running, or might not have been. One interval (or none) overlaps fully.
pub fn overlap(intervals: &[(f64, f64, f64)]) -> f64 {
    if intervals.len() < 2 {
        return 1.0;
    }
    let first_start = intervals.iter().map(|i| i.0 - i.2).fold(f64::INFINITY, f64::min);
    let last_start = intervals.iter().map(|i| i.0 + i.2).fold(f64::NEG_INFINITY, f64::max);
    let first_end = intervals.iter().map(|i| i.1 - i.2).fold(f64::INFINITY, f64::min);
    let first_end_late = intervals.iter().map(|i| i.1 + i.2).fold(f64::INFINITY, f64::min);
    let span = first_end_late - first_start;
    // No time at all (or NaN from a damaged interval) is no overlap.
    if span.is_nan() || span <= 0.0 {
        return 0.0;
    }
    ((first_end - last_start) / span).clamp(0.0, 1.0)
}

/// Carries the lead across the repetitions of one measurement: it starts at [`FIRST_LEAD`]
/// and grows when a run shows that sending and preparing took longer (the warm-up runs
/// calibrate it).
#[derive(Debug, Clone)]
pub struct Starter {
    lead: Duration,
}

impl Default for Starter {
    fn default() -> Self {
        Starter { lead: FIRST_LEAD }
    }
}

impl Starter {
    /// The lead a run starts with now.
    pub fn lead(&self) -> Duration {
        self.lead
    }

    /// After a run whose slowest guest was prepared `needed` after the first request went
    /// out: a lead of twice that, if more than today's, capped.
    fn learn(&mut self, needed_ns: i128) {
        let want = Duration::from_nanos((needed_ns.max(0) as u64).saturating_mul(2));
        self.lead = self.lead.max(want).min(MAX_LEAD);
    }
}

/// Sends one request to each (guest, request) pair, all starting on one instant when more
/// than one instance runs in all, and waits for every answer.
pub async fn run_together(
    jobs: &[(&RunningGuest, BenchRequest)],
    timeout: Duration,
    starter: &mut Starter,
) -> Vec<Result<Timed, String>> {
    let instances: u32 = jobs.iter().map(|(_, r)| r.instances).sum();
    if instances <= 1 {
        return futures::future::join_all(jobs.iter().map(|(g, req)| async move {
            let report = run_once(&g.conn, req, timeout)
                .await
                .map_err(|e| format!("{}: {e:#}", g.spec.name))?;
            Ok(Timed { report, sync: None })
        }))
        .await;
    }
    let offsets: Vec<Result<Offset, StartSyncError>> =
        futures::future::join_all(jobs.iter().map(|(g, _)| clock_offset(&g.conn))).await;
    let first_send = host_ns();
    let t0 = first_send + starter.lead.as_nanos() as i128;
    let answers =
        futures::future::join_all(jobs.iter().zip(&offsets).map(|((g, req), off)| async move {
            let name = &g.spec.name;
            let off = *off.as_ref().map_err(|e| format!("{name}: clock offset: {e}"))?;
            // Clamped: a guest whose clock (or pong) is absurd gets an instant it refuses or
            // starts at once; either way only its own run suffers.
            let at = (t0 + off.theta_ns).clamp(0, u64::MAX as i128) as u64;
            let req = BenchRequest { start_at_ns: Some(at), ..req.clone() };
            let sent = host_ns();
            let report =
                run_once(&g.conn, &req, timeout).await.map_err(|e| format!("{name}: {e:#}"))?;
            let answered = host_ns();
            check_window(&report, off, sent, answered).map_err(|e| format!("{name}: {e}"))?;
            Ok::<_, String>((report, off))
        }))
        .await;
    // Intervals of every instance of every guest that answered, on the host's clock.
    let host = |t: u64, off: &Offset| t as i128 - off.theta_ns;
    let intervals: Vec<(f64, f64, f64)> = answers
        .iter()
        .flatten()
        .flat_map(|(r, off)| {
            r.instances.iter().map(move |i| {
                (
                    (host(i.start_ns, off) - t0) as f64 / 1e9,
                    (host(i.end_ns, off) - t0) as f64 / 1e9,
                    off.err_ns as f64 / 1e9,
                )
            })
        })
        .collect();
    let ov = overlap(&intervals);
    let needed = answers
        .iter()
        .flatten()
        .map(|(r, off)| host(r.prepared_ns, off) - first_send)
        .max()
        .unwrap_or(0);
    starter.learn(needed);
    answers
        .into_iter()
        .map(|a| {
            let (report, off) = a?;
            let sync = report
                .instances
                .iter()
                .map(|i| StartSync {
                    start_skew_s: (host(i.start_ns, &off) - t0) as f64 / 1e9,
                    clock_err_s: off.err_ns as f64 / 1e9,
                    overlap: ov,
                    low_overlap: ov < MIN_OVERLAP,
                })
                .collect();
            Ok(Timed { report, sync: Some(sync) })
        })
        .collect()
}

/// The guest's times, mapped to the host's clock, must lie within the time its request was
/// out (`sent`..`answered`), give or take the clock error: anything else is a lie or a
/// broken clock, and would make skew and overlap meaningless.
fn check_window(
    r: &BenchReport,
    off: Offset,
    sent: i128,
    answered: i128,
) -> Result<(), StartSyncError> {
    let lo = sent - off.err_ns - SLACK_NS;
    let hi = answered + off.err_ns + SLACK_NS;
    let mut times = vec![("received", r.received_ns), ("prepared", r.prepared_ns)];
    for i in &r.instances {
        times.push(("start", i.start_ns));
        times.push(("end", i.end_ns));
    }
    for (what, t) in times {
        let h = t as i128 - off.theta_ns;
        if h < lo || h > hi {
            return Err(StartSyncError::OutsideWindow {
                what,
                at_s: (h - sent) as f64 / 1e9,
                out_s: (answered - sent) as f64 / 1e9,
                theta_s: off.theta_ns as f64 / 1e9,
                err_s: off.err_ns as f64 / 1e9,
            });
        }
    }
    Ok(())
}

/// Why a stored sample's start sync or MTU cannot be a measurement (samples.jsonl is
/// input like any other), or Ok.
pub fn plausible(s: &super::BenchSample) -> Result<(), SyncImplausible> {
    if let Some(m) = s.mtu {
        // IPv4's least MTU, and the largest a Linux link takes (loopback's default).
        if !(68..=65536).contains(&m) {
            return Err(SyncImplausible::Mtu(m));
        }
    }
    let Some(y) = &s.sync else { return Ok(()) };
    let max = crate::samples::MAX_SECONDS;
    if !(y.start_skew_s.is_finite() && y.start_skew_s.abs() <= max) {
        return Err(SyncImplausible::Skew(y.start_skew_s));
    }
    if !(y.clock_err_s.is_finite() && (0.0..=max).contains(&y.clock_err_s)) {
        return Err(SyncImplausible::ClockError(y.clock_err_s));
    }
    if !(0.0..=1.0).contains(&y.overlap) {
        return Err(SyncImplausible::Overlap(y.overlap));
    }
    if y.low_overlap != (y.overlap < MIN_OVERLAP) {
        return Err(SyncImplausible::LowOverlap { low: y.low_overlap, overlap: y.overlap });
    }
    Ok(())
}

/// Why a stored sample's MTU or start sync cannot be a measurement ([`plausible`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[allow(missing_docs)] // each #[error] message says what its variant and fields are
pub enum SyncImplausible {
    #[error("mtu = {0} is not an MTU in 68..=65536")]
    Mtu(u32),
    #[error("start_skew_s = {0} s is not a time within ±{max} s", max = crate::samples::MAX_SECONDS)]
    Skew(f64),
    #[error("clock_err_s = {0} s is not a time in 0..={max} s", max = crate::samples::MAX_SECONDS)]
    ClockError(f64),
    #[error("overlap = {0} is not a fraction in 0..=1")]
    Overlap(f64),
    #[error("low_overlap = {low} contradicts overlap = {overlap}")]
    LowOverlap { low: bool, overlap: f64 },
}

#[cfg(test)]
mod tests {
    use super::*;
    use vb_protocol::bench::{InstanceResult, Work};

    #[test]
    fn overlap_of_known_intervals() {
        // Together, same length: 1.
        assert_eq!(overlap(&[(0.0, 10.0, 0.0), (0.0, 10.0, 0.0)]), 1.0);
        // Together, one finishing first (the isolation test): still 1.
        assert_eq!(overlap(&[(0.0, 5.0, 0.0), (0.0, 10.0, 0.0), (0.0, 10.0, 0.0)]), 1.0);
        // One starting 1 s late in a 10 s run: all running 9 s of the first 10.
        assert!((overlap(&[(0.0, 10.0, 0.0), (1.0, 11.0, 0.0)]) - 0.9).abs() < 1e-12);
        // A short run inside a long one that started well before it: 1 s of 6.
        assert!((overlap(&[(0.0, 10.0, 0.0), (5.0, 6.0, 0.0)]) - 1.0 / 6.0).abs() < 1e-12);
        // One after the other: none.
        assert_eq!(overlap(&[(0.0, 1.0, 0.0), (2.0, 3.0, 0.0)]), 0.0);
        assert_eq!(overlap(&[(0.0, 1.0, 0.0)]), 1.0);
        assert_eq!(overlap(&[]), 1.0);
        assert_eq!(
            overlap(&[(1.0, 1.0, 0.0), (1.0, 1.0, 0.0)]),
            0.0,
            "no time at all is no overlap"
        );
        // Started together as far as the clocks tell, each known to ± 0.1 s in a 10 s run:
        // at worst one started 0.2 s after the other and ended 0.2 s early — (9.9 − 0.1) / (10.1 + 0.1).
        assert!((overlap(&[(0.0, 10.0, 0.1), (0.0, 10.0, 0.1)]) - 9.8 / 10.2).abs() < 1e-12);
        assert!(
            overlap(&[(0.0, 0.2, 0.006), (0.0, 0.2, 0.0001)]) < MIN_OVERLAP,
            "a 12 ms uncertainty in a 0.2 s run is flagged"
        );
    }

    #[test]
    fn stored_sync_and_mtu_are_checked() {
        let mut s: crate::suite::BenchSample = serde_json::from_str(
            r#"{"backend":"ns","test":"ring","resource":"network","n":3,"rep":0,"guest":0,"instance":0,"value":100.0,"unit":"MB/s","elapsed_s":0.2,
                "net_path":"veth+bridge","mtu":1500,"sync":{"start_skew_s":0.001,"clock_err_s":0.0001,"overlap":0.97,"low_overlap":false}}"#,
        )
        .unwrap();
        assert!(plausible(&s).is_ok());
        assert_eq!(s.path_label().unwrap(), "veth+bridge, MTU 1500");
        s.mtu = Some(10);
        assert!(plausible(&s).unwrap_err().to_string().contains("mtu"));
        s.mtu = Some(1500);
        let y = s.sync.unwrap();
        for bad in [
            StartSync { overlap: 1.5, ..y },
            StartSync { overlap: f64::NAN, ..y },
            StartSync { start_skew_s: f64::INFINITY, ..y },
            StartSync { clock_err_s: -1.0, ..y },
            StartSync { low_overlap: true, ..y },
        ] {
            s.sync = Some(bad);
            assert!(plausible(&s).is_err(), "{bad:?}");
        }
        // Older samples have none of these fields.
        let old: crate::suite::BenchSample = serde_json::from_str(
            r#"{"backend":"native","test":"overhead","resource":"cpu","n":1,"rep":0,"guest":0,"instance":0,"value":1.0,"unit":"s","elapsed_s":1.0}"#,
        )
        .unwrap();
        assert!(old.sync.is_none() && old.net_path.is_none() && plausible(&old).is_ok());
    }

    #[test]
    fn offset_from_a_ping() {
        // Sent at 100, answered with guest clock 5_050, read at 120: θ = 5_050 − 110, ± 10.
        assert_eq!(offset_of(100, 5_050, 120), Offset { theta_ns: 4_940, err_ns: 10 });
        // A guest clock behind the host's gives a negative offset.
        assert_eq!(offset_of(1_000, 10, 1_002).theta_ns, -991);
    }

    #[test]
    fn the_lead_grows_with_what_runs_needed_and_is_capped() {
        let mut s = Starter::default();
        s.learn(1_000_000);
        assert_eq!(s.lead(), FIRST_LEAD, "a quick run keeps the lead");
        s.learn(400_000_000);
        assert_eq!(s.lead(), Duration::from_millis(800));
        s.learn(i128::MAX);
        assert_eq!(s.lead(), MAX_LEAD);
        s.learn(-5);
        assert_eq!(s.lead(), MAX_LEAD);
    }

    #[test]
    fn guest_times_outside_the_request_are_refused() {
        let off = Offset { theta_ns: 1_000_000_000, err_ns: 1_000 };
        let rep = |recv: u64, start: u64, end: u64| BenchReport {
            instances: vec![InstanceResult {
                start_ns: start,
                end_ns: end,
                work: Work::Cpu { rounds: 8, estimate: std::f64::consts::SQRT_2 },
            }],
            received_ns: recv,
            prepared_ns: recv,
        };
        // Request out on the host from 0 to 100 ms; guest clock = host + 1 s.
        let (sent, answered) = (0, 100_000_000);
        assert!(check_window(
            &rep(1_000_100_000, 1_010_000_000, 1_090_000_000),
            off,
            sent,
            answered
        )
        .is_ok());
        let e =
            check_window(&rep(1_000_100_000, 1_010_000_000, 1_200_000_000), off, sent, answered)
                .unwrap_err();
        assert!(matches!(e, StartSyncError::OutsideWindow { what: "end", .. }), "{e:?}");
        assert!(e.to_string().contains("end time"), "{e}");
        let e = check_window(&rep(900_000_000, 1_010_000_000, 1_090_000_000), off, sent, answered)
            .unwrap_err();
        assert!(e.to_string().contains("received time"), "{e}");
        // Extremes do not overflow.
        assert!(check_window(
            &rep(u64::MAX, u64::MAX, u64::MAX),
            Offset { theta_ns: i128::from(i64::MIN), err_ns: 0 },
            sent,
            answered
        )
        .is_err());
    }
}
