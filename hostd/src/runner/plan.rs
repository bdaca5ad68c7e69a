//! What a fresh run of a campaign does, walked as [`run`](super::run) walks it: the progress
//! bar's N, `hostd run --dry-run`'s steps and guest boots, and what its time estimate
//! ([`crate::estimate`]) prices.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use vb_protocol::bench::Resource;

use super::{command_key, host_baseline, own_commands, step_key, Pass};
use crate::backend::BackendKind;
use crate::campaign::{BackendPlan, Campaign};
use crate::startup::StartMode;
use crate::suite::Test;

/// One unit of what a fresh run of a campaign does, in the order [`run`](super::run) does it: what the
/// progress bar counts, `--dry-run` lists and the time estimate ([`crate::estimate`]) prices.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// A startup step: a fleet of `n` guests booted in `mode`, measured and torn down.
    Startup { backend: BackendKind, n: usize, mode: StartMode },
    /// The `xen` backend's startup step at `n` in a Xen lab: an emulated Xen host booted
    /// under QEMU with `n` guests in it, which also run the CPU benchmark once.
    XenLab { n: usize, cpu_rounds: u64 },
    /// A fleet of the suite, grown to `guests` guests, with its native network peer.
    Fleet { backend: BackendKind, guests: usize },
    /// One suite step: `warmup + reps` runs of `resource`'s benchmark with `busy` copies at
    /// once (overhead: 1; linearity: n; isolation: 3; the ring: its guests).
    Bench { backend: BackendKind, test: Test, resource: Resource, busy: usize, params: String },
    /// One step of the emulated network's accuracy: `n` guests measuring the network at once.
    Netem { backend: BackendKind, n: usize },
    /// One step of a user's command (`[[workloads.commands]]`): `warmup + reps` runs with
    /// `busy` copies at once (overhead: 1; linearity: n), each up to `timeout_s`.
    Command { backend: BackendKind, test: Test, name: String, busy: usize, timeout_s: u64 },
}

impl Work {
    /// Whether it is a step of its own (a StepDone or StepFailed record).
    pub fn is_step(&self) -> bool {
        !matches!(self, Work::Fleet { .. })
    }
}

/// Whether the campaign's `xen` backend will be measured in the Xen lab here: it is listed,
/// `xen.lab` is on and this host is not a Xen dom0 (as [`run`](super::run) decides from the probe).
pub fn xen_in_lab(c: &Campaign) -> bool {
    c.xen.lab && crate::backend::xen::check_dom0(std::path::Path::new("/")).is_err()
}

/// What a fresh run of `plans` does ([`Work`]), every backend assumed available (one that
/// is not makes none of its part); `xen_lab`: the `xen` backend goes to the Xen lab
/// ([`xen_in_lab`]). Walked with the step keys [`run`](super::run) uses, so a step two passes share
/// (a host baseline's) is done once, as in a run.
pub fn planned_work(c: &Campaign, plans: &[BackendPlan], xen_lab: bool) -> Vec<Work> {
    let mut out = Vec::new();
    let mut done = HashSet::new();
    for plan in plans {
        if plan.kind == BackendKind::Xen && xen_lab {
            for &n in plan.startup_sizes.iter().filter(|&&n| n <= c.xen.lab_max_guests) {
                out.push(Work::XenLab { n, cpu_rounds: plan.workloads.cpu_rounds });
            }
            continue;
        }
        for &n in &plan.startup_sizes {
            for &mode in &c.startup.modes {
                out.push(Work::Startup { backend: plan.kind, n, mode });
            }
        }
        for pass in Pass::all(c, plan.kind) {
            if pass.resources.is_empty() {
                continue;
            }
            let plan = &pass.plan_of(plan);
            plan_overhead_and_linearity(plan, &pass, &mut done, &mut out);
            let w = &plan.workloads;
            if c.isolation.enabled && pass.isolation {
                out.push(Work::Fleet { backend: plan.kind, guests: 2 });
                out.extend(pass.resources.iter().map(|&r| Work::Bench {
                    backend: plan.kind,
                    test: Test::Isolation,
                    resource: r,
                    busy: 3,
                    params: w.params(r),
                }));
            }
            if plan.ring_guests >= 2 && pass.ring {
                out.push(Work::Fleet { backend: plan.kind, guests: plan.ring_guests });
                out.push(Work::Bench {
                    backend: plan.kind,
                    test: Test::Ring,
                    resource: Resource::Network,
                    busy: plan.ring_guests,
                    params: w.params(Resource::Network),
                });
            }
        }
        if c.netem.enabled {
            for &n in &c.netem.sizes {
                out.push(Work::Fleet { backend: plan.kind, guests: n });
                out.push(Work::Netem { backend: plan.kind, n });
            }
        }
        if plan.kind != BackendKind::Native && plan.workloads != plans[0].workloads {
            let baseline = host_baseline(&plans[0], plan);
            let pass = Pass::own(c, BackendKind::Native);
            plan_overhead_and_linearity(&baseline, &pass, &mut done, &mut out);
        }
    }
    out
}

/// The fleets and steps of [`overhead_and_linearity`](super::overhead_and_linearity): one fleet for the resources but
/// memory, grown over the sizes, and one for memory; a fleet whose steps are all done
/// already is not started.
fn plan_overhead_and_linearity(
    plan: &BackendPlan,
    pass: &Pass,
    done: &mut HashSet<String>,
    out: &mut Vec<Work>,
) {
    let (memory, others): (Vec<Resource>, Vec<Resource>) =
        pass.resources.iter().partition(|&&r| r == Resource::Memory);
    let memory_sizes: Vec<usize> = plan
        .memory_sizes
        .iter()
        .copied()
        .filter(|n| pass.overhead_sizes.as_ref().is_none_or(|o| o.contains(n)))
        .collect();
    let commands = own_commands(plan, pass);
    for (resources, commands, sizes) in
        [(others, commands, &plan.overhead_sizes), (memory, &[][..], &memory_sizes)]
    {
        let mut steps = Vec::new();
        for &n in sizes {
            for &r in &resources {
                for (test, busy) in [(Test::Overhead, 1), (Test::Linearity, n)] {
                    let name = if test == Test::Overhead { "overhead" } else { "linearity" };
                    if done.insert(step_key(plan, name, n, r, &pass.suffix)) {
                        let (backend, params) = (plan.kind, plan.workloads.params(r));
                        steps.push(Work::Bench { backend, test, resource: r, busy, params });
                    }
                }
            }
            for c in commands {
                for (test, busy) in [(Test::Overhead, 1), (Test::Linearity, n)] {
                    let name = if test == Test::Overhead { "overhead" } else { "linearity" };
                    if done.insert(command_key(plan, name, n, c)) {
                        steps.push(Work::Command {
                            backend: plan.kind,
                            test,
                            name: c.name.clone(),
                            busy,
                            timeout_s: c.timeout_s,
                        });
                    }
                }
            }
        }
        if !steps.is_empty() {
            let guests = sizes.iter().copied().max().unwrap_or(0);
            out.push(Work::Fleet { backend: plan.kind, guests });
            out.append(&mut steps);
        }
    }
}

/// How many steps (StepDone/StepFailed records) a fresh run of `plans` makes: the length
/// of `hostd run`'s progress bar ([`planned_work`]'s steps).
pub fn planned_steps(c: &Campaign, plans: &[BackendPlan], xen_lab: bool) -> usize {
    planned_work(c, plans, xen_lab).iter().filter(|w| w.is_step()).count()
}

/// The guests a run boots ([`planned_work`]), and those [`run`](super::run) booted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Boots {
    /// Guests of the backends measured (every fleet's, the startup ones included).
    pub guests: usize,
    /// The native network peers the suite's fleets start (one per suite fleet).
    pub peers: usize,
    /// Xen labs (emulated Xen hosts under QEMU) and the guests booted inside them.
    pub labs: usize,
    pub lab_guests: usize,
}

impl Boots {
    pub fn of(work: &[Work]) -> Boots {
        let mut b = Boots::default();
        for w in work {
            match w {
                Work::Startup { n, .. } => b.guests += n,
                Work::Fleet { guests, .. } => {
                    b.guests += guests;
                    b.peers += 1;
                }
                Work::XenLab { n, .. } => {
                    b.labs += 1;
                    b.lab_guests += n;
                }
                Work::Bench { .. } | Work::Netem { .. } | Work::Command { .. } => {}
            }
        }
        b
    }

    /// What this process has booted so far: every fleet's launches, the peers', and the
    /// Xen labs [`run`](super::run) ran.
    pub fn so_far() -> Boots {
        Boots {
            guests: crate::fleet::launched(),
            peers: crate::peer::launched(),
            labs: LABS.load(Ordering::Relaxed),
            lab_guests: LAB_GUESTS.load(Ordering::Relaxed),
        }
    }
}

impl std::fmt::Display for Boots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} guests, {} network peers", self.guests, self.peers)?;
        if self.labs > 0 {
            write!(f, ", {} Xen labs with {} guests in them", self.labs, self.lab_guests)?;
        }
        Ok(())
    }
}

/// The Xen labs [`run`](super::run) ran in this process, and the guests they booted.
pub(super) static LABS: AtomicUsize = AtomicUsize::new(0);
pub(super) static LAB_GUESTS: AtomicUsize = AtomicUsize::new(0);

#[cfg(test)]
mod tests {
    use super::*;

    /// The progress bar's length: startup fleets, overhead and linearity per size and
    /// resource, isolation per resource, the ring, and the extra network passes.
    #[test]
    fn planned_steps_count_every_step() {
        let c: Campaign = toml::from_str(
            "backends = [\"native\", \"uml\"]\nresources = [\"cpu\", \"network\"]\n\
             [startup]\nsizes = [1, 2]\n[overhead]\nsizes = [1, 2, 5]\n[ring]\nguests = 3\n",
        )
        .unwrap();
        let plans = c.resolved_plans(None);
        // Each backend: startup 2 sizes × 2 modes; 2 resources × 3 sizes × (overhead,
        // linearity); isolation 2; ring 1 = 4 + 12 + 2 + 1 = 19. Native adds its loopback
        // network reference at n = 1 (overhead, linearity): 2.
        assert_eq!(planned_steps(&c, &plans, false), 19 + 2 + 19);
    }

    fn campaign(toml: &str) -> Campaign {
        toml::from_str(toml).unwrap()
    }

    /// Boots as a run makes them: each startup fleet; one suite fleet grown to the largest
    /// size (others) and one for memory, each with a peer; isolation's 2; the ring's.
    #[test]
    fn planned_boots_count_every_fleet() {
        let c = campaign(
            "backends = [\"native\", \"uml\"]\nresources = [\"cpu\", \"memory\"]\n\
             [startup]\nsizes = [1, 3]\nmodes = [\"cold\", \"hot\"]\n\
             [overhead]\nsizes = [1, 2, 4]\n[ring]\nguests = 3\n",
        );
        let plans = c.resolved_plans(None);
        let work = planned_work(&c, &plans, false);
        // Per backend: startup (1 + 3) × 2 = 8; cpu fleet 4, memory fleet 4 (its sizes
        // default to the overhead ones), isolation 2, ring 3 = 21 guests, 4 peers. No
        // network: native's loopback pass has no resource and starts nothing.
        assert_eq!(
            Boots::of(&work),
            Boots { guests: 2 * 21, peers: 2 * 4, labs: 0, lab_guests: 0 }
        );
        assert_eq!(Boots::of(&work).to_string(), "42 guests, 8 network peers");
    }

    /// A backend with other workloads adds the host baseline at n = 1, once for all the
    /// backends sharing those workloads, and only for the resources whose parameters
    /// differ from native's own.
    #[test]
    fn host_baseline_fleets_are_planned_once() {
        let c = campaign(
            "backends = [\"native\", \"uml\", \"ns\"]\nresources = [\"cpu\", \"memory\"]\n\
             [startup]\nsizes = [1]\nmodes = [\"hot\"]\n[overhead]\nsizes = [1]\n\
             [isolation]\nenabled = false\n[ring]\nguests = 0\n\
             [overrides.uml.workloads]\ncpu_rounds = 5\n[overrides.ns.workloads]\ncpu_rounds = 5\n",
        );
        let plans = c.resolved_plans(None);
        let work = planned_work(&c, &plans, false);
        // Each backend: startup 1 + cpu fleet 1 + memory fleet 1 = 3 guests, 2 peers; the
        // baseline: native's cpu at 5 rounds (a fleet of 1 and a peer), its memory already
        // measured with native's own workloads.
        assert_eq!(
            Boots::of(&work),
            Boots { guests: 3 * 3 + 1, peers: 3 * 2 + 1, labs: 0, lab_guests: 0 }
        );
        // Steps: each backend 1 + 2 × 2 = 5; the baseline's cpu overhead and linearity 2.
        assert_eq!(planned_steps(&c, &plans, false), 3 * 5 + 2);
    }

    /// Users' commands are overhead and linearity steps of the resources' fleet (started
    /// for them alone when the campaign measures only memory); an override's command of the
    /// same name but another argv gets its own host baseline steps.
    #[test]
    fn user_commands_are_planned_in_the_suite_fleet_and_the_host_baseline() {
        let cmd =
            |argv: &str| format!("[[workloads.commands]]\nname = \"w\"\nargv = [\"{argv}\"]\n");
        let c = campaign(&format!(
            "backends = [\"native\", \"uml\"]\nresources = [\"memory\"]\n\
             [startup]\nsizes = [1]\nmodes = [\"hot\"]\n[overhead]\nsizes = [1]\n\
             [isolation]\nenabled = false\n[ring]\nguests = 0\n{}[overrides.uml.workloads]\n{}",
            cmd("/bin/true"),
            cmd("/bin/false").replace("workloads.commands", "overrides.uml.workloads.commands"),
        ));
        c.check().unwrap();
        let plans = c.resolved_plans(None);
        let work = planned_work(&c, &plans, false);
        let commands = |b: BackendKind| {
            work.iter()
                .filter(|w| matches!(w, Work::Command { backend, .. } if *backend == b))
                .count()
        };
        // native: its own command, and uml's other one as uml's host baseline; uml: its own.
        assert_eq!((commands(BackendKind::Native), commands(BackendKind::Uml)), (4, 2));
        assert!(work.contains(&Work::Command {
            backend: BackendKind::Uml,
            test: Test::Linearity,
            name: "w".into(),
            busy: 1,
            timeout_s: 600,
        }));
        // Each backend: startup 1 + memory 2 + command 2; the baseline's command 2 (its
        // memory workload is native's own: done once).
        assert_eq!(planned_steps(&c, &plans, false), 2 * 5 + 2);
        // Each backend: startup 1, the commands' fleet 1 and the memory fleet 1, each with a
        // peer; the baseline: the commands' fleet.
        assert_eq!(
            Boots::of(&work),
            Boots { guests: 2 * 3 + 1, peers: 2 * 2 + 1, labs: 0, lab_guests: 0 }
        );
    }

    /// The Xen lab makes one step (a cold start, its CPU benchmark inside) per startup
    /// size up to xen.lab_max_guests, and no suite: the bar's N counts that, not the
    /// suite a Xen host would run.
    #[test]
    fn xen_in_the_lab_counts_its_lab_steps_only() {
        let c = campaign(
            "backends = [\"native\", \"xen\"]\nresources = [\"cpu\", \"network\"]\n\
             [startup]\nsizes = [1, 2, 20]\n[overhead]\nsizes = [1, 2]\n[ring]\nguests = 3\n\
             [xen]\nlab = true\nlab_max_guests = 10\n",
        );
        let plans = c.resolved_plans(None);
        let modes = c.startup.modes.len();
        // native: startup 3 × modes; 2 resources × 2 sizes × 2 tests; isolation 2; ring 1;
        // its loopback network reference 2.
        let native = 3 * modes + 8 + 2 + 1 + 2;
        assert_eq!(planned_steps(&c, &plans, true), native + 2);
        let work = planned_work(&c, &plans, true);
        let b = Boots::of(&work);
        assert_eq!((b.labs, b.lab_guests), (2, 3));
        assert!(work.contains(&Work::XenLab { n: 2, cpu_rounds: plans[1].workloads.cpu_rounds }));
        // On a Xen host the same campaign runs xen's whole suite.
        assert_eq!(planned_steps(&c, &plans, false), native + 3 * modes + 8 + 2 + 1);
    }
}
