//! The recovery policy: what to do when a checker reports a failure of the
//! application, as SafeKit's `maxloop` / `loop_interval` (User's Guide
//! §13.3): local restarts while failures stay within `maxloop` in
//! `loop_interval`; past that, the module stops here and the application
//! fails over to the peer, and this node is held back from being primary
//! until the counter resets (the interval passed) or an administrator acts.
//! Pure: the shell feeds failures with the time and carries out decisions.

use std::time::{Duration, Instant};

/// What a checker asks for on failure (its configured action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    Restart,
    StopStart,
    Stop,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Restart the application here (stop_prim, start_prim).
    Restart,
    /// Stop here (the peer takes over) and start again as SECOND; with
    /// `hold`, not primary again until [`RecoveryPolicy::released`].
    StopStart { hold: Option<String> },
    /// Stop the module here.
    Stop,
}

#[derive(Debug, Clone)]
pub struct RecoveryPolicy {
    maxloop: u32,
    loop_interval: Duration,
    /// Failures counted since `since`.
    count: u32,
    since: Option<Instant>,
    holding: bool,
}

impl RecoveryPolicy {
    /// `loop_interval` zero disables the counter (every failure gets the
    /// requested action).
    pub fn new(maxloop: u32, loop_interval: Duration) -> Self {
        Self {
            maxloop,
            loop_interval,
            count: 0,
            since: None,
            holding: false,
        }
    }

    /// Failures counted in the current interval.
    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn failure(&mut self, now: Instant, requested: Requested) -> Decision {
        if requested == Requested::Stop {
            return Decision::Stop;
        }
        if self.loop_interval.is_zero() {
            return match requested {
                Requested::Restart => Decision::Restart,
                _ => Decision::StopStart { hold: None },
            };
        }
        if self
            .since
            .is_none_or(|since| now.duration_since(since) >= self.loop_interval)
        {
            self.since = Some(now);
            self.count = 0;
        }
        self.count += 1;
        if self.count > self.maxloop {
            self.holding = true;
            return Decision::StopStart {
                hold: Some(format!(
                    "{} failures within {:?} exceed maxloop {}: this node stays out of the primary role until the counter resets or an administrator acts",
                    self.count, self.loop_interval, self.maxloop
                )),
            };
        }
        match requested {
            Requested::Restart => Decision::Restart,
            _ => Decision::StopStart { hold: None },
        }
    }

    /// An administrator's command resets the counter (as in SafeKit).
    pub fn reset(&mut self) {
        self.count = 0;
        self.since = None;
        self.holding = false;
    }

    /// True once, when a hold ends because the interval passed.
    pub fn released(&mut self, now: Instant) -> bool {
        let expired = self
            .since
            .is_some_and(|since| now.duration_since(since) >= self.loop_interval);
        if self.holding && expired {
            self.reset();
            return true;
        }
        false
    }

    /// When [`Self::released`] may next become true.
    pub fn next_release(&self) -> Option<Instant> {
        self.since
            .filter(|_| self.holding)
            .map(|since| since + self.loop_interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_up_to_maxloop_then_stopstart_with_hold_then_release() {
        let t0 = Instant::now();
        let mut policy = RecoveryPolicy::new(3, Duration::from_secs(60));
        for i in 0..3 {
            assert_eq!(
                policy.failure(t0 + Duration::from_secs(i), Requested::Restart),
                Decision::Restart
            );
        }
        let Decision::StopStart { hold: Some(why) } =
            policy.failure(t0 + Duration::from_secs(4), Requested::Restart)
        else {
            panic!("the 4th failure must fail over and hold");
        };
        assert!(why.contains("exceed maxloop 3"), "{why}");
        assert!(!policy.released(t0 + Duration::from_secs(30)));
        assert!(policy.released(t0 + Duration::from_secs(61)));
        assert!(
            !policy.released(t0 + Duration::from_secs(62)),
            "released once"
        );
        assert_eq!(policy.count(), 0);
    }

    #[test]
    fn the_window_restarts_and_admin_resets() {
        let t0 = Instant::now();
        let mut policy = RecoveryPolicy::new(1, Duration::from_secs(10));
        assert_eq!(policy.failure(t0, Requested::Restart), Decision::Restart);
        assert_eq!(
            policy.failure(t0 + Duration::from_secs(11), Requested::Restart),
            Decision::Restart,
            "new window"
        );
        policy.reset();
        assert_eq!(
            policy.failure(t0 + Duration::from_secs(12), Requested::Restart),
            Decision::Restart
        );
        assert!(matches!(
            policy.failure(t0 + Duration::from_secs(13), Requested::StopStart),
            Decision::StopStart { hold: Some(_) }
        ));
        assert_eq!(policy.failure(t0, Requested::Stop), Decision::Stop);
    }

    #[test]
    fn zero_interval_disables_the_counter() {
        let t0 = Instant::now();
        let mut policy = RecoveryPolicy::new(0, Duration::ZERO);
        for _ in 0..10 {
            assert_eq!(policy.failure(t0, Requested::Restart), Decision::Restart);
        }
    }
}
