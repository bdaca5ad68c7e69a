//! A user's command as a campaign workload (`[[workloads.commands]]`, docs/campaigns.md),
//! measured the paper's way: its time in one guest while n − 1 idle (overhead) and in all n
//! guests at once (linearity), against the same command run natively. The command runs
//! through the agent's `exec` message, and the agent times it (docs/methodology.md, "User
//! workloads"). The formulas are the microbenchmarks' own ([`overhead::analyse`],
//! [`linearity::analyse`]): a command's successful runs are handed to them as samples of a
//! CPU-bound workload.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vb_protocol::bench::Resource;
use vb_protocol::msg::{Command, ExecRequest, ExecResult, ReplyBody};

use super::{linearity, overhead, BenchSample, Test};
use crate::backend::BackendKind;
use crate::channel::ChannelError;
use crate::fleet::Fleet;
use crate::guest::RunningGuest;
use crate::stats::Stat;

/// Bytes of each output stream the agent keeps of a run (the rest is read and dropped):
/// enough for the end of an error message, small enough that replies stay light.
pub const OUTPUT_MAX: u32 = 4096;
/// Bytes of a failed run's stderr kept in its sample: the end of what the agent kept.
pub const REASON_TAIL: usize = 512;
/// Longest workload name.
pub const NAME_MAX: usize = 32;
/// A run's default deadline, s.
pub const DEFAULT_TIMEOUT_S: u64 = 600;

/// One `[[workloads.commands]]` entry: a program the campaign times natively and in guests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserCommand {
    /// The workload's name in step keys and the report: a-z, 0-9, - and _, at most
    /// [`NAME_MAX`] characters, unique in the campaign.
    pub name: String,
    /// The program and its arguments, run without a shell (give one: `["/bin/sh", "-c", "…"]`).
    /// `argv[0]` is looked up on PATH (`/usr/sbin:/usr/bin:/sbin:/bin` unless `env` sets one).
    pub argv: Vec<String>,
    /// A run that lasts longer is killed and recorded as failed. Default 600 (1–86400 s).
    #[serde(default = "d_timeout")]
    pub timeout_s: u64,
    /// The program's whole environment (nothing is inherited from the agent). Default none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory, absolute. Default: the agent's own (`/` in guests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

fn d_timeout() -> u64 {
    DEFAULT_TIMEOUT_S
}

impl UserCommand {
    /// The exec request one run sends.
    pub fn request(&self) -> ExecRequest {
        ExecRequest {
            argv: self.argv.clone(),
            env: self.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: self.cwd.clone(),
            timeout_ms: self.timeout_s.saturating_mul(1000),
            output_max: OUTPUT_MAX,
        }
    }

    /// A short digest of what the command runs (argv, env, cwd, timeout): in its step keys,
    /// so that another command under the same name (an override's) is its own step.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let json = serde_json::to_string(self).unwrap_or_default();
        hex::encode(&Sha256::digest(json.as_bytes())[..4])
    }

    /// The command line as recorded and shown: each argument quoted where it needs it.
    pub fn line(&self) -> String {
        command_line(&self.argv)
    }

    /// Its value's problems, each naming the entry (`field`: `workloads.commands[2]`).
    pub fn check(&self, field: &str) -> Result<(), (String, String)> {
        let bad = |f: &str, why: String| Err((format!("{field}.{f}"), why));
        let n = &self.name;
        if n.is_empty()
            || n.len() > NAME_MAX
            || !n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return bad(
                "name",
                format!("{n:?} must be 1–{NAME_MAX} characters of a-z, 0-9, - and _"),
            );
        }
        if self.argv.first().is_none_or(|a| a.is_empty()) {
            return bad("argv", "needs a program: argv = [\"/bin/sh\", \"-c\", \"…\"]".into());
        }
        if let Err(e) = crate::limits::BENCH_TIMEOUT_S.check(self.timeout_s) {
            return bad("timeout_s", e.to_string());
        }
        if let Some(k) = self.env.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
            return bad("env", format!("{k:?} is not a variable name"));
        }
        if let Some(d) = &self.cwd {
            if !d.starts_with('/') {
                return bad("cwd", format!("{d:?} is not an absolute path"));
            }
        }
        // The protocol's own bounds (sizes, NUL bytes), as the agent will check them.
        self.request().check().map_err(|why| (field.to_string(), why))
    }
}

/// Every command's checks and the names' uniqueness (`field`: `workloads`).
pub fn check_all(field: &str, commands: &[UserCommand]) -> Result<(), (String, String)> {
    for (i, c) in commands.iter().enumerate() {
        c.check(&format!("{field}.commands[{i}]"))?;
        if commands[..i].iter().any(|o| o.name == c.name) {
            return Err((
                format!("{field}.commands[{i}].name"),
                format!("{:?} is used twice: each workload needs its own name", c.name),
            ));
        }
    }
    Ok(())
}

/// argv as one line a shell would split back the same way.
pub fn command_line(argv: &[String]) -> String {
    let quote = |a: &String| {
        if !a.is_empty()
            && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
        {
            a.clone()
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    argv.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// One run of a user's command in one guest (or natively): its time, or why it failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CommandSample {
    /// The backend.
    pub backend: BackendKind,
    /// Overhead (one guest runs it, n − 1 idle) or linearity (all n at once).
    pub test: Test,
    /// The workload's name (`[[workloads.commands]]`).
    pub name: String,
    /// The command it ran: the user's, recorded with every run.
    pub argv: Vec<String>,
    /// Guests running in the fleet when measured.
    pub n: usize,
    /// Counted repetition, from 0.
    pub rep: u32,
    /// Guest index within the fleet.
    pub guest: usize,
    /// Seconds from the program's start to its exit, timed by the agent on the guest's
    /// CLOCK_MONOTONIC; None for a failed run.
    #[serde(default)]
    pub elapsed_s: Option<f64>,
    /// Seconds from hostd sending the request to reading the reply (the agent's time plus
    /// the control channel's round trip).
    #[serde(default)]
    pub host_s: f64,
    /// Why the run is not a figure: its exit status or signal, a timeout, a program that
    /// could not be started, with the end of its stderr (at most [`REASON_TAIL`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Host CPUs the guest's processes could run on ([`super::placement`]).
    #[serde(default)]
    pub cpus: Option<usize>,
    /// The guest's vCPUs, for a guest with a kernel of its own.
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// Id of the provenance it was measured under.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provenance: String,
}

impl CommandSample {
    /// The sample as the microbenchmarks' analysis takes it: a fixed-work, CPU-bound
    /// workload timed in seconds (None for a failed run). Its `params` is the command line,
    /// so runs of another command under the same name are never compared.
    pub fn as_bench(&self) -> Option<BenchSample> {
        let t = self.elapsed_s?;
        Some(BenchSample {
            backend: self.backend,
            test: self.test,
            resource: Resource::Cpu,
            n: self.n,
            rep: self.rep,
            guest: self.guest,
            instance: 0,
            value: t,
            unit: "s".into(),
            elapsed_s: t,
            params: command_line(&self.argv),
            cache_policy: String::new(),
            resident_before: None,
            paired_native_mbps: None,
            paired_native_s: None,
            paired_gap_s: None,
            paired_native_after_mbps: None,
            paired_native_after_s: None,
            net_path: None,
            mtu: None,
            sync: None,
            cpus: self.cpus,
            vcpus: self.vcpus,
            provenance: self.provenance.clone(),
        })
    }

    /// Why it cannot be a measurement, in words, or None.
    pub fn implausible(&self) -> Option<String> {
        let secs = |what: &str, v: f64| {
            (!(v.is_finite() && (0.0..=crate::samples::MAX_SECONDS).contains(&v)))
                .then(|| format!("{what} = {v} s is not a time"))
        };
        if let Err(e) = crate::limits::GUESTS.check(self.n) {
            return Some(format!("n = {e}"));
        }
        if self.elapsed_s.is_some() == self.failure.is_some() {
            return Some("a run has either a time or a failure".into());
        }
        self.elapsed_s.and_then(|v| secs("elapsed_s", v)).or_else(|| secs("host_s", self.host_s))
    }
}

/// Why a finished run is a failure, in words, or None for a clean exit 0.
pub fn failure_of(r: &ExecResult, timeout_s: u64) -> Option<String> {
    let how = if r.timed_out {
        format!("timed out after {timeout_s} s (killed)")
    } else {
        match (r.status, r.signal) {
            (Some(0), _) => return None,
            (Some(c), _) => format!("exit status {c}"),
            (_, Some(s)) => format!("killed by signal {s}"),
            (None, None) => "no exit status".into(),
        }
    };
    Some(match tail(&r.stderr, REASON_TAIL) {
        "" => how,
        t => format!("{how}; stderr ends: {t}"),
    })
}

/// The last `max` bytes of `s` (on a character boundary), trimmed.
fn tail(s: &str, max: usize) -> &str {
    let mut at = s.len().saturating_sub(max);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    s[at..].trim()
}

/// One run in one guest: Ok(time or failure) and hostd's own time, or Err when the guest
/// itself failed (no answer, a reply that breaks the protocol): the step fails then, as a
/// microbenchmark's does.
async fn run_one(
    g: &RunningGuest,
    req: &ExecRequest,
    timeout_s: u64,
) -> Result<(Result<f64, String>, f64), String> {
    // The program's deadline, and time for a slow guest to answer after it.
    let wait = Duration::from_secs(timeout_s) + Duration::from_secs(30);
    let t0 = Instant::now();
    let reply = g.conn.request(Command::Exec(req.clone()), wait).await;
    let host_s = t0.elapsed().as_secs_f64();
    let outcome = match reply {
        Ok(ReplyBody::Exited(r)) => {
            r.check(req).map_err(|e| format!("{}: {e}", g.spec.name))?;
            match failure_of(&r, timeout_s) {
                None => Ok(r.duration_ns as f64 / 1e9),
                Some(why) => Err(why),
            }
        }
        // The agent could not start it (a missing program, a bad cwd): a failed run.
        Err(ChannelError::Guest(why)) => Err(tail(&why, REASON_TAIL).to_string()),
        Ok(other) => return Err(format!("{}: exec answered {other:?}", g.spec.name)),
        Err(e) => return Err(format!("{}: {e}", g.spec.name)),
    };
    Ok((outcome, host_s))
}

/// Runs `cmd` `warmup` discarded then `reps` counted times: in the fleet's first guest only
/// ([`Test::Overhead`], every other guest idle) or in all its guests at once
/// ([`Test::Linearity`]). Failed runs are samples with their reason, not errors.
pub async fn measure(
    fleet: &Fleet,
    cmd: &UserCommand,
    test: Test,
    warmup: u32,
    reps: u32,
) -> Result<Vec<CommandSample>, String> {
    let guests: Vec<&RunningGuest> = match test {
        Test::Overhead => vec![fleet.guests.first().ok_or("no ready guest")?],
        _ => fleet.guests.iter().collect(),
    };
    let req = cmd.request();
    let n = fleet.guests.len();
    let mut out = Vec::new();
    for i in 0..warmup + reps {
        // All at once: sent together, each timed by its own agent (exec has no common
        // start instant; docs/methodology.md says what that means for linearity).
        let runs =
            futures::future::join_all(guests.iter().map(|g| run_one(g, &req, cmd.timeout_s))).await;
        if i < warmup {
            // A guest that failed fails the step all the same.
            runs.into_iter().collect::<Result<Vec<_>, _>>()?;
            continue;
        }
        for (g, r) in guests.iter().zip(runs) {
            let (outcome, host_s) = r?;
            let (cpus, vcpus) = super::placement(fleet.backend, &g.spec);
            out.push(CommandSample {
                backend: fleet.backend,
                test,
                name: cmd.name.clone(),
                argv: cmd.argv.clone(),
                n,
                rep: i - warmup,
                guest: g.spec.index,
                elapsed_s: outcome.as_ref().ok().copied(),
                host_s,
                failure: outcome.err(),
                cpus: Some(cpus),
                vcpus,
                provenance: String::new(),
            });
        }
    }
    Ok(out)
}

/// One backend's figures for one user workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandResult {
    /// The backend.
    pub backend: BackendKind,
    /// The workload's name.
    pub name: String,
    /// The command line it ran.
    pub command: String,
    /// T_a: the command's native time at n = 1, when measured.
    pub baseline: Option<Stat>,
    /// T_avn and O_vn = T_avn − T_a per n (the microbenchmarks' [`overhead::analyse`]).
    pub overhead: Vec<overhead::OverheadPoint>,
    /// All n guests at once, against O_v + T_a·max(1, n/cores) ([`linearity::analyse`]).
    pub linearity: Vec<linearity::LinearityPoint>,
    /// Counted runs, failed ones included.
    pub runs: usize,
    /// Failed runs: none of them is in a figure, nor any other guest's run of a linearity
    /// repetition in which one failed (a partial maximum would flatter it).
    pub failed: usize,
    /// The first failed runs: "overhead n=1 rep 0 guest 0: exit status 3; …".
    pub failures: Vec<String>,
}

/// How many failed runs a result lists with their reasons.
pub const KEEP_FAILURES: usize = 5;

/// Every backend's figures for every user workload, native (T_a) first. `host_cpus` stands
/// in where samples did not record their guests' CPUs.
pub fn analyse(samples: &[CommandSample], host_cpus: usize) -> Vec<CommandResult> {
    // One series per backend, workload name and command line.
    let mut groups: BTreeMap<(BackendKind, String, String), Vec<&CommandSample>> = BTreeMap::new();
    for s in samples {
        groups.entry((s.backend, s.name.clone(), command_line(&s.argv))).or_default().push(s);
    }
    let bench_of = |ss: &[&CommandSample], test: Test| -> Vec<BenchSample> {
        // Linearity repetitions in which some guest failed are left out whole.
        let broken: std::collections::BTreeSet<(usize, u32)> = ss
            .iter()
            .filter(|s| s.test == test && s.failure.is_some())
            .map(|s| (s.n, s.rep))
            .collect();
        ss.iter()
            .filter(|s| s.test == test)
            .filter(|s| test != Test::Linearity || !broken.contains(&(s.n, s.rep)))
            .filter_map(|s| s.as_bench())
            .collect()
    };
    let baseline_of = |name: &str, command: &str| -> Option<Stat> {
        let native = groups.get(&(BackendKind::Native, name.to_string(), command.to_string()))?;
        let v: Vec<BenchSample> =
            bench_of(native, Test::Overhead).into_iter().filter(|s| s.n == 1).collect();
        overhead::baseline(&v.iter().collect::<Vec<_>>())
    };
    groups
        .iter()
        .map(|((backend, name, command), ss)| {
            let baseline = baseline_of(name, command);
            let ta = baseline.as_ref().map(|s| s.mean);
            let o = bench_of(ss, Test::Overhead);
            let overhead = overhead::analyse(&o.iter().collect::<Vec<_>>(), ta);
            let t_av = overhead.iter().find(|p| p.n == 1).map(|p| p.value.mean);
            let l = bench_of(ss, Test::Linearity);
            let linearity = linearity::analyse(&l.iter().collect::<Vec<_>>(), ta, t_av, host_cpus);
            let failed: Vec<&&CommandSample> = ss.iter().filter(|s| s.failure.is_some()).collect();
            let failures = failed
                .iter()
                .take(KEEP_FAILURES)
                .map(|s| {
                    format!(
                        "{} n={} rep {} guest {}: {}",
                        test_name(s.test),
                        s.n,
                        s.rep,
                        s.guest,
                        s.failure.as_deref().unwrap_or_default()
                    )
                })
                .collect();
            CommandResult {
                backend: *backend,
                name: name.clone(),
                command: command.clone(),
                baseline,
                overhead,
                linearity,
                runs: ss.len(),
                failed: failed.len(),
                failures,
            }
        })
        .collect()
}

/// The test's name in step keys and the report.
pub fn test_name(t: Test) -> &'static str {
    match t {
        Test::Overhead => "overhead",
        Test::Linearity => "linearity",
        Test::Isolation => "isolation",
        Test::Ring => "ring",
        Test::RingLatency => "ring_latency",
    }
}

#[cfg(test)]
mod tests;
