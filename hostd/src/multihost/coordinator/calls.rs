//! Calls to the guests of a fleet held across hosts (`hostd exec`, `hostd cp`, a fleet
//! file's `commands`): each goes to the worker holding the guest as a
//! [`ToWorker::Guest`] with an id, and its answer comes back on the worker's link, read by
//! whoever watches it ([`super::Held::watch`], a teardown) and routed here by id. The worker
//! is untrusted: an answer must fit its call ([`GuestCall::check_reply`]), an answer to an
//! id it was never sent loses the host, and a call is given up after its wait and a margin
//! whatever the worker does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vb_protocol::msg::ReplyBody;

use super::super::link::Sender;
use super::super::proto::{self, GuestCall, ToWorker};

/// Beyond the guest's own wait, how long a worker has to pass its reply on (its queue,
/// the link: a host slow enough to need more is in trouble anyway).
pub const ANSWER_MARGIN: Duration = Duration::from_secs(15);

/// A worker's answer: its guest's reply, or why there is none (in the worker's words).
type Answer = Result<ReplyBody, String>;

#[derive(Default)]
struct Calls {
    /// The next call's id (ids below it were issued).
    next: u64,
    waiting: HashMap<u64, tokio::sync::oneshot::Sender<Answer>>,
    /// Why the host is lost, once it is: every waiting and later call fails with it.
    lost: Option<String>,
}

/// Calls to the guests of one host, through its worker's link.
#[derive(Clone)]
pub struct HostCaller {
    host: String,
    link: Sender,
    calls: Arc<Mutex<Calls>>,
    /// [`ANSWER_MARGIN`] (shorter in tests).
    margin: Duration,
}

impl HostCaller {
    pub fn new(host: String, link: Sender) -> Self {
        HostCaller { host, link, calls: Arc::default(), margin: ANSWER_MARGIN }
    }

    /// The host's name.
    pub fn host(&self) -> &str {
        &self.host
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        // A panic while holding it leaves nothing half-done (each use is one map
        // operation), so a poisoned lock is still usable.
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks guest `guest` (global index) `call` through the worker, waiting for the
    /// guest `wait` and the worker [`ANSWER_MARGIN`] more; the guest's reply, checked
    /// against the call, or an error naming the host.
    pub async fn call(
        &self,
        guest: usize,
        call: GuestCall,
        wait: Duration,
    ) -> Result<ReplyBody, String> {
        let host = &self.host;
        call.check()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let id = {
            let mut c = self.calls();
            if let Some(l) = &c.lost {
                return Err(format!("host {host} is lost: {l}"));
            }
            let id = c.next;
            c.next += 1;
            c.waiting.insert(id, tx);
            id
        };
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let sent = self.link.send(&ToWorker::Guest { id, guest, wait_ms, call: call.clone() });
        if let Err(e) = sent {
            self.calls().waiting.remove(&id);
            return Err(format!("host {host}: its link: {e}"));
        }
        let within = wait.min(Duration::from_millis(proto::MAX_CALL_WAIT_MS)) + self.margin;
        match tokio::time::timeout(within, rx).await {
            Err(_) => {
                self.calls().waiting.remove(&id);
                Err(format!("host {host}: its worker did not answer within {} s", within.as_secs()))
            }
            // Dropped unanswered: the host was lost meanwhile.
            Ok(Err(_)) => {
                let why = self.calls().lost.clone().unwrap_or_else(|| "its link closed".into());
                Err(format!("host {host} is lost: {why}"))
            }
            Ok(Ok(Err(e))) => Err(format!("host {host}: {e}")),
            Ok(Ok(Ok(reply))) => {
                call.check_reply(&reply).map_err(|e| format!("host {host}: a bad answer: {e}"))?;
                Ok(reply)
            }
        }
    }

    /// Routes a worker's answer to its call. A late answer (its call gave up) is dropped;
    /// an answer to an id never issued is an error (the worker makes answers up), and so is
    /// a malformed error text (it goes to the call as such, too).
    pub fn answer(&self, id: u64, a: Answer) -> Result<(), String> {
        let mut c = self.calls();
        if id >= c.next {
            return Err(format!("answered call {id}, which it was never sent"));
        }
        let a = match a {
            Err(e) => match proto::check_guest_error(&e) {
                Ok(()) => Err(e),
                Err(bad) => {
                    if let Some(tx) = c.waiting.remove(&id) {
                        let _ = tx.send(Err(format!("a malformed error: {bad}")));
                    }
                    return Err(format!("answered call {id} with a malformed error: {bad}"));
                }
            },
            ok => ok,
        };
        if let Some(tx) = c.waiting.remove(&id) {
            let _ = tx.send(a);
        }
        Ok(())
    }

    /// The host is lost (or its fleet going down): every waiting call and every later one
    /// fails, saying why.
    pub fn lose(&self, why: &str) {
        let mut c = self.calls();
        c.lost = Some(why.to_string());
        c.waiting.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multihost::link::Link;
    use crate::multihost::proto::{FromWorker, ToWorker};
    use vb_protocol::msg::{ExecRequest, ExecResult};

    fn exec() -> GuestCall {
        GuestCall::Exec(ExecRequest {
            argv: vec!["hostname".into()],
            env: vec![],
            cwd: None,
            timeout_ms: 10,
            output_max: 64,
        })
    }

    fn exited(stdout: &str) -> ReplyBody {
        ReplyBody::Exited(ExecResult {
            status: Some(0),
            signal: None,
            timed_out: false,
            stdout: stdout.into(),
            stderr: String::new(),
            truncated: false,
            duration_ns: 5,
        })
    }

    /// A caller over a loopback link, and the worker's end of it.
    fn caller() -> (HostCaller, Link<ToWorker>, Link<FromWorker>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let w = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let c = l.accept().unwrap().0;
        let bound = Duration::from_secs(30);
        let coord = Link::<FromWorker>::new::<ToWorker>(c, bound).unwrap();
        let worker = Link::<ToWorker>::new::<FromWorker>(w, bound).unwrap();
        (HostCaller::new("n2".into(), coord.sender()), worker, coord)
    }

    /// The next call the worker's end got: (id, guest).
    async fn next_call(w: &mut Link<ToWorker>) -> (u64, usize) {
        match w.recv().await.unwrap() {
            ToWorker::Guest { id, guest, .. } => (id, guest),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn answers_reach_their_calls_and_bad_ones_name_the_host() {
        let (c, mut w, _coord) = caller();
        let (c1, c2) = (c.clone(), c.clone());
        let a = tokio::spawn(async move { c1.call(4, exec(), Duration::from_secs(5)).await });
        let b = tokio::spawn(async move { c2.call(5, exec(), Duration::from_secs(5)).await });
        let (i, gi) = next_call(&mut w).await;
        let (j, _) = next_call(&mut w).await;
        // Answered out of order; one with more output than the call allows.
        let (ok_id, bad_id) = if gi == 4 { (i, j) } else { (j, i) };
        c.answer(bad_id, Ok(exited(&"x".repeat(1000)))).unwrap();
        c.answer(ok_id, Ok(exited("g4\n"))).unwrap();
        assert_eq!(a.await.unwrap().unwrap(), exited("g4\n"));
        let e = b.await.unwrap().unwrap_err();
        assert!(e.starts_with("host n2: a bad answer: ") && e.contains("more output"), "{e}");
        // A late answer is dropped; one to an id never issued is the worker's fault.
        assert_eq!(c.answer(ok_id, Ok(exited(""))), Ok(()));
        assert!(c.answer(99, Ok(exited(""))).unwrap_err().contains("never sent"));
        // The worker's own error, then a malformed one.
        let c3 = c.clone();
        let d = tokio::spawn(async move { c3.call(4, exec(), Duration::from_secs(5)).await });
        let (id, _) = next_call(&mut w).await;
        c.answer(id, Err("exec got no reply within 40s".into())).unwrap();
        assert_eq!(d.await.unwrap().unwrap_err(), "host n2: exec got no reply within 40s");
        let c4 = c.clone();
        let d = tokio::spawn(async move { c4.call(4, exec(), Duration::from_secs(5)).await });
        let (id, _) = next_call(&mut w).await;
        assert!(c.answer(id, Err("a\u{1b}[2Jb".into())).is_err());
        assert!(d.await.unwrap().unwrap_err().contains("malformed error"));
    }

    #[tokio::test]
    async fn a_lost_host_fails_its_waiting_and_later_calls() {
        let (c, mut w, _coord) = caller();
        let c1 = c.clone();
        let a = tokio::spawn(async move { c1.call(1, exec(), Duration::from_secs(60)).await });
        next_call(&mut w).await;
        c.lose("its link dropped while its fleet was up: connection closed");
        let e = a.await.unwrap().unwrap_err();
        assert_eq!(
            e,
            "host n2 is lost: its link dropped while its fleet was up: connection closed"
        );
        let e = c.call(1, exec(), Duration::from_secs(60)).await.unwrap_err();
        assert!(e.starts_with("host n2 is lost: "), "{e}");
    }

    #[tokio::test]
    async fn a_worker_that_never_answers_is_given_up_on() {
        let (mut c, _w, _coord) = caller();
        c.margin = Duration::from_secs(1);
        let e = c.call(1, exec(), Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(e, "host n2: its worker did not answer within 2 s");
        assert!(c.calls().waiting.is_empty());
    }
}
