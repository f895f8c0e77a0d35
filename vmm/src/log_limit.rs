//! A rate limit for log lines that a guest can trigger.
//!
//! The guest is hostile (design §9): if every malformed descriptor or packet it sends wrote a
//! warning, it could fill the host's logs (the shim forwards ours to containerd) at the speed
//! of its vCPUs. Each call site of [`guest_warn!`](crate::guest_warn) (or [`guest_log!`](crate::guest_log)) therefore owns a small
//! token bucket: at most [`LINES_PER_SEC`] lines per second, after which lines are only
//! counted; the next line let through is preceded by one "N more suppressed" line, so nothing
//! is hidden without a trace. The counts of what the guest did wrong live in the metrics
//! (`guest_errors`), which are exact; the log only has to show that it happens.

use std::time::{Duration, Instant};

/// Lines each call site may write per second.
pub const LINES_PER_SEC: u32 = 10;

/// How often the bucket is refilled.
const WINDOW: Duration = Duration::from_secs(1);

/// A token bucket refilled to `per_window` tokens once per second.
///
/// The clock is passed in to [`admit`](Self::admit), so tests drive it without sleeping.
#[derive(Debug)]
pub struct LogLimiter {
    per_window: u32,
    tokens: u32,
    /// Start of the current window; `None` until the first line, so that `new` is `const`
    /// (a call site's limiter is a `static`).
    window_start: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter letting `per_window` lines through per second.
    pub const fn new(per_window: u32) -> Self {
        Self {
            per_window,
            tokens: per_window,
            window_start: None,
            suppressed: 0,
        }
    }

    /// Whether a line may be written at `now`: `Some(n)` if so, where `n` lines were
    /// suppressed since the last one written (report them first); `None` if this line is to
    /// be suppressed (it is counted).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let start = *self.window_start.get_or_insert(now);
        // A clock that went backwards (it cannot with `Instant`, but the caller supplies it)
        // starts no new window.
        if now.saturating_duration_since(start) >= WINDOW {
            self.window_start = Some(now);
            self.tokens = self.per_window;
        }
        if self.tokens == 0 {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.tokens -= 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// A `tracing` event at level `$lvl` (`ERROR`, `WARN`, `INFO`, `DEBUG`, `TRACE`) for something a
/// guest can trigger, rate-limited per call site by a [`LogLimiter`]: at most
/// [`LINES_PER_SEC`] lines a second, then one "N more suppressed" line before the next one
/// written. A disabled level costs no tokens. Prefer [`guest_warn!`](crate::guest_warn) and
/// [`guest_debug!`](crate::guest_debug).
#[macro_export]
macro_rules! guest_log {
    ($lvl:ident, $($arg:tt)+) => {{
        static LIMIT: ::std::sync::Mutex<$crate::log_limit::LogLimiter> = ::std::sync::Mutex::new(
            $crate::log_limit::LogLimiter::new($crate::log_limit::LINES_PER_SEC),
        );
        if ::tracing::enabled!(::tracing::Level::$lvl) {
            let admitted = {
                use ::husk_lock::MutexExt as _;
                LIMIT.locked().admit(::std::time::Instant::now())
            };
            if let Some(n) = admitted {
                if n > 0 {
                    ::tracing::event!(
                        ::tracing::Level::$lvl,
                        "{n} more guest-triggered lines like the next suppressed"
                    );
                }
                ::tracing::event!(::tracing::Level::$lvl, $($arg)+);
            }
        }
    }};
}

/// A rate-limited `tracing::warn!` for warnings a guest can trigger; see
/// [`guest_log!`](crate::guest_log).
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => { $crate::guest_log!(WARN, $($arg)+) };
}

/// A rate-limited `tracing::debug!` for per-packet or per-access events a guest can trigger;
/// see [`guest_log!`](crate::guest_log).
#[macro_export]
macro_rules! guest_debug {
    ($($arg:tt)+) => { $crate::guest_log!(DEBUG, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_n_lines_per_second_through_then_reports_the_suppressed() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(3);
        for _ in 0..3 {
            assert_eq!(l.admit(t0), Some(0));
        }
        // The rest of the first second is suppressed, however many there are.
        for i in 0..1000u32 {
            assert_eq!(l.admit(t0 + Duration::from_micros(u64::from(i))), None);
        }
        assert_eq!(l.admit(t0 + Duration::from_millis(999)), None);
        // A new window: the first line carries the count of the 1001 suppressed.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(l.admit(t1), Some(1001));
        assert_eq!(l.admit(t1), Some(0));
        assert_eq!(l.admit(t1), Some(0));
        assert_eq!(l.admit(t1), None);
        // A quiet period refills the bucket to its size, no more.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!(l.admit(t2), Some(1));
        assert_eq!(l.admit(t2), Some(0));
        assert_eq!(l.admit(t2), Some(0));
        assert_eq!(l.admit(t2), None);
    }

    #[test]
    fn a_clock_going_backwards_starts_no_window() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut l = LogLimiter::new(1);
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0 - Duration::from_secs(5)), None);
    }

    /// A writer that keeps what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            use husk_lock::MutexExt as _;
            self.0.locked().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_flood_through_the_macro_writes_only_the_allowed_lines() {
        use husk_lock::MutexExt as _;
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..10_000 {
                crate::guest_warn!("flood line {i}");
            }
        });
        let text = String::from_utf8(out.0.locked().clone()).unwrap();
        assert_eq!(
            text.matches("flood line").count(),
            LINES_PER_SEC as usize,
            "{text}"
        );
    }

    #[test]
    fn the_macros_compile_and_write_nothing_without_a_subscriber() {
        for i in 0..100 {
            crate::guest_warn!("test warning {i}");
            crate::guest_debug!("test debug line {i}");
            crate::guest_log!(ERROR, "test error line {}", i);
        }
    }
}
