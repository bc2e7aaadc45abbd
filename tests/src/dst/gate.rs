//! Killing the scheduler at an arbitrary point of a pass, in process.
//!
//! Every effect the engine causes passes through a [`CrashGate`] tick: each journal write, each
//! market call that changes something (before it, and for a purchase and an attempt start also
//! after it, when the effect happened but the answer is lost), each runner call. When the gate
//! is armed with `n`, the `n`-th tick "kills the process": that effect and everything after it
//! in the pass is refused without happening, exactly as if the process had died there. The
//! driver then drops the engine and builds a new one from the journal, as a restart does.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct CrashGate {
    countdown: AtomicI64,
    crashed: AtomicBool,
    ticks: AtomicU64,
}

impl CrashGate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Die at the `n`-th effect from now (`n >= 1`).
    pub fn arm(&self, n: i64) {
        self.countdown.store(n.max(1), Ordering::SeqCst);
    }

    pub fn disarm(&self) {
        self.countdown.store(0, Ordering::SeqCst);
    }

    /// May the next effect happen? `false` once the process is dead.
    pub fn tick(&self) -> bool {
        if self.crashed() {
            return false;
        }
        self.ticks.fetch_add(1, Ordering::SeqCst);
        let c = self.countdown.load(Ordering::SeqCst);
        if c > 0 {
            self.countdown.store(c - 1, Ordering::SeqCst);
            if c == 1 {
                self.crashed.store(true, Ordering::SeqCst);
                return false;
            }
        }
        true
    }

    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// A new process: alive, disarmed.
    pub fn restart(&self) {
        self.crashed.store(false, Ordering::SeqCst);
        self.countdown.store(0, Ordering::SeqCst);
    }

    /// Effects ticked so far (for traces).
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::SeqCst)
    }
}
