//! Restart delays: exponential, capped, reset after a stable run.

use std::time::Duration;

/// Restart backoff settings of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first restart (default 100 ms).
    pub initial: Duration,
    /// Upper bound of the delay (default 30 s).
    pub max: Duration,
    /// Factor applied after each restart (default 2).
    pub multiplier: u32,
    /// The delay goes back to `initial` once the service has been ready continuously
    /// for this long (default 10 s).
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2,
            reset_after: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        if self.initial.is_zero() || self.max < self.initial {
            return Err("backoff needs 0 < initial <= max");
        }
        if self.multiplier == 0 {
            return Err("backoff multiplier must be at least 1");
        }
        Ok(())
    }
}

/// Where a service is in its backoff sequence.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BackoffState {
    next: Option<Duration>,
}

impl BackoffState {
    /// The delay to wait now; advances the sequence.
    pub(crate) fn next_delay(&mut self, settings: &Backoff) -> Duration {
        let delay = self.next.unwrap_or(settings.initial).min(settings.max);
        self.next = Some(
            delay
                .checked_mul(settings.multiplier)
                .unwrap_or(settings.max)
                .min(settings.max),
        );
        delay
    }

    /// Called when the process exits: resets the sequence if it had been ready
    /// continuously for at least `reset_after`.
    pub(crate) fn note_ready_for(&mut self, settings: &Backoff, ready_for: Option<Duration>) {
        if ready_for.is_some_and(|d| d >= settings.reset_after) {
            self.reset();
        }
    }

    /// Back to `initial` (explicit start/restart).
    pub(crate) fn reset(&mut self) {
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_and_caps() {
        let settings = Backoff::default();
        let mut state = BackoffState::default();
        let seq: Vec<_> = (0..12).map(|_| state.next_delay(&settings)).collect();
        assert_eq!(
            seq,
            vec![
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(6400),
                ms(12800),
                ms(25600),
                ms(30000),
                ms(30000),
                ms(30000)
            ]
        );
    }

    #[test]
    fn resets_after_stable_readiness() {
        let settings = Backoff::default();
        let mut state = BackoffState::default();
        for _ in 0..4 {
            state.next_delay(&settings);
        }
        // Not ready long enough: keeps growing.
        state.note_ready_for(&settings, Some(Duration::from_secs(9)));
        assert_eq!(state.next_delay(&settings), ms(1600));
        // Never ready: keeps growing.
        state.note_ready_for(&settings, None);
        assert_eq!(state.next_delay(&settings), ms(3200));
        // Ready for reset_after: back to the start.
        state.note_ready_for(&settings, Some(Duration::from_secs(10)));
        assert_eq!(state.next_delay(&settings), ms(100));
        assert_eq!(state.next_delay(&settings), ms(200));
        state.reset();
        assert_eq!(state.next_delay(&settings), ms(100));
    }

    #[test]
    fn validation() {
        assert!(Backoff::default().validate().is_ok());
        let bad = Backoff {
            initial: ms(0),
            ..Backoff::default()
        };
        assert!(bad.validate().is_err());
        let bad = Backoff {
            max: ms(10),
            ..Backoff::default()
        };
        assert!(bad.validate().is_err());
    }
}
