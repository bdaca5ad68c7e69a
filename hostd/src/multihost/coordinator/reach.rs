//! The reach check across hosts (`--reach`): every live host's guests serve, then every
//! host's ready guests exchange data with a guest of each other host. Also the time a worker
//! is given to have its guests serve, which the ring's serve shares.

use std::time::Duration;

use super::super::plan;
use super::super::proto::{self, FromWorker, ToWorker};
use super::{ask_within, brief, Worker, REPLY_WITHIN};

/// Time a worker is given to have `guests` guests serve (one agent request each, a few
/// hundred at once).
pub(super) fn serve_within(guests: usize) -> Duration {
    REPLY_WITHIN + SERVE_PER_GUEST * guests as u32
}

/// Time a worker is given for `pairs` exchanges, one after another, and the failures after
/// which it gives up, each a connect timeout and a retry ([`crate::reach::worst_failures`]).
fn reach_within(pairs: usize) -> Duration {
    REPLY_WITHIN + REACH_PER_PAIR * pairs as u32 + crate::reach::worst_failures()
}

/// Per guest of a serve request: at 5000 guests a host took longer than [`REPLY_WITHIN`].
const SERVE_PER_GUEST: Duration = Duration::from_millis(20);
/// Per exchange of the reach check (setns, connect, 64 KiB each way; a few ms each here,
/// with room for a loaded host): 5000 took longer than [`REPLY_WITHIN`].
const REACH_PER_PAIR: Duration = Duration::from_millis(100);

/// The reach check across hosts: every host's guests serve, then every host's ready guests
/// exchange data with a guest of each other host ([`plan::reach_pairs`]). A worker that
/// fails to answer, or answers wrongly, is lost.
pub(super) async fn reach(ws: &mut [Worker]) {
    futures::future::join_all(ws.iter_mut().filter(|w| w.rec.lost.is_none()).map(|w| async move {
        match ask_within(w, &ToWorker::Serve, serve_within(w.rec.count)).await {
            Ok(FromWorker::Serving { failed }) if failed.len() <= w.rec.count => {
                w.rec.serve_failed =
                    failed.iter().map(|f| f.chars().take(proto::MAX_TEXT).collect()).collect();
            }
            Ok(other) => w.set_lost(format!("answered the serve request with {}", brief(&other))),
            Err(e) => w.set_lost(format!("serving the reach check: {e:#}")),
        }
    }))
    .await;
    // Each live host's ready guests; each reaches the one at its own place on every other.
    let ready: Vec<Vec<usize>> = ws
        .iter()
        .map(|w| match (&w.rec.lost, &w.rec.booted) {
            (None, Some(b)) => {
                let mut r: Vec<usize> = b.ready.iter().map(|g| g.index).collect();
                r.sort_unstable();
                r
            }
            _ => Vec::new(),
        })
        .collect();
    let pairs = plan::reach_pairs(&ready);
    futures::future::join_all(ws.iter_mut().zip(pairs).filter(|(w, _)| w.rec.lost.is_none()).map(
        |(w, pairs)| async move {
            let most = pairs.len();
            match ask_within(w, &ToWorker::Reach { pairs }, reach_within(most)).await {
                Ok(FromWorker::Reached(r)) => match r.validate(most) {
                    Ok(()) => w.rec.reach = Some(r),
                    Err(e) => w.set_lost(format!("bad reach report: {e}")),
                },
                Ok(other) => {
                    w.set_lost(format!("answered the reach request with {}", brief(&other)))
                }
                Err(e) => w.set_lost(format!("the reach check: {e:#}")),
            }
        },
    ))
    .await;
}
