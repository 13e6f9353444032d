//! CLIENT PAUSE: the node holds its clients' commands (all of them, or
//! those that write) until a time or a CLIENT UNPAUSE, as Redis does for a
//! failover or a maintenance window. A held command runs, in its place in
//! its client's pipeline, once the pause ends; the replies before it go out
//! meanwhile. Only this node's clients wait: writes from its peers still
//! arrive and apply (every node is a master), and expiry and eviction go
//! on (docs/compatibility.md).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// What a pause holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PauseMode {
    /// Commands that write or replicate (Redis's `may-replicate`).
    Write,
    /// Every command, CLIENT UNPAUSE included (as Redis).
    All,
}

#[derive(Default)]
pub struct ClientPause {
    /// Whether a pause may be on: the one load a command pays otherwise.
    on: AtomicBool,
    state: Mutex<Option<(Instant, PauseMode)>>,
    ended: Notify,
}

impl ClientPause {
    /// Pauses for `for_ms` in `mode`. A pause already on keeps the later end
    /// and the wider mode, as Redis.
    pub fn pause(&self, for_ms: u64, mode: PauseMode) {
        let until = Instant::now() + Duration::from_millis(for_ms);
        let mut state = self.state.lock();
        let next = match *state {
            Some((end, was)) if end > Instant::now() => (end.max(until), was.max(mode)),
            _ => (until, mode),
        };
        *state = Some(next);
        self.on.store(true, Ordering::Release);
    }

    pub fn unpause(&self) {
        let mut state = self.state.lock();
        *state = None;
        // Under the lock: a pause() between the two would stay unenforced.
        self.on.store(false, Ordering::Release);
        drop(state);
        self.ended.notify_waiters();
    }

    /// Whether a command waits now; `writes` tells whether it writes (asked
    /// only while a pause is on).
    #[inline]
    pub fn holds(&self, writes: impl FnOnce() -> bool) -> bool {
        if !self.on.load(Ordering::Acquire) {
            return false;
        }
        let mut state = self.state.lock();
        match *state {
            Some((end, mode)) if end > Instant::now() => mode == PauseMode::All || writes(),
            Some(_) => {
                *state = None;
                self.on.store(false, Ordering::Release);
                false
            }
            None => false,
        }
    }

    /// Until no pause is on.
    pub async fn ended(&self) {
        loop {
            let notified = self.ended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let end = match *self.state.lock() {
                Some((end, _)) if end > Instant::now() => end,
                _ => return,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(end.into()) => {}
                _ = notified => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_pause_holds_writes_and_an_all_pause_everything_until_it_ends() {
        let p = ClientPause::default();
        assert!(!p.holds(|| true));
        p.pause(60_000, PauseMode::Write);
        assert!(p.holds(|| true));
        assert!(!p.holds(|| false));
        // A shorter ALL widens the mode and keeps the later end.
        p.pause(10, PauseMode::All);
        assert!(p.holds(|| false));
        std::thread::sleep(Duration::from_millis(20));
        assert!(p.holds(|| false), "the first pause's end stands");
        p.unpause();
        assert!(!p.holds(|| true));
        p.pause(0, PauseMode::All);
        assert!(!p.holds(|| true), "a pause of 0 ms is over at once");
    }

    #[tokio::test]
    async fn waiters_go_on_at_the_end_or_the_unpause() {
        let p = std::sync::Arc::new(ClientPause::default());
        p.pause(30, PauseMode::All);
        let started = Instant::now();
        p.ended().await;
        assert!(started.elapsed() >= Duration::from_millis(25));
        p.pause(60_000, PauseMode::Write);
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.ended().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        p.unpause();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the unpause")
            .unwrap();
    }
}
