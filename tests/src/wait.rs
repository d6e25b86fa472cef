//! Bounded polling: wait for a condition with a deadline instead of sleeping.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// How long tests wait for something that normally takes milliseconds. Generous, because the
/// tests share two cores with each other and with compilers.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Ok`, for at most `timeout`.
///
/// `check` returns `Err(state)` while the condition does not hold; on timeout the panic message
/// names `what` and the last state seen, which is usually what a failing test needs to show.
pub fn wait_until<T>(
    timeout: Duration,
    what: impl Display,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        let last = match check() {
            Ok(value) => return value,
            Err(state) => state,
        };
        let now = Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_ok() {
        let mut calls = 0;
        let value = wait_until(Duration::from_secs(5), "third call", || {
            calls += 1;
            if calls == 3 {
                Ok(calls)
            } else {
                Err(format!("call {calls}"))
            }
        });
        assert_eq!(value, 3);
    }

    #[test]
    #[should_panic(expected = "last seen: still 7")]
    fn times_out_with_the_last_state() {
        wait_until(Duration::from_millis(20), "never", || -> Result<(), _> {
            Err("still 7".to_owned())
        });
    }
}
