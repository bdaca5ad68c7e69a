//! `hostd run --dry-run`'s time estimate: the campaign's [`Work`] priced with per-backend
//! boot and per-run costs, measured ones from a previous results directory where it has
//! them (the same backend and workload), else the conservative defaults below, and the
//! output says which.
//!
//! The model is deliberately simple and errs long: a fleet boots in n × one guest's boot
//! time (a busy 2-core host starts guests about one after another), a benchmark run with
//! `busy` copies at once takes one copy's time × max(1, busy / cores) for CPU and memory
//! (they share the cores), × busy for the disk (one shared device), × 1 for the network
//! (fixed duration); every run pays a fixed half second of coordination.

use std::collections::BTreeMap;
use std::path::Path;

use vb_protocol::bench::Resource;

use crate::backend::BackendKind;
use crate::campaign::{BackendPlan, Campaign};
use crate::runner::Work;
use crate::samples::Record;
use crate::startup::StartMode;
use crate::suite::{Test, Workloads};

/// Default seconds to boot one guest of each backend: about twice what the reference host
/// (2 cores, QEMU under TCG: docs/campaigns.md) measured, not measured here.
pub fn default_boot_s(b: BackendKind) -> f64 {
    match b {
        BackendKind::Native | BackendKind::Ns => 0.1,
        BackendKind::Oci => 0.3,
        BackendKind::Uml => 0.5,
        BackendKind::QemuMicrovm => 4.0,
        BackendKind::QemuFull => 8.0,
        BackendKind::Firecracker => 2.0,
        BackendKind::Xen => 10.0,
    }
}

/// Default slowdown of a backend's benchmark run against the native reference run below:
/// conservative (QEMU under TCG: ≈ 3.6 × on the CPU and ≈ 20 × through the memory
/// benchmark's matrices on the reference host), not measured here.
pub fn default_slowdown(b: BackendKind, r: Resource) -> f64 {
    use BackendKind as B;
    use Resource as R;
    match (b, r) {
        (_, R::Network) => 1.2,
        (B::Native | B::Ns | B::Oci, _) => 1.2,
        (B::Uml, R::Memory) => 2.0,
        (B::Uml, _) => 1.5,
        (B::QemuMicrovm | B::QemuFull, R::Cpu) => 5.0,
        (B::QemuMicrovm | B::QemuFull, R::Memory) => 30.0,
        (B::QemuMicrovm | B::QemuFull, R::Disk) => 4.0,
        (B::Firecracker | B::Xen, R::Memory) => 3.0,
        (B::Firecracker | B::Xen, _) => 1.5,
    }
}

/// Default seconds of one native run of `r`'s benchmark with these workloads, from rates
/// somewhat below the reference host's (1.5 × 10⁸ Newton steps/s, 5 GB/s through the
/// matrices, 300 MB/s from the disk; a network run lasts its duration).
pub fn default_native_run_s(r: Resource, w: &Workloads) -> f64 {
    match r {
        Resource::Cpu => w.cpu_rounds as f64 / 1.5e8,
        Resource::Memory => {
            w.mem_passes as f64 * crate::fidelity::mem_working_set(w.mem_n) as f64 / 5e9
        }
        Resource::Disk => w.disk_mib as f64 * 1.048_576 / 300.0,
        Resource::Network => w.net_duration_ms as f64 / 1000.0,
    }
}

/// Seconds every benchmark run costs besides the benchmark (request, start barrier, the
/// disk's eviction and paired native read).
const RUN_FIXED_S: f64 = 0.5;
/// What one run of a user's command is assumed to take, s: its real length is unknown
/// before it has run (`--dry-run` says the estimate assumes it).
pub const COMMAND_RUN_S: f64 = 1.0;
/// Seconds to tear a fleet down.
const TEARDOWN_S: f64 = 2.0;
/// One Xen lab's emulated host: QEMU boots Xen and dom0 (TCG), and powers off.
const LAB_MACHINE_S: f64 = 120.0;

/// What the estimate knows from measurements.
#[derive(Debug, Default, Clone)]
pub struct Measured {
    /// The directory read.
    pub from: Option<std::path::PathBuf>,
    /// Per backend: seconds per guest of a fleet's boot (Σ T_startup ÷ Σ n of its fleets).
    pub boot_s: BTreeMap<BackendKind, f64>,
    /// Per backend, resource and workload parameters: one overhead run's seconds (the
    /// median over the repetitions and sizes of the slowest instance).
    pub run_s: BTreeMap<(BackendKind, Resource, String), f64>,
}

impl Measured {
    /// Reads a results directory's samples.
    pub fn read(dir: &Path) -> anyhow::Result<Measured> {
        let (records, _) = crate::results::read_records::<Record>(dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        Ok(Measured { from: Some(dir.to_path_buf()), ..Measured::of(&records) })
    }

    /// The costs `records` show.
    pub fn of(records: &[Record]) -> Measured {
        // Fleets: (backend, n, mode) → T_startup (the last guest's ready time).
        let mut fleets: BTreeMap<(BackendKind, usize, &str), f64> = BTreeMap::new();
        // Overhead runs: (backend, resource, params, n, rep) → the slowest instance.
        let mut runs: BTreeMap<(BackendKind, Resource, String, usize, u32), f64> = BTreeMap::new();
        for r in records {
            match r {
                Record::Startup(s) => {
                    let t = fleets.entry((s.backend, s.n, s.mode.name())).or_default();
                    *t = t.max(s.ready_s);
                }
                Record::Bench(s) if s.test == Test::Overhead => {
                    let k = (s.backend, s.resource, s.params.clone(), s.n, s.rep);
                    let t = runs.entry(k).or_default();
                    *t = t.max(s.elapsed_s);
                }
                _ => {}
            }
        }
        let mut sums: BTreeMap<BackendKind, (f64, usize)> = BTreeMap::new();
        for ((b, n, _), t) in fleets {
            let s = sums.entry(b).or_default();
            s.0 += t;
            s.1 += n;
        }
        let boot_s =
            sums.into_iter().filter(|(_, (_, n))| *n > 0).map(|(b, (t, n))| (b, t / n as f64));
        let mut by: BTreeMap<(BackendKind, Resource, String), Vec<f64>> = BTreeMap::new();
        for ((b, r, p, _, _), t) in runs {
            by.entry((b, r, p)).or_default().push(t);
        }
        let run_s = by.into_iter().map(|(k, mut v)| {
            v.sort_by(f64::total_cmp);
            (k, v[v.len() / 2])
        });
        Measured { from: None, boot_s: boot_s.collect(), run_s: run_s.collect() }
    }
}

/// The estimate: total seconds, and which parts came from measurements.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub seconds: f64,
    /// Priced parts (boots and benchmark steps) from measurements, and in all.
    pub measured: usize,
    pub parts: usize,
}

impl Estimate {
    /// One line for `--dry-run`.
    pub fn line(&self, m: &Measured) -> String {
        let t = duration_text(self.seconds);
        match &m.from {
            Some(d) if self.measured > 0 => format!(
                "estimated time: {t} ({} of {} boot and benchmark costs measured in {}, the rest from conservative defaults, not measured)",
                self.measured,
                self.parts,
                d.display()
            ),
            Some(d) => format!(
                "estimated time: {t} (estimate from defaults, not measured: {} has no sample of these backends and workloads; conservative per-backend defaults, QEMU under TCG)",
                d.display()
            ),
            None => format!(
                "estimated time: {t} (estimate from defaults, not measured: conservative per-backend defaults, QEMU under TCG; --estimate-from DIR prices it from a previous run's samples)"
            ),
        }
    }
}

/// "1 h 05 min", "12 min", "40 s".
pub fn duration_text(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s.div_ceil(60)),
        _ => {
            let m = s.div_ceil(60);
            format!("{} h {:02} min", m / 60, m % 60)
        }
    }
}

/// Prices `work` (of `c` over `plans`) for a host of `cores` CPUs.
pub fn estimate(
    c: &Campaign,
    plans: &[BackendPlan],
    work: &[Work],
    m: &Measured,
    cores: usize,
) -> Estimate {
    let (mut measured, mut parts) = (0, 0);
    let mut boot = |b: BackendKind, n: usize| {
        parts += 1;
        let per = match m.boot_s.get(&b) {
            Some(&s) => {
                measured += 1;
                s
            }
            None => default_boot_s(b),
        };
        per * n as f64
    };
    let mut seconds = 0.0;
    let runs = (c.warmup + c.reps) as f64;
    let settle = c.startup.settle_s as f64;
    let pricer = Pricer { c, plans, m, cores };
    let mut bench_parts = (0, 0);
    for w in work {
        seconds += match w {
            Work::Startup { backend, n, mode } => {
                // The floor and the memory each read over the settle time, and the settle.
                let cold = if *mode == StartMode::Cold { 1.0 } else { 0.0 };
                boot(*backend, *n) + 3.0 * settle + TEARDOWN_S + cold
            }
            Work::XenLab { n, cpu_rounds } => {
                let cpu = default_native_run_s(
                    Resource::Cpu,
                    &Workloads { cpu_rounds: *cpu_rounds, ..plans[0].workloads.clone() },
                ) * default_slowdown(BackendKind::QemuFull, Resource::Cpu);
                LAB_MACHINE_S + boot(BackendKind::Xen, *n) * 2.0 + 3.0 * settle + cpu
            }
            Work::Fleet { backend, guests } => {
                boot(*backend, *guests) + default_boot_s(BackendKind::Native) + TEARDOWN_S
            }
            Work::Bench { backend, test, resource, busy, params } => {
                let (s, measured) = pricer.bench(*backend, *test, *resource, *busy, params);
                bench_parts.1 += 1;
                bench_parts.0 += measured as usize;
                s
            }
            Work::Netem { .. } => {
                runs * (default_native_run_s(Resource::Network, &plans[0].workloads) + RUN_FIXED_S)
            }
            // A user's command lasts what it lasts: priced as a CPU-bound run of
            // COMMAND_RUN_S, never measured (the dry run says so).
            Work::Command { busy, .. } => {
                runs * (COMMAND_RUN_S * (*busy as f64 / cores.max(1) as f64).max(1.0) + RUN_FIXED_S)
            }
        };
    }
    seconds += pricer.disk_copies_s();
    Estimate { seconds, measured: measured + bench_parts.0, parts: parts + bench_parts.1 }
}

/// What pricing a bench step needs of the campaign, its plans, the measured costs and the host.
struct Pricer<'a> {
    c: &'a Campaign,
    plans: &'a [BackendPlan],
    m: &'a Measured,
    cores: usize,
}

impl Pricer<'_> {
    /// The workloads a step's parameters came from: its backend's, else the plan's whose
    /// they are (a host baseline runs another backend's).
    fn workloads(&self, b: BackendKind, r: Resource, params: &str) -> Workloads {
        let same = |p: &&BackendPlan| p.workloads.params(r) == params;
        self.plans
            .iter()
            .filter(same)
            .find(|p| p.kind == b)
            .or_else(|| self.plans.iter().find(same))
            .map_or_else(|| self.plans[0].workloads.clone(), |p| p.workloads.clone())
    }

    /// A bench step's seconds, and whether its run time was measured rather than a default.
    fn bench(
        &self,
        backend: BackendKind,
        test: Test,
        resource: Resource,
        busy: usize,
        params: &str,
    ) -> (f64, bool) {
        let (c, m) = (self.c, self.m);
        let runs = (c.warmup + c.reps) as f64;
        let measured = m.run_s.get(&(backend, resource, params.to_string())).copied();
        let one = measured.unwrap_or_else(|| {
            default_native_run_s(resource, &self.workloads(backend, resource, params))
                * default_slowdown(backend, resource)
        });
        let load = match resource {
            Resource::Cpu | Resource::Memory => (busy as f64 / self.cores as f64).max(1.0),
            Resource::Disk => busy as f64,
            Resource::Network => 1.0,
        };
        let disk = resource == Resource::Disk && backend != BackendKind::Native;
        // A backend's disk read is bracketed by two native reads of the same size, and its
        // overhead step reads on (up to 4 × reps, at least 8) until the paired ratio is
        // known to ±5 %: priced at that most.
        let (runs, native_reads) = if disk {
            let native = m
                .run_s
                .get(&(BackendKind::Native, resource, params.to_string()))
                .copied()
                .unwrap_or_else(|| {
                    default_native_run_s(resource, &self.workloads(backend, resource, params))
                });
            let runs = if test == Test::Overhead {
                (c.warmup + crate::suite::overhead::disk_read_cap(c.reps)) as f64
            } else {
                runs
            };
            (runs, 2.0 * native)
        } else {
            (runs, 0.0)
        };
        (runs * (one * load + native_reads + RUN_FIXED_S), measured.is_some())
    }

    /// The data disk's copies, made before the first backend: the largest overhead fleet's
    /// and the native reference, at the default disk rate.
    fn disk_copies_s(&self) -> f64 {
        if !self.c.resources.contains(&Resource::Disk) {
            return 0.0;
        }
        let most = self
            .plans
            .iter()
            .map(|p| p.overhead_sizes.iter().copied().max().unwrap_or(0).max(2))
            .max()
            .unwrap_or(0);
        let mib = self.plans.iter().map(|p| p.workloads.disk_mib).max().unwrap_or(0);
        (most + 1) as f64 * mib as f64 * 1.048_576 / 300.0
    }
}

/// The newest results directory of `campaign` under `base` (named
/// `<stamp>-run-<campaign>-<run>`) that has samples: the default source of `--dry-run`'s
/// measured costs.
pub fn latest_results(base: &Path, campaign: &str) -> Option<std::path::PathBuf> {
    let tag = format!("-run-{campaign}-");
    let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir(base)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            // The run id after the campaign name holds no '-': a campaign named "a" does
            // not match "a-quick"'s directories.
            name.split_once(&tag).is_some_and(|(_, run)| !run.contains('-'))
        })
        .map(|e| e.path())
        .filter(|p| p.join(crate::results::SAMPLES).is_file())
        .collect();
    // Names start with an RFC 3339 stamp: the last in order is the newest.
    dirs.sort();
    dirs.pop()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{planned_work, Boots};
    use crate::suite::Test;

    fn campaign(toml: &str) -> Campaign {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn durations_read_as_a_person_would_say_them() {
        assert_eq!(duration_text(40.0), "40 s");
        assert_eq!(duration_text(61.0), "2 min");
        assert_eq!(duration_text(3600.0 + 5.0 * 60.0), "1 h 05 min");
    }

    /// A known answer from the defaults: native, cpu only, startup n = 1 cold, overhead
    /// at n = 1, no isolation, no ring, 3 × 10⁸ rounds, 1 warm-up + 1 repetition, settle 1 s.
    #[test]
    fn default_estimate_prices_boots_and_runs() {
        let c = campaign(
            "backends = [\"native\"]\nresources = [\"cpu\"]\nreps = 1\nwarmup = 1\n\
             [startup]\nsizes = [1]\nmodes = [\"cold\"]\nsettle_s = 1\n\
             [overhead]\nsizes = [1]\n[isolation]\nenabled = false\n[ring]\nguests = 0\n\
             [workloads]\ncpu_rounds = 300000000\n",
        );
        let plans = c.resolved_plans(None);
        let work = planned_work(&c, &plans, false);
        let e = estimate(&c, &plans, &work, &Measured::default(), 2);
        // Startup: 0.1 + 3 × 1 + 2 + 1 (cold) = 6.1; fleet: 0.1 + 0.1 + 2 = 2.2; overhead
        // and linearity at n = 1: 2 runs × (2 s × 1.2 + 0.5) each = 5.8 × 2 = 11.6.
        assert!((e.seconds - (6.1 + 2.2 + 11.6)).abs() < 1e-9, "{e:?}");
        assert_eq!((e.measured, e.parts), (0, 4));
        assert!(e.line(&Measured::default()).contains("estimate from defaults, not measured"));
    }

    /// A backend's disk read is priced with the two native reads bracketing it, and its
    /// overhead step at the most reads it may take (4 × reps, at least 8, plus warm-up).
    #[test]
    fn disk_steps_count_the_bracketing_reads_and_the_extra_reps() {
        let c = campaign(
            "backends = [\"native\", \"uml\"]\nresources = [\"cpu\"]\nreps = 2\nwarmup = 1\n",
        );
        let plans = c.resolved_plans(None);
        let params = plans[0].workloads.params(Resource::Disk);
        let native = 1024.0 * 1.048_576 / 300.0;
        let bench = |backend, test, busy| Work::Bench {
            backend,
            test,
            resource: Resource::Disk,
            busy,
            params: params.clone(),
        };
        let price = |w: Work| estimate(&c, &plans, &[w], &Measured::default(), 2).seconds;
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-9, "{a} != {b}");
        close(price(bench(BackendKind::Native, Test::Overhead, 1)), 3.0 * (native * 1.2 + 0.5));
        let uml = native * 1.5;
        close(price(bench(BackendKind::Uml, Test::Overhead, 1)), 9.0 * (uml + 2.0 * native + 0.5));
        // Linearity: reps as set, two copies sharing the disk.
        close(
            price(bench(BackendKind::Uml, Test::Linearity, 2)),
            3.0 * (2.0 * uml + 2.0 * native + 0.5),
        );
    }

    /// Costs measured before replace the defaults for the same backend and workload.
    #[test]
    fn measured_costs_replace_the_defaults() {
        let c = campaign(
            "backends = [\"native\"]\nresources = [\"cpu\"]\nreps = 1\nwarmup = 0\n\
             [startup]\nsizes = [2]\nmodes = [\"hot\"]\nsettle_s = 0\n\
             [overhead]\nsizes = [1]\n[isolation]\nenabled = false\n[ring]\nguests = 0\n\
             [workloads]\ncpu_rounds = 100000000\n",
        );
        let plans = c.resolved_plans(None);
        let params = plans[0].workloads.params(Resource::Cpu);
        let line = |s: &str| serde_json::from_str::<crate::samples::Line>(s).unwrap().record;
        let records = vec![
            line(
                r#"{"record":"startup","backend":"native","n":2,"mode":"hot","index":0,"ready_s":0.5,"own_s":0.5,"guest_boot_s":null,"guest_kernel_s":null}"#,
            ),
            line(
                r#"{"record":"startup","backend":"native","n":2,"mode":"hot","index":1,"ready_s":3.0,"own_s":3.0,"guest_boot_s":null,"guest_kernel_s":null}"#,
            ),
            line(&format!(
                r#"{{"record":"bench","backend":"native","test":"overhead","resource":"cpu","n":1,"rep":0,"guest":0,"instance":0,"value":4.0,"unit":"s","elapsed_s":4.0,"params":"{params}"}}"#
            )),
        ];
        let m = Measured { from: Some("prev".into()), ..Measured::of(&records) };
        assert_eq!(m.boot_s[&BackendKind::Native], 1.5);
        let work = planned_work(&c, &plans, false);
        let e = estimate(&c, &plans, &work, &m, 2);
        // Startup: 1.5 × 2 + 2 = 5; fleet of 1: 1.5 + 0.1 + 2 = 3.6; two steps of one
        // run of 4 s + 0.5 s: 9.
        assert!((e.seconds - (5.0 + 3.6 + 9.0)).abs() < 1e-9, "{e:?}");
        assert_eq!((e.measured, e.parts), (4, 4));
        assert!(e.line(&m).contains("4 of 4 boot and benchmark costs measured in prev"));
        assert_eq!(Boots::of(&work).guests, 3);
    }

    #[test]
    fn latest_results_picks_the_campaigns_newest_directory() {
        let d = tempfile::tempdir().unwrap();
        for name in [
            "2026-01-01T00-00-00Z-run-a-r1",
            "2026-01-02T00-00-00Z-run-a-r2",
            "2026-01-03T00-00-00Z-run-a-quick-r3",
            "2026-01-04T00-00-00Z-run-a-r4",
        ] {
            std::fs::create_dir(d.path().join(name)).unwrap();
            if name != "2026-01-04T00-00-00Z-run-a-r4" {
                std::fs::write(d.path().join(name).join(crate::results::SAMPLES), "").unwrap();
            }
        }
        let got = latest_results(d.path(), "a").unwrap();
        assert!(got.ends_with("2026-01-02T00-00-00Z-run-a-r2"), "{got:?}");
        assert!(latest_results(d.path(), "b").is_none());
    }
}
