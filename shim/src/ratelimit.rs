//! Rate limits for what a guest can cause at will: events it reports and warnings about
//! them. Pure logic with the time passed in, so tests need no clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most one pass per key per `interval`: "at most one OOM event per container per
/// second". Keys are kept only while they may still block a pass, so the map stays as small
/// as the set of keys seen within one interval.
#[derive(Debug)]
pub struct PerKeyInterval {
    interval: Duration,
    last: HashMap<String, Instant>,
}

impl PerKeyInterval {
    /// A limiter letting one pass per key per `interval`.
    pub fn new(interval: Duration) -> Self {
        PerKeyInterval {
            interval,
            last: HashMap::new(),
        }
    }

    /// Whether `key` may pass at `now`; records the pass if so.
    pub fn allow(&mut self, key: &str, now: Instant) -> bool {
        let interval = self.interval;
        self.last
            .retain(|_, t| now.saturating_duration_since(*t) < interval);
        if self.last.contains_key(key) {
            return false;
        }
        self.last.insert(key.to_string(), now);
        true
    }
}

/// Counts suppressed occurrences and says when one should be reported: the first, then at
/// most one per `interval`, each carrying how many were suppressed since the last report.
#[derive(Debug)]
pub struct Throttled {
    interval: Duration,
    last_report: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    /// Reports at most once per `interval`.
    pub fn new(interval: Duration) -> Self {
        Throttled {
            interval,
            last_report: None,
            suppressed: 0,
        }
    }

    /// Records one occurrence at `now`; `Some(n)` when it should be reported, `n` being the
    /// occurrences since the last report, this one included.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.suppressed += 1;
        let due = self
            .last_report
            .is_none_or(|t| now.saturating_duration_since(t) >= self.interval);
        if !due {
            return None;
        }
        self.last_report = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_per_key_per_interval() {
        let t0 = Instant::now();
        let mut l = PerKeyInterval::new(Duration::from_secs(1));
        assert!(l.allow("a", t0));
        assert!(!l.allow("a", t0 + Duration::from_millis(999)));
        assert!(l.allow("b", t0 + Duration::from_millis(10)), "keys apart");
        assert!(l.allow("a", t0 + Duration::from_secs(1)));
        // Old keys are forgotten: the map does not grow with keys seen long ago.
        assert!(l.allow("c", t0 + Duration::from_secs(5)));
        assert_eq!(l.last.len(), 1);
    }

    #[test]
    fn throttled_reports_first_then_once_per_interval_with_counts() {
        let t0 = Instant::now();
        let mut w = Throttled::new(Duration::from_secs(10));
        assert_eq!(w.hit(t0), Some(1));
        for i in 1..=9_999 {
            assert_eq!(w.hit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(w.hit(t0 + Duration::from_secs(10)), Some(10_000));
        assert_eq!(w.hit(t0 + Duration::from_secs(11)), None);
    }
}
