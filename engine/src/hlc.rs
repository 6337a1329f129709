//! A hybrid logical clock per shard, with an injected time source.
//!
//! A timestamp is `physical_micros << 12 | logical`: it never goes backwards, follows the wall
//! clock when the clock moves forward, and counts within a microsecond (or while the wall clock
//! stands still or steps back). [`Hlc::observe`] folds in a timestamp from another node.

use std::cell::Cell;
use std::sync::Arc;

/// Bits of a timestamp that count events within one physical microsecond.
pub const HLC_LOGICAL_BITS: u32 = 12;

/// A source of wall-clock time, injected so tests control it.
pub trait TimeSource: Send + Sync + 'static {
    /// Microseconds since the Unix epoch.
    fn now_micros(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemTime;

impl TimeSource for SystemTime {
    fn now_micros(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_micros() as u64)
    }
}

/// A hybrid logical clock (one per shard; not shared between threads).
pub struct Hlc {
    source: Arc<dyn TimeSource>,
    last: Cell<u64>,
}

impl Hlc {
    /// A clock over `source`.
    pub fn new(source: Arc<dyn TimeSource>) -> Self {
        Self {
            source,
            last: Cell::new(0),
        }
    }

    /// The next timestamp: greater than every one issued or observed before.
    pub fn now(&self) -> u64 {
        let physical = self.source.now_micros() << HLC_LOGICAL_BITS;
        let next = physical.max(self.last.get() + 1);
        self.last.set(next);
        next
    }

    /// Folds in a timestamp seen elsewhere (a replicated record, a peer message).
    pub fn observe(&self, timestamp: u64) {
        if timestamp > self.last.get() {
            self.last.set(timestamp);
        }
    }

    /// Splits a timestamp into (physical micros, logical count).
    pub fn split(timestamp: u64) -> (u64, u64) {
        (
            timestamp >> HLC_LOGICAL_BITS,
            timestamp & ((1 << HLC_LOGICAL_BITS) - 1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Manual(AtomicU64);
    impl TimeSource for Manual {
        fn now_micros(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn monotonic_when_the_clock_stands_still_or_steps_back() {
        let source = Arc::new(Manual(AtomicU64::new(1_000)));
        let hlc = Hlc::new(source.clone());
        let a = hlc.now();
        let b = hlc.now();
        assert!(b > a);
        assert_eq!(Hlc::split(b), (1_000, 1));
        source.0.store(10, Ordering::SeqCst);
        let c = hlc.now();
        assert!(c > b);
        source.0.store(5_000, Ordering::SeqCst);
        let d = hlc.now();
        assert_eq!(Hlc::split(d), (5_000, 0));
        hlc.observe(d + 100);
        assert!(hlc.now() > d + 100);
    }
}
