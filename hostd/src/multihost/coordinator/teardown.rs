//! The end of a run on every host: the fleet held up for a while with each worker's link
//! watched, then torn down, each worker saying what it left behind.

use std::time::Duration;

use anyhow::{bail, Result};
use tokio::time::timeout;

use super::super::proto::{self, FromWorker, ToWorker, TornDown};
use super::{brief, Worker, REPLY_WITHIN};

/// Time a worker is given to tear `guests` guests down: they stop together, then each one's
/// cgroups (three on a hybrid host), link and files are released; at 5000 a host, 160 s
/// was not enough.
pub(super) fn teardown_within(guests: usize) -> Duration {
    REPLY_WITHIN + TEARDOWN_PER_GUEST * guests as u32
}

/// Per guest of a teardown: cgroup v1 directories are removed one after another, tens of
/// ms each on this machine.
const TEARDOWN_PER_GUEST: Duration = Duration::from_millis(100);

/// Watches a worker's link for `d` while its fleet is up: it should say nothing; a dropped
/// link (the worker or its host died) or any message loses its guests.
pub(super) async fn hold(w: &mut Worker, d: Duration) {
    if w.rec.lost.is_some() {
        return;
    }
    match timeout(d, w.link.recv()).await {
        Err(_) => {}
        Ok(m) => super::held::lose(w, m),
    }
}

async fn tear_down(w: &mut Worker) -> Result<TornDown> {
    w.link.send(&ToWorker::Teardown)?;
    // Guests stop together, but each is released (cgroup, veth, files) in turn.
    let within = teardown_within(w.rec.count);
    let until = tokio::time::Instant::now() + within;
    let m = loop {
        let m = tokio::time::timeout_at(until, w.link.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no teardown report within {within:?}"))??;
        // Answers of calls to its guests still under way may come first.
        match m {
            FromWorker::GuestReply { id, reply } => w.caller.answer(id, Ok(reply)),
            FromWorker::GuestError { id, error } => w.caller.answer(id, Err(error)),
            m => break m,
        }
        .map_err(|e| anyhow::anyhow!("{e} before its teardown report"))?;
    };
    match m {
        FromWorker::TornDown(t) => {
            t.validate(w.rec.count).map_err(|e| anyhow::anyhow!("bad teardown report: {e}"))?;
            Ok(t)
        }
        other => bail!("sent {} instead of its teardown report", brief(&other)),
    }
}

/// Tears a live worker's fleet down, saying what it left behind or why it could not.
pub(super) async fn tear_down_reporting(w: &mut Worker) {
    if w.rec.lost.is_some() {
        return;
    }
    match tear_down(w).await {
        Ok(t) => {
            for l in &t.leftovers {
                eprintln!("hostd: host {}: left after teardown: {l}", w.name());
            }
            w.rec.teardown = Some(t);
        }
        Err(e) => {
            eprintln!("hostd: host {}: teardown: {e:#}", w.name());
            w.rec.teardown_error = Some(format!("{e:#}").chars().take(proto::MAX_TEXT).collect());
        }
    }
}
