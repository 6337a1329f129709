//! A first-come, first-served byte budget shared by the tasks of one shard: what bounds the
//! bytes a partition has staged for its next flush.
//!
//! Why not a plain "is there room?" check: with writers that each keep one write in flight, the
//! writers a flush acknowledges are woken before a writer that found the staging area full, so
//! they refill it first, every time, and that writer can wait for as long as the load lasts
//! (seconds were measured with 256 writers of 64 KiB). Here a task that must wait takes a place
//! in line, nobody overtakes it, and each release wakes only the task at the head.
//!
//! Single-threaded (`!Send`) by design: one budget per partition, used on its shard.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// The budget was closed: the partition is closing or has failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetClosed;

/// A FIFO byte budget.
pub struct Budget {
    capacity_bytes: usize,
    state: RefCell<State>,
}

struct State {
    available_bytes: usize,
    /// Tasks waiting, in arrival order.
    line: VecDeque<Place>,
    next_ticket: u64,
    closed: bool,
}

struct Place {
    ticket: u64,
    bytes: usize,
    waker: Waker,
}

impl State {
    fn wake_head(&self) {
        if let Some(head) = self.line.front() {
            head.waker.wake_by_ref();
        }
    }
}

impl Budget {
    /// A budget of `capacity_bytes`, all available.
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity_bytes,
            state: RefCell::new(State {
                available_bytes: capacity_bytes,
                line: VecDeque::new(),
                next_ticket: 0,
                closed: false,
            }),
        }
    }

    /// Waits until `bytes` are available and nobody who came earlier is still waiting, then takes
    /// them. Dropping the future gives up the place in line (and takes nothing).
    ///
    /// # Panics
    /// If `bytes` exceeds the capacity: such a request could never be served.
    pub fn acquire(&self, bytes: usize) -> Acquire<'_> {
        assert!(
            bytes <= self.capacity_bytes,
            "a request of {bytes} bytes can never fit a budget of {}",
            self.capacity_bytes
        );
        Acquire {
            budget: self,
            bytes,
            ticket: None,
            done: false,
        }
    }

    /// Gives `bytes` back and wakes the task at the head of the line.
    pub fn release(&self, bytes: usize) {
        let mut state = self.state.borrow_mut();
        state.available_bytes += bytes;
        assert!(
            state.available_bytes <= self.capacity_bytes,
            "released more than was taken"
        );
        state.wake_head();
    }

    /// Fails every waiting and every later `acquire`.
    pub fn close(&self) {
        let mut state = self.state.borrow_mut();
        state.closed = true;
        for place in &state.line {
            place.waker.wake_by_ref();
        }
    }

    /// Bytes not taken.
    pub fn available_bytes(&self) -> usize {
        self.state.borrow().available_bytes
    }

    /// Tasks waiting in line.
    pub fn waiting(&self) -> usize {
        self.state.borrow().line.len()
    }
}

/// The future of [`Budget::acquire`].
pub struct Acquire<'a> {
    budget: &'a Budget,
    bytes: usize,
    ticket: Option<u64>,
    done: bool,
}

impl Acquire<'_> {
    fn leave_line(&mut self, state: &mut State) {
        if let Some(ticket) = self.ticket.take() {
            if let Some(at) = state.line.iter().position(|place| place.ticket == ticket) {
                state.line.remove(at);
                if at == 0 {
                    state.wake_head();
                }
            }
        }
    }
}

impl Future for Acquire<'_> {
    type Output = Result<(), BudgetClosed>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        assert!(!this.done, "polled after completion");
        let budget = this.budget;
        let mut state = budget.state.borrow_mut();
        if state.closed {
            this.leave_line(&mut state);
            this.done = true;
            return Poll::Ready(Err(BudgetClosed));
        }
        match this.ticket {
            None => {
                if state.line.is_empty() && state.available_bytes >= this.bytes {
                    state.available_bytes -= this.bytes;
                    this.done = true;
                    return Poll::Ready(Ok(()));
                }
                let ticket = state.next_ticket;
                state.next_ticket += 1;
                state.line.push_back(Place {
                    ticket,
                    bytes: this.bytes,
                    waker: context.waker().clone(),
                });
                this.ticket = Some(ticket);
                Poll::Pending
            }
            Some(ticket) => {
                let head = state.line.front().expect("a waiting task is in line");
                if head.ticket == ticket && state.available_bytes >= head.bytes {
                    state.available_bytes -= this.bytes;
                    state.line.pop_front();
                    this.ticket = None;
                    this.done = true;
                    // The next in line may fit too.
                    if state
                        .line
                        .front()
                        .is_some_and(|next| next.bytes <= state.available_bytes)
                    {
                        state.wake_head();
                    }
                    return Poll::Ready(Ok(()));
                }
                let place = state
                    .line
                    .iter_mut()
                    .find(|place| place.ticket == ticket)
                    .expect("a waiting task is in line");
                if !place.waker.will_wake(context.waker()) {
                    place.waker = context.waker().clone();
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        if !self.done {
            let budget = self.budget;
            self.leave_line(&mut budget.state.borrow_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::noop_waker;

    fn poll(future: &mut Acquire<'_>) -> Poll<Result<(), BudgetClosed>> {
        let waker = noop_waker();
        Pin::new(future).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn nobody_overtakes_a_waiting_task() {
        let budget = Budget::new(100);
        assert_eq!(poll(&mut budget.acquire(90)), Poll::Ready(Ok(())));
        let mut big = budget.acquire(50);
        assert!(poll(&mut big).is_pending());
        // 10 bytes are free, but a small request must queue behind the big one.
        let mut small = budget.acquire(10);
        assert!(poll(&mut small).is_pending());
        budget.release(50);
        assert!(
            poll(&mut small).is_pending(),
            "the small one is not at the head"
        );
        assert_eq!(poll(&mut big), Poll::Ready(Ok(())));
        assert_eq!(poll(&mut small), Poll::Ready(Ok(())));
        assert_eq!(budget.available_bytes(), 0);
    }

    #[test]
    fn a_dropped_waiter_leaves_the_line() {
        let budget = Budget::new(100);
        assert_eq!(poll(&mut budget.acquire(100)), Poll::Ready(Ok(())));
        let mut first = budget.acquire(60);
        let mut second = budget.acquire(60);
        assert!(poll(&mut first).is_pending());
        assert!(poll(&mut second).is_pending());
        drop(first);
        assert_eq!(budget.waiting(), 1);
        budget.release(60);
        assert_eq!(poll(&mut second), Poll::Ready(Ok(())));
        assert_eq!(budget.waiting(), 0);
    }

    #[test]
    fn close_fails_waiters_and_later_requests() {
        let budget = Budget::new(10);
        assert_eq!(poll(&mut budget.acquire(10)), Poll::Ready(Ok(())));
        let mut waiting = budget.acquire(5);
        assert!(poll(&mut waiting).is_pending());
        budget.close();
        assert_eq!(poll(&mut waiting), Poll::Ready(Err(BudgetClosed)));
        assert_eq!(budget.waiting(), 0);
        assert_eq!(poll(&mut budget.acquire(1)), Poll::Ready(Err(BudgetClosed)));
    }

    #[test]
    #[should_panic(expected = "can never fit")]
    fn a_request_over_the_capacity_is_a_bug() {
        let budget = Budget::new(10);
        let _never = budget.acquire(11);
    }
}
