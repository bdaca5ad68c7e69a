//! A helper program's child process that is reaped whatever happens to the future awaiting
//! it. tokio's `kill_on_drop` kills a dropped child but leaves its reaping to a process-wide
//! orphan queue that only a later SIGCHLD drains, and it can miss the SIGCHLD of a child that
//! dies before that queue's listener is registered: seen as a zombie runtime left by a launch
//! abandoned at its deadline (tests/faults.rs). A dropped [`Reaped`] kills its child and
//! awaits it on a task of the running runtime, which holds the child's own exit listener.

/// A spawned child, killed and reaped when dropped before it was waited for.
#[derive(Debug)]
pub struct Reaped(Option<tokio::process::Child>);

impl Reaped {
    /// Takes charge of `child`.
    pub fn new(child: tokio::process::Child) -> Self {
        Reaped(Some(child))
    }

    /// Its pid, until it has been waited for.
    pub fn id(&self) -> Option<u32> {
        self.0.as_ref().and_then(|c| c.id())
    }

    /// The child, to wait for or read from.
    pub fn child(&mut self) -> &mut tokio::process::Child {
        self.0.as_mut().expect("present until dropped")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else { return };
        // Exited and reaped already (a completed wait): nothing to do.
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = child.start_kill();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    let _ = child.wait().await;
                });
            }
            // No runtime to wait on: tokio's orphan queue (kill_on_drop) is all there is.
            Err(_) => drop(child),
        }
    }
}
