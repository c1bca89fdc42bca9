//! The one clock a shard reads: the wall clock in production, a manual
//! clock in tests, so that the queue's runners, delivery's retry schedule
//! and the timestamps of envelopes can be tested without sleeping.
//!
//! Place in the pipeline: made by the shard at start and passed to the
//! queue and to delivery, which take every "now" and every long wait
//! (a runner waiting for its lag, delivery waiting to record an attempt
//! again) from it. Socket timeouts stay on glommio's timers: they measure
//! a peer's real silence, not the queue's schedule.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A shard's clock. Cheap to clone; not shared across threads.
#[derive(Clone)]
pub enum Clock {
    /// The system's wall clock and glommio's timers.
    System,
    /// Time moves only when a test advances it.
    Manual(Rc<ManualClock>),
}

impl Clock {
    /// A manual clock starting at `unix_ms`, and the handle that moves it.
    pub fn manual(unix_ms: u64) -> (Clock, Rc<ManualClock>) {
        let manual = Rc::new(ManualClock {
            unix_ms: Cell::new(unix_ms),
            advanced: event_listener::Event::new(),
            simulated: false,
        });
        (Clock::Manual(manual.clone()), manual)
    }

    /// A manual clock that also times the queue's short internal waits
    /// ([`Clock::sleep_short`]), so that a run on it (the deterministic
    /// simulation, `crate::sim`) never depends on the machine's speed.
    pub fn simulated(unix_ms: u64) -> (Clock, Rc<ManualClock>) {
        let manual = Rc::new(ManualClock {
            unix_ms: Cell::new(unix_ms),
            advanced: event_listener::Event::new(),
            simulated: true,
        });
        (Clock::Manual(manual.clone()), manual)
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_ms(&self) -> u64 {
        match self {
            Clock::System => system_unix_ms(),
            Clock::Manual(m) => m.unix_ms.get(),
        }
    }

    /// Microseconds since the Unix epoch (queue ids).
    pub fn unix_us(&self) -> u64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros() as u64,
            Clock::Manual(m) => m.unix_ms.get().saturating_mul(1000),
        }
    }

    /// The current time as a `SystemTime` (dates in headers and reports).
    pub fn system_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.unix_ms())
    }

    /// Waits `wait` of this clock's time.
    pub async fn sleep(&self, wait: Duration) {
        match self {
            Clock::System => {
                glommio::timer::sleep(wait).await;
            }
            Clock::Manual(m) => {
                let until = m.unix_ms.get().saturating_add(wait.as_millis() as u64);
                loop {
                    let listener = m.advanced.listen();
                    if m.unix_ms.get() >= until {
                        return;
                    }
                    listener.await;
                }
            }
        }
    }
}

impl Clock {
    /// Waits a short internal delay (a completion waiting for a flush to
    /// ride): glommio's timer, as a socket timeout, except under a
    /// simulated clock, where it is the clock's own time.
    pub async fn sleep_short(&self, wait: Duration) {
        match self {
            Clock::Manual(m) if m.simulated => self.sleep(wait).await,
            _ => {
                glommio::timer::sleep(wait).await;
            }
        }
    }
}

/// The moving part of a manual clock.
pub struct ManualClock {
    unix_ms: Cell<u64>,
    advanced: event_listener::Event,
    /// Short internal waits follow this clock too ([`Clock::simulated`]).
    simulated: bool,
}

impl ManualClock {
    /// Moves time forward and wakes every sleeper whose wait is over.
    pub fn advance(&self, by: Duration) {
        let now = self
            .unix_ms
            .get()
            .checked_add(by.as_millis() as u64)
            .expect("manual clock overflow");
        self.unix_ms.set(now);
        self.advanced.notify(usize::MAX);
    }

    pub fn unix_ms(&self) -> u64 {
        self.unix_ms.get()
    }
}

/// The wall clock, for code outside a shard (tools, logs).
pub fn system_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_sleep_ends_when_time_is_advanced_past_it() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let (clock, manual) = Clock::manual(1_000_000);
                let done = Rc::new(Cell::new(false));
                let flag = done.clone();
                let sleeper = clock.clone();
                let task = glommio::spawn_local(async move {
                    sleeper.sleep(Duration::from_secs(30)).await;
                    flag.set(true);
                });
                glommio::executor().yield_task_queue_now().await;
                manual.advance(Duration::from_secs(29));
                glommio::executor().yield_task_queue_now().await;
                assert!(!done.get(), "woke before its time");
                manual.advance(Duration::from_secs(1));
                task.await;
                assert!(done.get());
                assert_eq!(clock.unix_ms(), 1_030_000);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
