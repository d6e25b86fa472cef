//! Keeping a bug in one connection from taking a worker down.
//!
//! Nothing on the network path is meant to panic, and the code is written so. But a worker thread
//! that dies takes every connection on its core with it, and its listening socket with them, so
//! each connection (and each HTTP/2 stream and mirror) runs inside [`contained`]: a panic ends that
//! task only, is logged with what it was doing, and is counted in `ringmesh_panics_total` so that
//! it cannot go unnoticed.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tracing::error;

/// Panics caught since start, across all workers (rare by construction; a shared counter is fine).
pub static PANICS: AtomicU64 = AtomicU64::new(0);

/// Runs `future`, turning a panic inside it into `None`.
pub async fn contained<F: Future>(what: &'static str, future: F) -> Option<F::Output> {
    Contained {
        what,
        future: Box::pin(future),
    }
    .await
}

struct Contained<F> {
    what: &'static str,
    future: Pin<Box<F>>,
}

impl<F: Future> Future for Contained<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let what = self.what;
        // AssertUnwindSafe: after a panic the future is never polled again (it is dropped with
        // this wrapper), so no broken invariant inside it can be observed.
        match catch_unwind(AssertUnwindSafe(|| self.future.as_mut().poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Some(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => {
                PANICS.fetch_add(1, Ordering::Relaxed);
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                error!(task = what, panic = %message, "bug: a task panicked; it was stopped and the worker carries on");
                Poll::Ready(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[monoio::test_all]
    async fn a_panicking_task_is_contained() {
        let before = PANICS.load(Ordering::Relaxed);
        let result = contained("test", async {
            let v: Vec<u8> = Vec::new();
            #[allow(clippy::indexing_slicing)]
            v[usize::from(v.is_empty())]
        })
        .await;
        assert_eq!(result, None);
        assert!(PANICS.load(Ordering::Relaxed) > before);
        assert_eq!(contained("test", async { 7 }).await, Some(7));
    }
}
