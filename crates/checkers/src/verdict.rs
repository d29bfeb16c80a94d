//! Verdicts and their smoothing (sans-IO): one probe says Up or Down; the
//! checker's verdict only turns Down after `down_after` failed probes in a
//! row, and back Up after `up_after` successes in a row, so that one lost
//! packet does not fail a module over and a flapping resource does not
//! restart it at every lucky probe.

use std::fmt;

/// What a probe (or a checker, once smoothed) says about its resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Up,
    /// Down, with the reason for the module log
    /// ("tcp 198.18.0.12:5432: connection refused").
    Down(String),
}

impl Verdict {
    pub fn is_up(&self) -> bool {
        matches!(self, Verdict::Up)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Up => f.write_str("up"),
            Verdict::Down(reason) => write!(f, "down: {reason}"),
        }
    }
}

/// Turns a stream of probe results into verdict changes.
///
/// The checker starts without a verdict (SafeKit's `init`: a module waiting
/// on it stays in WAIT). The first success gives Up at once — there is no
/// earlier Up to protect — while Down always needs `down_after` failures in
/// a row, also at start, so that an application still starting is not
/// declared dead by its first probe.
#[derive(Debug, Clone)]
pub struct Smoother {
    down_after: u32,
    up_after: u32,
    /// The verdict last reported (`None`: none yet).
    current: Option<Verdict>,
    /// Consecutive probes contradicting `current`.
    streak: u32,
}

impl Smoother {
    /// Counts below 1 are taken as 1.
    pub fn new(down_after: u32, up_after: u32) -> Self {
        Self {
            down_after: down_after.max(1),
            up_after: up_after.max(1),
            current: None,
            streak: 0,
        }
    }

    /// The verdict last reported, if any.
    pub fn current(&self) -> Option<&Verdict> {
        self.current.as_ref()
    }

    /// Feeds one probe result; returns the new verdict when it changes. A
    /// Down verdict's reason is the last probe's, with the count of failures
    /// when more than one was needed.
    pub fn observe(&mut self, probe: Verdict) -> Option<Verdict> {
        let is_up = probe.is_up();
        let currently_up = self.current.as_ref().map(Verdict::is_up);
        if currently_up == Some(is_up) {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = match (is_up, currently_up) {
            (true, None) => 1,
            (true, Some(_)) => self.up_after,
            (false, _) => self.down_after,
        };
        if self.streak < needed {
            return None;
        }
        let verdict = match probe {
            Verdict::Down(reason) if needed > 1 => {
                Verdict::Down(format!("{reason} ({needed} probes in a row)"))
            }
            other => other,
        };
        self.streak = 0;
        self.current = Some(verdict.clone());
        Some(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down(r: &str) -> Verdict {
        Verdict::Down(r.to_string())
    }

    #[test]
    fn first_success_is_up_at_once_but_down_needs_the_count() {
        let mut s = Smoother::new(3, 2);
        assert_eq!(s.observe(down("a")), None);
        assert_eq!(s.observe(down("b")), None);
        assert_eq!(s.observe(Verdict::Up), Some(Verdict::Up));
        assert_eq!(s.observe(Verdict::Up), None);
    }

    #[test]
    fn down_after_consecutive_failures_only() {
        let mut s = Smoother::new(3, 2);
        assert_eq!(s.observe(Verdict::Up), Some(Verdict::Up));
        assert_eq!(s.observe(down("x")), None);
        assert_eq!(s.observe(down("x")), None);
        // A success in between resets the count.
        assert_eq!(s.observe(Verdict::Up), None);
        assert_eq!(s.observe(down("x")), None);
        assert_eq!(s.observe(down("x")), None);
        assert_eq!(
            s.observe(down("no reply")),
            Some(down("no reply (3 probes in a row)"))
        );
        // Still down: nothing new, whatever the reason.
        assert_eq!(s.observe(down("other")), None);
        assert_eq!(s.observe(Verdict::Up), None);
        assert_eq!(s.observe(down("x")), None);
        assert_eq!(s.observe(Verdict::Up), None);
        assert_eq!(s.observe(Verdict::Up), Some(Verdict::Up));
        assert_eq!(s.current(), Some(&Verdict::Up));
    }

    #[test]
    fn counts_of_one_follow_every_probe() {
        let mut s = Smoother::new(0, 1);
        assert_eq!(s.observe(down("gone")), Some(down("gone")));
        assert_eq!(s.observe(down("gone")), None);
        assert_eq!(s.observe(Verdict::Up), Some(Verdict::Up));
        assert_eq!(s.observe(down("again")), Some(down("again")));
    }
}
