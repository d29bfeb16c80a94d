//! Wakes a module's connector threads when one of their inputs may have
//! changed — the peer's state, a fence granted, a connection broken, a
//! stop — so they look again at once, and otherwise sleep until their
//! core's next deadline instead of polling.

use std::time::Instant;

use parking_lot::{Condvar, Mutex};

#[derive(Debug, Default)]
pub(crate) struct Bell {
    /// How many times it rang.
    rung: Mutex<u64>,
    ringing: Condvar,
}

impl Bell {
    pub(crate) fn ring(&self) {
        *self.rung.lock() += 1;
        self.ringing.notify_all();
    }

    /// How many times it rang so far: read before looking at the inputs,
    /// so a ring while looking ends the next [`Self::wait`] at once.
    pub(crate) fn rung(&self) -> u64 {
        *self.rung.lock()
    }

    /// Waits until it rings after `seen` rings, or `until` passes (`None`:
    /// only a ring ends the wait).
    pub(crate) fn wait(&self, seen: u64, until: Option<Instant>) {
        let mut rung = self.rung.lock();
        while *rung == seen {
            match until {
                Some(deadline) => {
                    if self.ringing.wait_until(&mut rung, deadline).timed_out() {
                        return;
                    }
                }
                None => self.ringing.wait(&mut rung),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_ring_after_the_reading_ends_the_wait_and_a_deadline_ends_it_too() {
        let bell = Arc::new(Bell::default());
        let seen = bell.rung();
        bell.ring();
        // Rung since `seen`: no wait at all, whatever the deadline.
        bell.wait(seen, None);
        let seen = bell.rung();
        let ringer = bell.clone();
        let rung = std::thread::spawn(move || ringer.ring());
        let started = Instant::now();
        bell.wait(seen, Some(started + Duration::from_secs(30)));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "woken by the ring"
        );
        rung.join().unwrap();
        assert_eq!(bell.rung(), seen + 1);
        let started = Instant::now();
        bell.wait(bell.rung(), Some(started + Duration::from_millis(20)));
        assert!(started.elapsed() >= Duration::from_millis(20));
    }
}
