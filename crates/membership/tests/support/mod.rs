//! What the simulations share: a virtual clock and its event queue.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Events in virtual time (milliseconds), taken in order of time, then of
/// scheduling — so a run is a pure function of its seed.
pub struct EventQueue<E> {
    now: u64,
    seq: u64,
    heap: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<E>>,
}

impl<E> EventQueue<E> {
    pub fn new() -> Self {
        Self {
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            events: Vec::new(),
        }
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    /// Grows with every scheduled event: a ready-made sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn schedule(&mut self, delay: u64, event: E) {
        self.seq += 1;
        self.events.push(Some(event));
        self.heap
            .push(Reverse((self.now + delay, self.seq, self.events.len() - 1)));
    }

    /// The next event due at or before `end`, with the clock moved to it;
    /// `None`, with the clock at `end`, when there is none.
    pub fn pop_until(&mut self, end: u64) -> Option<E> {
        match self.heap.peek().copied() {
            Some(Reverse((at, _, idx))) if at <= end => {
                self.heap.pop();
                self.now = at;
                Some(self.events[idx].take().expect("each event runs once"))
            }
            _ => {
                self.now = end;
                None
            }
        }
    }
}
