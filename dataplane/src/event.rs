//! A one-shot event for tasks on one worker thread: "stop accepting", "drain".
//!
//! `!Send` on purpose: it uses `Cell`/`RefCell`, so it costs no atomics. Cross-thread signals go
//! through the worker's command channel instead.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// An event that fires once and stays fired.
#[derive(Debug, Default)]
pub struct Event {
    fired: Cell<bool>,
    /// One slot per pending [`Wait`]; a `Wait` frees its slot when dropped, so a task that waits
    /// in a loop (accept inside a `select!`) never grows the list.
    waiters: RefCell<Vec<Option<Waker>>>,
}

impl Event {
    /// A new, unfired event.
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// Fires the event and wakes every waiter.
    pub fn fire(&self) {
        self.fired.set(true);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters.into_iter().flatten() {
            waker.wake();
        }
    }

    /// Whether the event has fired.
    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// Resolves once the event has fired.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            event: self,
            slot: None,
        }
    }
}

/// The future returned by [`Event::wait`].
#[derive(Debug)]
pub struct Wait<'a> {
    event: &'a Event,
    slot: Option<usize>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.event.fired.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.event.waiters.borrow_mut();
        let waker = Some(cx.waker().clone());
        match self.slot {
            Some(slot) if slot < waiters.len() => waiters[slot] = waker,
            _ => {
                let slot = match waiters.iter().position(Option::is_none) {
                    Some(free) => {
                        waiters[free] = waker;
                        free
                    }
                    None => {
                        waiters.push(waker);
                        waiters.len() - 1
                    }
                };
                drop(waiters);
                self.slot = Some(slot);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot
            && let Some(entry) = self.event.waiters.borrow_mut().get_mut(slot)
        {
            *entry = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[monoio::test_all(timer_enabled = true)]
    async fn waiters_wake_when_fired() {
        let event = Event::new();
        let waiter = {
            let event = Rc::clone(&event);
            monoio::spawn(async move { event.wait().await })
        };
        monoio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert!(!event.is_fired());
        event.fire();
        waiter.await;
        // Once fired, it stays fired.
        event.wait().await;
    }

    #[monoio::test_all(timer_enabled = true)]
    async fn repeated_waits_do_not_accumulate_wakers() {
        let event = Event::new();
        for _ in 0..100 {
            monoio::select! {
                _ = event.wait() => unreachable!("not fired"),
                _ = monoio::time::sleep(std::time::Duration::from_micros(10)) => {}
            }
        }
        assert!(
            event.waiters.borrow().len() <= 1,
            "dropped waits free their slots"
        );
    }
}
