//! One suite step's runs (overhead, linearity, isolation): each run timed the same way, its
//! answers turned into samples marked the same way, whatever the step's jobs.

use std::time::{Duration, Instant};

use vb_protocol::bench::{BenchRequest, Resource};

use super::{
    before_reads, mark_paired, mark_reads, paired_read, run_together, samples_of, BenchSample,
    PairedRead, Starter, Test, Timed, Workloads,
};
use crate::datadisk::ReadPrep;
use crate::fleet::Fleet;
use crate::guest::RunningGuest;
use crate::netlab::NetPath;

/// A suite step of `test` on one fleet and resource: what all its runs share.
pub struct Step<'a> {
    fleet: &'a Fleet,
    test: Test,
    resource: Resource,
    w: &'a Workloads,
    timeout: Duration,
    starter: Starter,
    net: Option<(NetPath, Option<u32>)>,
}

/// One run of a step: each job's answer, and the reads its disk samples are marked with.
pub struct StepRun {
    /// Each job's answer, in the jobs' order.
    pub answers: Vec<Result<Timed, String>>,
    preps: Option<Vec<ReadPrep>>,
    before: Option<PairedRead>,
    after: Option<PairedRead>,
    sent: Instant,
}

impl StepRun {
    /// Whether the run's disk reads were paired with native reads of the reference copy.
    pub fn paired(&self) -> bool {
        self.before.is_some()
    }
}

impl<'a> Step<'a> {
    /// A step of `test` measuring `resource` on `fleet`, each run given `timeout`.
    pub fn new(
        fleet: &'a Fleet,
        test: Test,
        resource: Resource,
        w: &'a Workloads,
        timeout: Duration,
    ) -> Self {
        let net = fleet.net_label();
        Step { fleet, test, resource, w, timeout, starter: Starter::default(), net }
    }

    /// Runs `jobs` at once: the `readers`' data disk copies evicted and measured first
    /// ([`before_reads`]), then the run bracketed by native reads of the reference copy
    /// right before and right after it ([`paired_read`], [`mark_paired`]'s why).
    pub async fn run(
        &mut self,
        jobs: &[(&RunningGuest, BenchRequest)],
        readers: &[&RunningGuest],
    ) -> Result<StepRun, String> {
        let (fleet, resource) = (self.fleet, self.resource);
        let preps = before_reads(fleet.backend, resource, readers)?;
        let before = paired_read(fleet, resource, self.w)?;
        let sent = Instant::now();
        let answers = run_together(jobs, self.timeout, &mut self.starter).await;
        let after = paired_read(fleet, resource, self.w)?;
        Ok(StepRun { answers, preps, before, after, sent })
    }

    /// The samples of `timed`, guest `guest`'s answer in `run`, counted repetition `rep` with
    /// `n` guests measured: marked with the run's cache policy, residency and paired reads.
    pub fn samples(
        &self,
        run: &StepRun,
        n: usize,
        rep: u32,
        guest: usize,
        timed: &Timed,
    ) -> Vec<BenchSample> {
        let params = self.w.params(self.resource);
        let backend = self.fleet.backend;
        let (test, resource) = (self.test, self.resource);
        let mut s = samples_of(backend, test, resource, &params, n, rep, guest, timed, self.net);
        mark_reads(&mut s, run.preps.as_deref());
        mark_paired(&mut s, run.before.as_ref(), run.after.as_ref(), run.sent);
        s
    }
}
