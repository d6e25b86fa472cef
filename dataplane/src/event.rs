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

/// A one-shot signal with at most one waiter at a time: the signals between the two directions of
/// an exchange ("stop watching", "the head is out"). Unlike [`Event`] it keeps its one waker in
/// place, so a request that uses a few of them allocates nothing.
#[derive(Default)]
pub struct Signal {
    fired: Cell<bool>,
    waiter: Cell<Option<Waker>>,
}

impl std::fmt::Debug for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signal")
            .field("fired", &self.fired.get())
            .finish()
    }
}

impl Signal {
    /// Fires the signal and wakes its waiter.
    pub fn fire(&self) {
        self.fired.set(true);
        if let Some(waker) = self.waiter.take() {
            waker.wake();
        }
    }

    /// Whether the signal has fired.
    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// Makes the signal unfired again, for its next use.
    pub fn reset(&self) {
        self.fired.set(false);
    }

    /// Resolves once the signal has fired. A second concurrent waiter would take the first one's
    /// place; the exchange never has two.
    pub fn wait(&self) -> SignalWait<'_> {
        SignalWait { signal: self }
    }
}

/// The future returned by [`Signal::wait`].
#[derive(Debug)]
pub struct SignalWait<'a> {
    signal: &'a Signal,
}

impl Future for SignalWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.fired.get() {
            return Poll::Ready(());
        }
        // Keep the stored waker when it wakes the same task: polls repeat often (every wake-up
        // of the exchange's task), clones and drops of a waker are not free.
        let waker = match self.signal.waiter.take() {
            Some(stored) if stored.will_wake(cx.waker()) => stored,
            _ => cx.waker().clone(),
        };
        self.signal.waiter.set(Some(waker));
        Poll::Pending
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
    async fn signals_wake_their_waiter_once_fired() {
        let signal = Rc::new(Signal::default());
        let waiter = {
            let signal = Rc::clone(&signal);
            monoio::spawn(async move { signal.wait().await })
        };
        monoio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert!(!signal.is_fired());
        signal.fire();
        waiter.await;
        signal.wait().await;
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
