//! A byte (or frame) budget that bounds what may wait in the write queue.
//!
//! Writers take a [`Permit`] for what they queue; the writer task drops it once the frame is on
//! the connection, which returns the amount and wakes whoever waits. Unlike a tokio semaphore it
//! is polled without a stored future, so `SendHalf::poll_write` needs no boxed state.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::lock;

/// The shared budget.
#[derive(Debug)]
pub(crate) struct Budget {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    available: usize,
    closed: bool,
    waiters: Vec<Waker>,
}

/// An amount taken from a [`Budget`], given back on drop.
#[derive(Debug)]
pub(crate) struct Permit {
    budget: Arc<Budget>,
    amount: usize,
}

impl Budget {
    /// A budget of `total`.
    pub(crate) fn new(total: usize) -> Arc<Self> {
        Arc::new(Budget { state: Mutex::new(State { available: total, closed: false, waiters: Vec::new() }) })
    }

    /// Takes `amount` once that much is available; `Err(())` once the budget is closed.
    pub(crate) fn poll_acquire(self: &Arc<Self>, cx: &mut Context<'_>, amount: usize) -> Poll<Result<Permit, ()>> {
        let mut st = lock(&self.state);
        if st.closed {
            return Poll::Ready(Err(()));
        }
        if st.available >= amount {
            st.available -= amount;
            return Poll::Ready(Ok(Permit { budget: self.clone(), amount }));
        }
        if !st.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            st.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Async form of [`Budget::poll_acquire`].
    pub(crate) async fn acquire(self: &Arc<Self>, amount: usize) -> Result<Permit, ()> {
        std::future::poll_fn(|cx| self.poll_acquire(cx, amount)).await
    }

    /// Fails every current and future acquire.
    pub(crate) fn close(&self) {
        let waiters = {
            let mut st = lock(&self.state);
            st.closed = true;
            std::mem::take(&mut st.waiters)
        };
        waiters.into_iter().for_each(Waker::wake);
    }

    fn release(&self, amount: usize) {
        let waiters = {
            let mut st = lock(&self.state);
            st.available = st.available.saturating_add(amount);
            std::mem::take(&mut st.waiters)
        };
        waiters.into_iter().for_each(Waker::wake);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.release(self.amount);
    }
}
