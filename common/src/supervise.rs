//! Supervision of a daemon's long-lived tasks (the scheduler's dispatcher, leadership
//! watch, router, servers; the agent's session, router, certificate renewal), and of
//! the short-lived ones it starts by the hundred (a deploy: [`spawn_fatal_on_panic`]).
//!
//! Each runs through [`Supervised::spawn`], which awaits its `JoinHandle`. A task that
//! panics, fails (returns `Err`), or returns on its own before the daemon was asked to
//! stop takes the whole process down: one `error` line naming the task and the cause,
//! then [`std::process::exit`] with [`EXIT_TASK_FAILED`]. The service manager restarts
//! the process (the packaged systemd units say `Restart=always`). A member whose
//! dispatcher died must not keep its raft leadership (placement would stop cluster-wide
//! while `/healthz` says ok); exiting hands leadership to a member that works. This
//! does not depend on `panic = "abort"`: debug builds and tests behave the same.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinSet;

/// Exit code of a process whose supervised task died (`EX_SOFTWARE`).
pub const EXIT_TASK_FAILED: i32 = 70;

/// Tasks that must run as long as the daemon does. Dropping it aborts them.
pub struct Supervised {
    set: JoinSet<()>,
    stopping: watch::Receiver<bool>,
}

/// Aborts the task it holds when dropped (so aborting a supervisor aborts its task).
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), String>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Supervised {
    /// Supervises tasks that may end once `stopping` says `true` (the daemon's shutdown).
    pub fn new(stopping: watch::Receiver<bool>) -> Self {
        Self { set: JoinSet::new(), stopping }
    }

    /// Runs `task`, named `name` in the exit line, under supervision.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let stopping = self.stopping.clone();
        let mut handle = AbortOnDrop(tokio::spawn(task));
        self.set.spawn(async move {
            let joined = (&mut handle.0).await;
            let stopping = *stopping.borrow();
            if let Some(cause) = failure(joined, stopping) {
                exit_for(name, &cause);
            }
        });
    }

    /// Waits until every task has ended (after the stop signal).
    pub async fn drain(&mut self) {
        while self.set.join_next().await.is_some() {}
    }

    /// Aborts whatever still runs.
    pub fn abort_all(&mut self) {
        self.set.abort_all();
    }
}

/// Runs a short-lived task the daemon starts many of (one app's deploy, one grant
/// renewal) and returns its abort handle. Its panic is as fatal as a long-lived task's
/// (the member's view of what it did to Swarm is then unknown: exiting hands the work to
/// a member that works); its return or cancellation is not.
pub fn spawn_fatal_on_panic<F>(name: &'static str, task: F) -> tokio::task::AbortHandle
where
    F: Future<Output = ()> + Send + 'static,
{
    let handle = tokio::spawn(task);
    let abort = handle.abort_handle();
    tokio::spawn(async move {
        if let Some(cause) = panicked(handle.await) {
            exit_for(name, &cause);
        }
    });
    abort
}

/// Why a short-lived task's end is fatal: only a panic.
fn panicked(joined: Result<(), tokio::task::JoinError>) -> Option<String> {
    match joined {
        Err(err) if err.is_panic() => Some(format!("it panicked: {}", panic_message(err.into_panic()))),
        Ok(()) | Err(_) => None,
    }
}

/// Why a task's end is fatal, or None when it is not: a panic always is; an error or a
/// return only before the stop signal; a cancellation (the daemon aborting it) never.
fn failure(joined: Result<Result<(), String>, tokio::task::JoinError>, stopping: bool) -> Option<String> {
    match joined {
        Ok(Ok(())) if stopping => None,
        Ok(Ok(())) => Some("it returned while the daemon was still running".into()),
        Ok(Err(err)) if stopping => {
            tracing::warn!(%err, "a task failed while the daemon stops");
            None
        }
        Ok(Err(err)) => Some(err),
        Err(err) if err.is_panic() => Some(format!("it panicked: {}", panic_message(err.into_panic()))),
        Err(_) => None,
    }
}

/// The text a panic carried (`panic!("…")` gives a `&str` or a `String`).
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_string(),
            Err(_) => "(no message)".into(),
        },
    }
}

/// Logs the one line an operator needs and ends the process.
fn exit_for(task: &str, cause: &str) -> ! {
    tracing::error!(
        task,
        cause,
        exit_code = EXIT_TASK_FAILED,
        "supervised task {task} died: exiting so the service manager restarts this process"
    );
    // The line is what the operator greps for: make sure it reaches stderr even when the
    // subscriber is not installed (tests embedding a daemon).
    eprintln!("slipway: supervised task {task} died ({cause}); exiting with code {EXIT_TASK_FAILED}");
    std::process::exit(EXIT_TASK_FAILED)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn join(
        task: impl Future<Output = Result<(), String>> + Send + 'static,
    ) -> Result<Result<(), String>, tokio::task::JoinError> {
        tokio::spawn(task).await
    }

    #[tokio::test]
    async fn a_panic_is_fatal_and_names_its_message() {
        let joined = join(async { panic!("dispatcher exploded") }).await;
        assert_eq!(failure(joined, false).as_deref(), Some("it panicked: dispatcher exploded"));
        let joined = join(async { panic!("{} {}", "formatted", 7) }).await;
        assert_eq!(failure(joined, true).as_deref(), Some("it panicked: formatted 7"));
    }

    #[tokio::test]
    async fn an_error_or_a_return_is_fatal_only_before_the_stop_signal() {
        assert_eq!(failure(Ok(Err("raft stopped".into())), false).as_deref(), Some("raft stopped"));
        assert_eq!(failure(Ok(Err("raft stopped".into())), true), None);
        assert!(failure(Ok(Ok(())), false).is_some_and(|c| c.contains("returned")));
        assert_eq!(failure(Ok(Ok(())), true), None);
    }

    #[tokio::test]
    async fn a_cancelled_task_is_not_a_failure() {
        let handle = tokio::spawn(std::future::pending::<Result<(), String>>());
        handle.abort();
        assert_eq!(failure(handle.await, false), None);
    }

    #[tokio::test]
    async fn a_short_lived_task_is_fatal_only_when_it_panics() {
        let panicking = tokio::spawn(async { panic!("deploy exploded") });
        assert_eq!(panicked(panicking.await).as_deref(), Some("it panicked: deploy exploded"));
        assert_eq!(panicked(tokio::spawn(async {}).await), None);
        let cancelled = tokio::spawn(std::future::pending::<()>());
        cancelled.abort();
        assert_eq!(panicked(cancelled.await), None);
    }

    #[tokio::test]
    async fn tasks_that_end_after_the_stop_signal_drain() {
        let (stop, stopping) = watch::channel(false);
        let mut supervised = Supervised::new(stopping);
        let mut rx = stop.subscribe();
        supervised.spawn("waits", async move {
            let _ = rx.changed().await;
            Ok(())
        });
        stop.send(true).expect("send");
        tokio::time::timeout(std::time::Duration::from_secs(5), supervised.drain()).await.expect("drained");
    }
}
