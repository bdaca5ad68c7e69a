//! The messages between the coordinator of a multi-host run and its workers (hostd's own,
//! not the guest agent's protocol): one JSON object per line over one TCP connection per
//! worker. Workers are untrusted: every line is bounded and every field checked, and a bad
//! message is an error naming what is wrong (the caller adds the worker's name).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::backend::BackendKind;
use vb_protocol::msg::ReplyBody;

pub use super::guests::{check_guest_error, GuestCall, SliceLimits, MAX_CALL_WAIT_MS};
pub use super::plan::SlicePart;

/// Longest line either side accepts, bytes (a slice's report of 25,000 guests is ~2 MB at
/// most at 80 bytes a guest; 16 MiB leaves room and still bounds what a worker can make the
/// coordinator hold).
pub const MAX_LINE: usize = 16 << 20;
/// Most image artifacts a worker may report.
pub const MAX_IMAGES: usize = 64;
/// Longest name or text field a worker may send.
pub const MAX_TEXT: usize = 4096;
/// Longest leftover or failure list a worker may send.
pub const MAX_LIST: usize = 100_000;

/// Worker → coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case", deny_unknown_fields)]
pub enum FromWorker {
    /// First message: who it is and what it can run.
    Hello(Hello),
    /// Answer to [`ToWorker::Ping`]: the worker's CLOCK_MONOTONIC when it read the ping.
    Pong { seq: u32, mono_ns: u64 },
    /// Its slice's startup: on the worker's own clocks.
    Booted(Booted),
    /// Its fleet torn down, and what was left.
    TornDown(TornDown),
    /// Answer to [`ToWorker::Serve`]: the guests that could not serve, in words.
    Serving { failed: Vec<String> },
    /// Answer to [`ToWorker::Reach`].
    Reached(Reached),
    /// Answer to [`ToWorker::RingServe`]: (guest's global index, the port its stream server
    /// listens on) for each ready guest that serves, and the others' errors in words.
    RingPorts { ports: Vec<(usize, u16)>, failed: Vec<String> },
    /// Answer to [`ToWorker::RingRound`]: the round's samples of this host's guests, and
    /// the errors of those that gave none.
    RingSamples { samples: Vec<crate::suite::BenchSample>, failed: Vec<String> },
    /// Answer to [`ToWorker::Guest`]: the guest's reply (checked by the coordinator
    /// against the call: [`GuestCall::check_reply`]).
    GuestReply { id: u64, reply: ReplyBody },
    /// Answer to [`ToWorker::Guest`]: why the guest could not answer (not a ready guest
    /// there, its channel failed or timed out), in words.
    GuestError { id: u64, error: String },
    /// It could not do what it was asked (its slice could not start at all).
    Error { message: String },
    /// Sent whenever it has sent nothing else for a while: it is alive (`link.rs`).
    Heartbeat { seq: u64 },
}

/// A worker's hello.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The coordinator's token, proving the worker was started by it.
    pub token: String,
    /// `hostname` of the node.
    pub hostname: String,
    /// SLURM_NODEID, when Slurm started it.
    pub node_id: Option<u32>,
    /// SLURMD_NODENAME, when Slurm started it.
    pub node_name: Option<String>,
    /// Online CPUs.
    pub cpus: u32,
    /// Physical memory, MiB.
    pub mem_mib: u64,
    /// Backends whose probe passed there.
    pub backends: Vec<BackendKind>,
    /// sha256 of each image artifact it would boot, by artifact name.
    pub images: BTreeMap<String, String>,
    /// Its address on the network the coordinator is reached through (its end of this
    /// connection): the underlay address of its fleet network.
    pub addr: Ipv4Addr,
}

/// One ready guest of a slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestReady {
    /// Global index.
    pub index: usize,
    /// The worker's fleet start → this guest's hello, on the worker's CLOCK_MONOTONIC, s.
    pub ready_s: f64,
}

/// One guest of a slice that did not come up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestLost {
    /// Global index.
    pub index: usize,
    /// How it failed.
    pub kind: crate::fleet::FailureKind,
    /// Why, in words.
    pub error: String,
}

/// A slice's startup, on the worker's clocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Booted {
    /// The worker's run id (its run state, cgroups `virtbench/<run>` and fleet namespace
    /// are named after it): where to look for leftovers on its host.
    pub run: String,
    /// CLOCK_REALTIME at the fleet's start minus T0, seconds (negative: early).
    pub lateness_s: f64,
    /// CLOCK_MONOTONIC at the fleet's start, ns (provenance: with the measured offset it
    /// places the start on the coordinator's clock).
    pub start_mono_ns: u64,
    /// Ready guests.
    pub ready: Vec<GuestReady>,
    /// Guests that failed.
    pub failed: Vec<GuestLost>,
    /// Its slice's memory once up (none if /proc could not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<super::memory::SliceMemory>,
}

/// What tearing a slice down found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TornDown {
    /// Guests that powered off when asked.
    pub clean: usize,
    /// Guests killed after the grace period.
    pub killed: usize,
    /// What could not be released (run state left behind), in words.
    pub leftovers: Vec<String>,
}

/// The fleet network a worker makes: its slot in the cross-host plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetPlan {
    /// This host's position (0-based) among the hosts.
    pub slot: u16,
    /// Hosts in the run.
    pub hosts: u16,
    /// The VXLAN id of the run.
    pub vni: u32,
    /// The other hosts' underlay addresses.
    pub peers: Vec<Ipv4Addr>,
}

/// The fleet options a slice is started with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceFleet {
    pub parallelism: usize,
    pub boot_timeout_s: u64,
    /// Cold: the worker empties the page cache of the launch's files before T0.
    pub cold: bool,
    /// None: no fleet network.
    pub net: Option<NetPlan>,
    /// Per-guest cgroup limits (a fleet file's `[limits]`).
    #[serde(default)]
    pub limits: SliceLimits,
    /// The whole fleet's emulated network (a fleet file's `[net]`, resolved for every
    /// guest): the worker shapes its own guests' links by it once they are up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<crate::netem::Topology>,
}

/// A worker's slice of the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slice {
    /// Its part of each group of the fleet (groups it has no guest of are left out), in
    /// the fleet file's order; every part's guests are on the one fleet network.
    pub parts: Vec<SlicePart>,
    pub fleet: SliceFleet,
    /// When to start, CLOCK_REALTIME, ns since the epoch.
    pub t0_unix_ns: u64,
}

/// Coordinator → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToWorker {
    /// Read your CLOCK_MONOTONIC and answer with `seq`.
    Ping { seq: u32 },
    /// Start this slice at its T0.
    Slice(Slice),
    /// Have every ready guest serve the cross-host reach check.
    Serve,
    /// Exchange data from each of your guests with a guest on another host: (your guest,
    /// the other), by global index.
    Reach { pairs: Vec<(usize, usize)> },
    /// Have every ready guest start a stream server for the ring (its port is free).
    RingServe,
    /// One round of the ring across hosts (docs/multihost.md).
    RingRound(RingRound),
    /// Ask guest `guest` (global index) of your slice `call`, waiting at most `wait_ms`
    /// for its reply, and answer with `id` ([`FromWorker::GuestReply`] or
    /// [`FromWorker::GuestError`]), while other calls and messages go on.
    Guest { id: u64, guest: usize, wait_ms: u64, call: GuestCall },
    /// Tear your fleet down and report.
    Teardown,
    /// Sent whenever the coordinator has sent nothing else for a while (`link.rs`).
    Heartbeat { seq: u64 },
}

impl super::link::Beat for FromWorker {
    fn beat(&self) -> Option<u64> {
        match self {
            FromWorker::Heartbeat { seq } => Some(*seq),
            _ => None,
        }
    }
    fn heartbeat(seq: u64) -> Self {
        FromWorker::Heartbeat { seq }
    }
}

impl super::link::Beat for ToWorker {
    fn beat(&self) -> Option<u64> {
        match self {
            ToWorker::Heartbeat { seq } => Some(*seq),
            _ => None,
        }
    }
    fn heartbeat(seq: u64) -> Self {
        ToWorker::Heartbeat { seq }
    }
}

/// One round of the ring across hosts: every listed guest of this host runs `test` to its
/// neighbour, all starting together once CLOCK_REALTIME reaches `at_unix_ns`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingRound {
    pub test: crate::suite::Test,
    /// Guests in the whole ring (on every host).
    pub n: usize,
    /// The counted repetition, from 0 (its samples' `rep`); None for a warm-up round.
    pub rep: Option<u32>,
    pub at_unix_ns: u64,
    pub workloads: crate::suite::Workloads,
    /// Seconds each guest's run may take.
    pub timeout_s: u64,
    /// (this host's guest by global index, its neighbour's stream server: address:port).
    pub jobs: Vec<(usize, String)>,
}

/// A host's cross-host reach check: its guests' exchanges with guests on other hosts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reached {
    /// Exchanges tried.
    pub checked: usize,
    /// Of which completed.
    pub reached: usize,
    /// Of the checked, those to a guest that is not on this host.
    pub across_hosts: usize,
    /// The first few failures, in words.
    pub failures: Vec<String>,
}

impl Reached {
    /// Checks a reach report against what was asked: at most every guest to every target.
    pub fn validate(&self, most: usize) -> Result<(), String> {
        if self.checked > most || self.reached > self.checked || self.across_hosts > self.checked {
            return Err(format!(
                "{} of {} reached ({} across hosts) where at most {most} exchanges were asked",
                self.reached, self.checked, self.across_hosts
            ));
        }
        if self.failures.len() > MAX_LIST {
            return Err(format!("{} failures", self.failures.len()));
        }
        for f in &self.failures {
            text("reach failure", f)?;
        }
        Ok(())
    }
}

/// Why a line could not be read as a message.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed")]
    Closed,
    #[error("a line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("reading: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a message: {0}")]
    Json(#[from] serde_json::Error),
    /// Nothing, not even a heartbeat, arrived for the bound (`link.rs`).
    #[error("no heartbeat for {} s", .0.as_secs_f64())]
    Silent(std::time::Duration),
    #[error("a malformed heartbeat: {0}")]
    Heartbeat(String),
    /// The link ended earlier, for this reason.
    #[error("{0}")]
    Ended(String),
}

/// Reads one line (at most [`MAX_LINE`] bytes) and parses it.
pub async fn read<T: serde::de::DeserializeOwned, R: AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<T, ReadError> {
    let mut buf = Vec::new();
    let got = (&mut *r).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf).await?;
    if got == 0 {
        return Err(ReadError::Closed);
    }
    if buf.last() != Some(&b'\n') {
        return Err(if buf.len() > MAX_LINE { ReadError::TooLong } else { ReadError::Closed });
    }
    Ok(serde_json::from_slice(&buf)?)
}

/// Writes one message as a line.
pub async fn write<T: Serialize, W: AsyncWrite + Unpin>(w: &mut W, m: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(m).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}

pub(super) fn text(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_TEXT || s.chars().any(char::is_control) {
        return Err(format!(
            "{what} {s:.80?}: empty, longer than {MAX_TEXT} bytes or with control characters"
        ));
    }
    Ok(())
}

/// A finite, non-negative number of seconds below a day-sized bound.
fn seconds(what: &str, s: f64, min: f64) -> Result<(), String> {
    if !s.is_finite() || s < min || s > 1e6 {
        return Err(format!("{what} {s} s is not a plausible time"));
    }
    Ok(())
}

impl Hello {
    /// Checks every field a worker sent.
    pub fn validate(&self) -> Result<(), String> {
        text("hostname", &self.hostname)?;
        if let Some(n) = &self.node_name {
            text("node name", n)?;
        }
        if self.cpus == 0 || self.cpus > 1 << 20 {
            return Err(format!("{} CPUs", self.cpus));
        }
        if self.mem_mib == 0 || self.mem_mib > 1 << 40 {
            return Err(format!("{} MiB of memory", self.mem_mib));
        }
        if self.images.len() > MAX_IMAGES {
            return Err(format!("{} image artifacts (at most {MAX_IMAGES})", self.images.len()));
        }
        for (name, hash) in &self.images {
            text("image name", name)?;
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("image {name:.80?}: {hash:.80?} is not a sha256"));
            }
        }
        if self.backends.len() > BackendKind::ALL.len() * 4 {
            return Err(format!("{} backends", self.backends.len()));
        }
        if self.addr.is_unspecified() || self.addr.is_broadcast() || self.addr.is_multicast() {
            return Err(format!("address {} cannot be a host's", self.addr));
        }
        Ok(())
    }
}

impl Booted {
    /// Checks a slice's report against the slice the worker was given: every index in it,
    /// none twice, every time plausible.
    pub fn validate(&self, slice: &Slice) -> Result<(), String> {
        if self.run.is_empty()
            || self.run.len() > 64
            || !self.run.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(format!("run id {:.80?} is not a hostd run id", self.run));
        }
        seconds("lateness", self.lateness_s, -1e6)?;
        let count = SlicePart::total(&slice.parts);
        let mut seen = std::collections::BTreeSet::new();
        if self.ready.len() + self.failed.len() > count {
            return Err(format!(
                "{} guests reported for a slice of {count}",
                self.ready.len() + self.failed.len(),
            ));
        }
        let mut check = |index: usize| {
            if SlicePart::find(&slice.parts, index).is_none() || !seen.insert(index) {
                return Err(format!(
                    "guest {index} is not in its slice ({}) or reported twice",
                    SlicePart::describe(&slice.parts)
                ));
            }
            Ok(())
        };
        for g in &self.ready {
            seconds(&format!("guest {} ready after", g.index), g.ready_s, 0.0)?;
            check(g.index)?;
        }
        for g in &self.failed {
            text(&format!("guest {}'s error", g.index), &g.error)?;
            check(g.index)?;
        }
        self.memory.as_ref().map_or(Ok(()), |m| m.validate(self.ready.len()))
    }
}

impl TornDown {
    /// Checks a teardown report against the slice's size.
    pub fn validate(&self, count: usize) -> Result<(), String> {
        if self.clean + self.killed > count {
            return Err(format!("{} guests torn down of {count}", self.clean + self.killed));
        }
        if self.leftovers.len() > MAX_LIST {
            return Err(format!("{} leftovers", self.leftovers.len()));
        }
        for l in &self.leftovers {
            text("leftover", l)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            token: "t".into(),
            hostname: "n1".into(),
            node_id: Some(0),
            node_name: Some("n1".into()),
            cpus: 2,
            mem_mib: 1024,
            backends: vec![BackendKind::Ns],
            images: [("agent".to_string(), "a".repeat(64))].into_iter().collect(),
            addr: Ipv4Addr::new(10, 250, 0, 11),
        }
    }

    pub(crate) fn slice() -> Slice {
        Slice {
            parts: vec![
                SlicePart {
                    group: "ns".into(),
                    backend: BackendKind::Ns,
                    first: 10,
                    count: 2,
                    mem_mib: 64,
                    vcpus: 1,
                    system: Some(("debian".into(), crate::backend::rootdisk::InitMode::Agent)),
                },
                SlicePart {
                    group: "uml".into(),
                    backend: BackendKind::Uml,
                    first: 20,
                    count: 1,
                    mem_mib: 64,
                    vcpus: 1,
                    system: None,
                },
            ],
            fleet: SliceFleet {
                parallelism: 0,
                boot_timeout_s: 60,
                cold: false,
                net: None,
                limits: SliceLimits::default(),
                topology: None,
            },
            t0_unix_ns: 1,
        }
    }

    #[tokio::test]
    async fn messages_round_trip_as_lines_and_bad_lines_are_errors() {
        let mut out = Vec::new();
        write(&mut out, &FromWorker::Hello(hello())).await.unwrap();
        write(&mut out, &ToWorker::Slice(slice())).await.unwrap();
        let mut r = tokio::io::BufReader::new(&out[..]);
        assert_eq!(read::<FromWorker, _>(&mut r).await.unwrap(), FromWorker::Hello(hello()));
        assert_eq!(read::<ToWorker, _>(&mut r).await.unwrap(), ToWorker::Slice(slice()));
        assert!(matches!(read::<ToWorker, _>(&mut r).await, Err(ReadError::Closed)));
        // Unknown fields, unknown messages, a cut line, an overlong line.
        for bad in
            [&b"{\"msg\":\"pong\",\"seq\":1,\"mono_ns\":2,\"x\":1}\n"[..], b"{\"msg\":\"boom\"}\n"]
        {
            let mut r = tokio::io::BufReader::new(bad);
            assert!(matches!(read::<FromWorker, _>(&mut r).await, Err(ReadError::Json(_))));
        }
        let mut r = tokio::io::BufReader::new(&b"{\"msg\":\"pong\""[..]);
        assert!(matches!(read::<FromWorker, _>(&mut r).await, Err(ReadError::Closed)));
        let long = vec![b' '; MAX_LINE + 10];
        let mut r = tokio::io::BufReader::new(&long[..]);
        assert!(matches!(read::<FromWorker, _>(&mut r).await, Err(ReadError::TooLong)));
    }

    #[test]
    fn hellos_are_checked_field_by_field() {
        assert_eq!(hello().validate(), Ok(()));
        type Spoil = fn(&mut Hello);
        let bad: Vec<(Spoil, &str)> = vec![
            (|h| h.hostname = String::new(), "hostname"),
            (|h| h.hostname = "a\nb".into(), "hostname"),
            (|h| h.cpus = 0, "CPUs"),
            (|h| h.mem_mib = 0, "memory"),
            (
                |h| {
                    h.images.insert("x".into(), "zz".into());
                },
                "not a sha256",
            ),
            (|h| h.addr = Ipv4Addr::UNSPECIFIED, "address"),
        ];
        for (f, want) in bad {
            let mut h = hello();
            f(&mut h);
            let e = h.validate().unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn a_slice_report_must_stay_inside_its_slice() {
        let s = slice();
        let ok = Booted {
            run: "r1234abc".into(),
            lateness_s: 0.01,
            start_mono_ns: 5,
            ready: vec![
                GuestReady { index: 10, ready_s: 0.5 },
                GuestReady { index: 20, ready_s: 0.7 },
            ],
            failed: vec![GuestLost {
                index: 11,
                kind: crate::fleet::FailureKind::Timeout,
                error: "timeout".into(),
            }],
            memory: None,
        };
        assert_eq!(ok.validate(&s), Ok(()));
        let mut b = ok.clone();
        b.ready[0].index = 12;
        let e = b.validate(&s).unwrap_err();
        assert!(e.contains("not in its slice (g10–g11 (ns), g20 (uml))"), "{e}");
        let mut b = ok.clone();
        b.failed[0].index = 10;
        assert!(b.validate(&s).unwrap_err().contains("twice"));
        let mut b = ok.clone();
        b.ready[1].ready_s = f64::NAN;
        assert!(b.validate(&s).unwrap_err().contains("plausible"));
        let mut b = ok.clone();
        b.run = "../x".into();
        assert!(b.validate(&s).unwrap_err().contains("run id"));
        let mut b = ok;
        b.lateness_s = f64::INFINITY;
        assert!(b.validate(&s).is_err());
        assert!(TornDown { clean: 4, ..Default::default() }.validate(3).is_err());
        let r = Reached { checked: 4, reached: 4, across_hosts: 4, failures: vec![] };
        assert_eq!(r.validate(4), Ok(()));
        assert!(r.validate(3).is_err());
        assert!(Reached { checked: 2, reached: 3, ..r.clone() }.validate(4).is_err());
        assert!(Reached { failures: vec!["\u{7}".into()], ..r }.validate(4).is_err());
    }
}
