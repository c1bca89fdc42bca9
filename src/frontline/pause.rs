//! The greet pause, sans-IO: the server keeps its 220 back for
//! `policy.greet_pause`; a client that sends anything meanwhile is an
//! early talker (a bot that does not wait for the greeting), refused with
//! 554 5.5.1 and disconnected. The driver feeds it reads and the time.
//!
//! Place in the pipeline: `crate::frontline::admit` drives one `Pause` per
//! connection while the DNSBL and reverse DNS lookups run; nothing of it
//! stays once the greeting has been decided.

use std::time::{Duration, Instant};

/// Where the pause stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting for the deadline; nothing received.
    Waiting,
    /// The pause passed in silence: greet the client.
    Done,
    /// The client sent something before the greeting.
    EarlyTalker,
    /// The client closed the connection before the greeting.
    Closed,
}

pub struct Pause {
    deadline: Instant,
    state: State,
}

impl Pause {
    pub fn new(now: Instant, pause: Duration) -> Pause {
        let deadline = now.checked_add(pause).unwrap_or(now);
        let state = if pause.is_zero() { State::Done } else { State::Waiting };
        Pause { deadline, state }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// A read returned `bytes` octets (0: the client closed).
    pub fn on_input(&mut self, bytes: usize) {
        if self.state == State::Waiting {
            self.state = if bytes == 0 { State::Closed } else { State::EarlyTalker };
        }
    }

    /// The time is `now`.
    pub fn on_time(&mut self, now: Instant) {
        if self.state == State::Waiting && now >= self.deadline {
            self.state = State::Done;
        }
    }
}
