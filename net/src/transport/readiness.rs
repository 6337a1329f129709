//! Readiness of a shard's TCP sockets: one edge-triggered epoll set per executor, read between
//! task runs while the shard is busy, and watched by a sleeping thread only while it is quiet.
//!
//! **Why not glommio's sockets.** glommio waits for a socket with an io_uring `POLL_ADD` per
//! socket and per wait, on rings made without `IORING_SETUP_COOP_TASKRUN`. Every such
//! completion is task work the kernel signals to the ring's thread, and when that thread is
//! running on another core, with a reschedule IPI. Measured in session 10 (docs/perf.md):
//! 1.3 IPIs per request at 64 clients, and a third of the node's CPU in the sending side's
//! wake-up of the peer's waiter. An epoll set costs nothing of the kind while its thread is
//! busy: the kernel only queues the ready socket on the set's ready list, and
//! `epoll_wait(.., 0)` collects every ready socket of the shard in one call.
//!
//! **How a wait works.** A socket operation is tried first (a non-blocking `recv`, `send` or
//! `accept`) unless the socket is known not to be ready for it. Only when it would block does
//! the task leave its waker in the socket's slot. The shard's driver task calls `epoll_wait`
//! with a zero timeout once per turn of the executor (a timer that is due at once is processed
//! when glommio polls its rings, after the tasks that were runnable have run), and wakes the
//! waiters of every ready socket. Sockets are registered edge-triggered, which needs no
//! re-arming: an edge comes whenever new bytes (or room) appear, and an edge that comes early
//! only wakes a task that tries again.
//!
//! **Deadlines.** A wait with a timeout leaves its deadline in the slot beside its waker; the
//! driver wakes every waiter whose deadline has come, once per turn that reaches the earliest
//! one, and the wait then ends with [`TransportError::TimedOut`]. A quiet shard's watcher
//! sleeps no later than the earliest deadline; a wait registered while it sleeps (by a task a
//! timer or a channel woke) with an earlier deadline nudges it through an eventfd, and the
//! driver hands the set over again with that deadline. No glommio timer is made per wait
//! (session 19: a timer per request read was 6-8% of a busy shard's CPU, in clock reads,
//! timer-map inserts and removals and the reactor's scan of the map every turn).
//!
//! **Known not ready.** Each slot remembers, per direction, whether the socket may be ready: set
//! by every event of the set that says so, cleared when an operation would block, and cleared
//! too when a `recv` fills less than its buffer or a `send` takes less than it was given (the
//! socket's queue was drained, or its buffer filled, at that moment: every later arrival or
//! room brings an edge, which sets it again). A task that reads a request therefore makes one
//! `recv` for it, not one more to learn that nothing follows and another when it is woken
//! (session 18: 5.5 `recv` calls a request before, measured with `perf stat` at 64 clients).
//! Events are taken from the set only by the driver, a task of the same thread, so none can
//! fall between an operation and the clearing of its flag. An end of stream, hang-up or error
//! once reported keeps the socket ready for good: a peer's last bytes and its FIN may come in
//! one edge, and a short `recv` of the bytes is followed by no edge for the FIN.
//!
//! **How a quiet shard sleeps.** After [`READINESS_SPIN`] without a socket operation or an
//! event that ends a wait, the driver hands the set to a watcher thread (one per executor that
//! has sockets, started on first need) and stops polling. The watcher sleeps in `poll(2)` on
//! the epoll descriptor, which reports readiness without taking any event off the set, and
//! wakes the driver through glommio's cross-thread waker (an eventfd write only if the
//! executor sleeps), then sleeps until handed the set again. A busy shard never hands it
//! over, so the watcher costs nothing under load; a quiet shard pays one thread wake-up more
//! for its first request.

use super::TransportError;
use crate::constants::READINESS_SPIN;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{eventfd, EfdFlags};
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Events taken from the set per `epoll_wait`; more wait for the next turn.
const EVENTS_PER_WAIT: usize = 256;

/// Which way a task waits on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    Read,
    Write,
}

/// One direction of a socket's slot: its waiting task and what the set knows of the socket
/// that way.
#[derive(Debug, Default)]
struct Half {
    waker: Option<Waker>,
    /// The socket may be ready this way (see the module docs, "Known not ready").
    ready: bool,
    /// An event reported this way closed, so it stays ready for good. Reading: an end of
    /// stream, a hang-up or an error (the data before the end may be read by a short `recv`,
    /// after which no edge comes again). Writing: a hang-up or an error.
    closed: bool,
    /// When the waiter's wait ends in a timeout (`None`: it waits as long as it takes).
    deadline: Option<Instant>,
    /// The waiter was woken by its deadline (taken by the wait, cleared by the next).
    expired: bool,
}

impl Half {
    /// A new socket's: ready until an operation finds otherwise.
    fn open() -> Half {
        Half {
            ready: true,
            ..Half::default()
        }
    }

    /// An event says the socket is ready this way: the waker to wake, if a task waits.
    fn woken(&mut self) -> Option<Waker> {
        self.ready = true;
        self.waker.take()
    }
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    live: bool,
    read: Half,
    write: Half,
}

impl Slot {
    fn half(&mut self, direction: Direction) -> &mut Half {
        match direction {
            Direction::Read => &mut self.read,
            Direction::Write => &mut self.write,
        }
    }
}

#[derive(Debug, Default)]
struct Slots {
    entries: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    /// Wakers left in slots: while there are none the driver has nothing to poll for.
    waiters: usize,
    /// No waiter's deadline comes before this (`None`: no waiter has one). It may be early:
    /// the wait that set it may have ended since; the sweep it triggers then finds nothing
    /// due and sets it anew.
    next_deadline: Option<Instant>,
}

impl Slots {
    fn insert(&mut self) -> u64 {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.entries.push(Slot::default());
                u32::try_from(self.entries.len() - 1).expect("fewer than 2^32 sockets")
            }
        };
        let slot = &mut self.entries[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.live = true;
        slot.read = Half::open();
        slot.write = Half::open();
        self.live += 1;
        token(index, slot.generation)
    }

    fn slot(&mut self, token: u64) -> Option<&mut Slot> {
        let (index, generation) = untoken(token);
        self.entries
            .get_mut(index as usize)
            .filter(|slot| slot.live && slot.generation == generation)
    }

    fn remove(&mut self, token: u64) {
        let mut dropped = 0;
        if let Some(slot) = self.slot(token) {
            slot.live = false;
            dropped += usize::from(slot.read.waker.take().is_some());
            dropped += usize::from(slot.write.waker.take().is_some());
            self.free.push(untoken(token).0);
            self.live -= 1;
        }
        self.waiters -= dropped;
    }

    /// Leaves `waker` in the slot, to be woken by readiness or at `deadline`, whichever comes
    /// first; false if the slot is gone. Clears what an earlier wait's deadline left.
    fn wait(
        &mut self,
        token: u64,
        direction: Direction,
        waker: &Waker,
        deadline: Option<Instant>,
    ) -> bool {
        let Some(slot) = self.slot(token) else {
            return false;
        };
        let half = slot.half(direction);
        half.deadline = deadline;
        half.expired = false;
        let added = match &mut half.waker {
            Some(current) if current.will_wake(waker) => false,
            Some(current) => {
                current.clone_from(waker);
                false
            }
            place @ None => {
                *place = Some(waker.clone());
                true
            }
        };
        self.waiters += usize::from(added);
        if let Some(deadline) = deadline {
            if self.next_deadline.is_none_or(|next| deadline < next) {
                self.next_deadline = Some(deadline);
            }
        }
        true
    }

    /// Takes the wakers an event with `flags` on `token` ends.
    fn ready(&mut self, token: u64, flags: EpollFlags, woken: &mut Vec<Waker>) {
        let read_closed = EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
        let readable = EpollFlags::EPOLLIN | read_closed;
        let write_closed = EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
        let writable = EpollFlags::EPOLLOUT | write_closed;
        let Some(slot) = self.slot(token) else {
            return;
        };
        slot.read.closed |= flags.intersects(read_closed);
        slot.write.closed |= flags.intersects(write_closed);
        let mut taken = 0;
        for (half, now_ready) in [
            (&mut slot.read, flags.intersects(readable)),
            (&mut slot.write, flags.intersects(writable)),
        ] {
            if now_ready {
                if let Some(waker) = half.woken() {
                    woken.push(waker);
                    taken += 1;
                }
            }
        }
        self.waiters -= taken;
    }

    /// Whether `token`'s socket may be ready for `direction` (a slot gone: yes, so that the
    /// operation runs and reports what it finds).
    fn may_be_ready(&mut self, token: u64, direction: Direction) -> bool {
        self.slot(token)
            .is_none_or(|slot| slot.half(direction).ready)
    }

    /// Notes that `token`'s socket is not ready for `direction` until its next event, unless
    /// it is closed that way for good.
    fn not_ready(&mut self, token: u64, direction: Direction) {
        if let Some(slot) = self.slot(token) {
            let half = slot.half(direction);
            half.ready = half.closed;
        }
    }

    /// Whether the wait for `direction` on `token` was ended by its deadline; clears it.
    fn take_expired(&mut self, token: u64, direction: Direction) -> bool {
        self.slot(token)
            .is_some_and(|slot| std::mem::take(&mut slot.half(direction).expired))
    }

    /// Wakes every waiter whose deadline is not after `now`, marking it expired, once the
    /// earliest deadline has come; then finds the earliest of those left. O(sockets), at most
    /// once per deadline that comes.
    fn expire(&mut self, now: Instant, woken: &mut Vec<Waker>) {
        if self.next_deadline.is_none_or(|next| now < next) {
            return;
        }
        let mut next: Option<Instant> = None;
        let mut taken = 0;
        for slot in self.entries.iter_mut().filter(|slot| slot.live) {
            for half in [&mut slot.read, &mut slot.write] {
                let (Some(_), Some(due)) = (half.waker.as_ref(), half.deadline) else {
                    continue;
                };
                if due <= now {
                    woken.extend(half.waker.take());
                    half.deadline = None;
                    half.expired = true;
                    taken += 1;
                } else if next.is_none_or(|next| due < next) {
                    next = Some(due);
                }
            }
        }
        self.waiters -= taken;
        self.next_deadline = next;
    }

    fn wake_all(&mut self, woken: &mut Vec<Waker>) {
        for slot in &mut self.entries {
            woken.extend(slot.read.woken());
            woken.extend(slot.write.woken());
        }
        self.waiters = 0;
    }
}

fn token(index: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(index)
}

fn untoken(token: u64) -> (u32, u32) {
    // Truncations on purpose: the token is the two halves side by side.
    (token as u32, (token >> 32) as u32)
}

/// The epoll set of one executor and the wakers of the tasks waiting on its sockets.
pub(super) struct Poller {
    executor: usize,
    epoll: Arc<Epoll>,
    slots: RefCell<Slots>,
    /// A driver task is running (or about to).
    driving: Cell<bool>,
    /// The driver, parked because no task waits on any socket.
    driver_parked: RefCell<Option<Waker>>,
    /// `epoll_wait` failed: every wait ends with this error from then on.
    failed: Cell<Option<Errno>>,
    watcher: RefCell<Option<Watcher>>,
    /// Times the driver handed the set to the watcher (the quiet path).
    handovers: Cell<u64>,
    /// While the set is with the watcher: the deadline it sleeps until (`Some(None)`: none).
    /// A wait with an earlier deadline, registered meanwhile (by a task woken by a timer or a
    /// channel), nudges the watcher, so that the driver hands the set over again with it.
    handed_until: Cell<Option<Option<Instant>>>,
    /// Socket operations that moved bytes (or a connection): a shard that just wrote an
    /// answer is about to read the next request, so the spin counts from its last operation
    /// as well as from its last event.
    operations: Cell<u64>,
    /// Socket operations tried, including those that would have blocked (tests count them).
    tries: Cell<u64>,
}

thread_local! {
    static POLLER: RefCell<Option<Rc<Poller>>> = const { RefCell::new(None) };
}

impl Poller {
    /// The current executor's poller, made on first use. A thread may run several executors
    /// one after another (tests do): each gets its own set and driver.
    pub(super) fn current() -> io::Result<Rc<Poller>> {
        let executor = glommio::executor().id();
        POLLER.with(|cell| {
            let mut cell = cell.borrow_mut();
            if let Some(poller) = cell.as_ref().filter(|poller| poller.executor == executor) {
                return Ok(poller.clone());
            }
            let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
            let poller = Rc::new(Poller {
                executor,
                epoll: Arc::new(epoll),
                slots: RefCell::default(),
                driving: Cell::new(false),
                driver_parked: RefCell::new(None),
                failed: Cell::new(None),
                watcher: RefCell::new(None),
                handovers: Cell::new(0),
                handed_until: Cell::new(None),
                operations: Cell::new(0),
                tries: Cell::new(0),
            });
            *cell = Some(poller.clone());
            Ok(poller)
        })
    }

    /// Adds `fd` (non-blocking) to the set; the token names it in [`Poller::wait`].
    pub(super) fn register(&self, fd: BorrowedFd<'_>) -> io::Result<u64> {
        let token = self.slots.borrow_mut().insert();
        let flags = EpollFlags::EPOLLIN
            | EpollFlags::EPOLLOUT
            | EpollFlags::EPOLLRDHUP
            | EpollFlags::EPOLLET;
        if let Err(errno) = self.epoll.add(fd, EpollEvent::new(flags, token)) {
            self.slots.borrow_mut().remove(token);
            return Err(errno.into());
        }
        Ok(token)
    }

    /// Forgets `token`. Its socket leaves the set when it is closed, right after (the
    /// descriptor is never duplicated).
    pub(super) fn deregister(&self, token: u64) {
        self.slots.borrow_mut().remove(token);
    }

    /// Leaves the task's waker for `direction` on `token`'s socket, after an operation on it
    /// would have blocked, until the socket is ready or `deadline` comes. An error if the
    /// poller failed.
    fn wait(
        self: &Rc<Self>,
        token: u64,
        direction: Direction,
        waker: &Waker,
        deadline: Option<Instant>,
    ) -> io::Result<()> {
        if let Some(errno) = self.failed.get() {
            return Err(io::Error::other(format!(
                "the shard's socket readiness set failed: {errno}"
            )));
        }
        if !self
            .slots
            .borrow_mut()
            .wait(token, direction, waker, deadline)
        {
            return Err(io::Error::other("the socket was deregistered"));
        }
        if let Some(driver) = self.driver_parked.borrow_mut().take() {
            driver.wake();
        }
        if let (Some(deadline), Some(until)) = (deadline, self.handed_until.get()) {
            if until.is_none_or(|until| deadline < until) {
                self.handed_until.set(Some(Some(deadline)));
                if let Some(watcher) = self.watcher.borrow().as_ref() {
                    watcher.nudge();
                }
            }
        }
        if !self.driving.replace(true) {
            glommio::spawn_local(drive(self.clone())).detach();
        }
        Ok(())
    }

    /// Takes every ready event from the set (without waiting) and wakes its waiters; how many
    /// events there were.
    fn collect(&self, events: &mut [EpollEvent], woken: &mut Vec<Waker>) -> usize {
        let count = loop {
            match self.epoll.wait(events, 0) {
                Ok(count) => break count,
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    // Only a broken descriptor gets here; end every wait rather than hang.
                    self.failed.set(Some(errno));
                    self.slots.borrow_mut().wake_all(woken);
                    return 0;
                }
            }
        };
        {
            let mut slots = self.slots.borrow_mut();
            for event in &events[..count] {
                slots.ready(event.data(), event.events(), woken);
            }
        }
        count
    }

    fn watcher(&self) -> io::Result<std::cell::RefMut<'_, Watcher>> {
        let mut watcher = self.watcher.borrow_mut();
        if watcher.is_none() {
            *watcher = Some(Watcher::start(self.epoll.clone())?);
        }
        Ok(std::cell::RefMut::map(watcher, |watcher| {
            watcher.as_mut().expect("set above")
        }))
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.get_mut().take() {
            watcher.stop();
        }
    }
}

/// Resets [`Poller::driving`] however the driver ends (its executor may drop it).
struct Driving(Rc<Poller>);

impl Drop for Driving {
    fn drop(&mut self) {
        self.0.driving.set(false);
        self.0.driver_parked.borrow_mut().take();
    }
}

/// The driver: polls the set once per executor turn while tasks wait on sockets; parks while
/// none does; hands the set to the watcher after [`READINESS_SPIN`] without an event; ends when
/// the set is empty.
async fn drive(poller: Rc<Poller>) {
    let driving = Driving(poller);
    let poller = &driving.0;
    let mut events = vec![EpollEvent::empty(); EVENTS_PER_WAIT];
    let mut woken = Vec::new();
    let mut last_event = Instant::now();
    let mut operations = poller.operations.get();
    loop {
        let count = poller.collect(&mut events, &mut woken);
        // Only events that end a wait count as activity: a socket reports room to write
        // whenever its peer reads, with nobody waiting for it.
        let activity = !woken.is_empty();
        let now = Instant::now();
        poller.slots.borrow_mut().expire(now, &mut woken);
        for waker in woken.drain(..) {
            waker.wake();
        }
        if activity || poller.operations.get() != operations {
            operations = poller.operations.get();
            last_event = now;
        }
        let (live, waiters) = {
            let slots = poller.slots.borrow();
            (slots.live, slots.waiters)
        };
        if live == 0 || poller.failed.get().is_some() {
            return;
        }
        if waiters == 0 {
            // Woken by the next wait on any socket.
            poll_fn(|context| {
                let mut parked = poller.driver_parked.borrow_mut();
                if parked.is_none() && poller.slots.borrow().waiters == 0 {
                    *parked = Some(context.waker().clone());
                    Poll::Pending
                } else {
                    parked.take();
                    Poll::Ready(())
                }
            })
            .await;
            last_event = Instant::now();
            continue;
        }
        if count == events.len() || now.duration_since(last_event) < READINESS_SPIN {
            next_turn().await;
            continue;
        }
        // The watcher sleeps no later than the earliest deadline.
        let until = poller.slots.borrow().next_deadline;
        // Quiet: the watcher wakes this task when any socket of the set is ready.
        let mut handed = false;
        let watched = poll_fn(|context| {
            if handed {
                return Poll::Ready(Ok(()));
            }
            handed = true;
            poller.handovers.set(poller.handovers.get() + 1);
            match poller.watcher() {
                Ok(mut watcher) => {
                    watcher.watch(context.waker().clone(), until);
                    poller.handed_until.set(Some(until));
                    Poll::Pending
                }
                Err(error) => Poll::Ready(Err(error)),
            }
        })
        .await;
        poller.handed_until.set(None);
        if watched.is_err() {
            // No thread to watch with: keep polling, at a cost in CPU, rather than stall.
            next_turn().await;
        }
        last_event = Instant::now();
    }
}

/// Completes after glommio has polled its rings once more: a timer due a microsecond from now
/// is still pending when first polled, and the reactor fires it at its next turn.
async fn next_turn() {
    glommio::timer::sleep(Duration::from_micros(1)).await;
}

/// The watcher thread of one executor's set (see the module docs).
struct Watcher {
    shared: Arc<WatchShared>,
    thread: Option<JoinHandle<()>>,
}

struct WatchShared {
    state: Mutex<WatchState>,
    handed: Condvar,
    /// Written to stop the thread out of `poll`.
    stop_fd: OwnedFd,
    /// Written to end the thread's `poll` early (a deadline earlier than its timeout came).
    nudge_fd: OwnedFd,
}

#[derive(Default)]
struct WatchState {
    waker: Option<Waker>,
    /// Wake the driver by then even if no socket is ready: a waiter's deadline.
    until: Option<Instant>,
    stop: bool,
}

impl Watcher {
    fn start(epoll: Arc<Epoll>) -> io::Result<Watcher> {
        let stop_fd = eventfd(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        let nudge_fd = eventfd(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        let shared = Arc::new(WatchShared {
            state: Mutex::new(WatchState::default()),
            handed: Condvar::new(),
            stop_fd,
            nudge_fd,
        });
        let thread = std::thread::Builder::new()
            .name("coregrid-readiness".into())
            .spawn({
                let shared = shared.clone();
                move || watch(&epoll, &shared)
            })?;
        Ok(Watcher {
            shared,
            thread: Some(thread),
        })
    }

    /// Hands the set over: `waker` is woken once any socket of it is ready, or at `until`.
    fn watch(&mut self, waker: Waker, until: Option<Instant>) {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.waker = Some(waker);
        state.until = until;
        self.shared.handed.notify_one();
    }

    /// Ends the thread's current sleep: it wakes the driver, which hands the set over again
    /// with the deadline that is now the earliest.
    fn nudge(&self) {
        let one = 1u64.to_ne_bytes();
        // Fails only if the counter would overflow, which the drain after each poll prevents.
        let _ = nix::unistd::write(self.shared.nudge_fd.as_raw_fd(), &one);
    }

    fn stop(mut self) {
        {
            let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            state.stop = true;
            self.shared.handed.notify_one();
        }
        let one = 1u64.to_ne_bytes();
        // Fails only if the counter would overflow, which one write cannot make it.
        let _ = nix::unistd::write(self.shared.stop_fd.as_raw_fd(), &one);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The watcher thread: waits to be handed the set, sleeps until it is ready, wakes the driver.
fn watch(epoll: &Epoll, shared: &WatchShared) {
    loop {
        let until = {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            while state.waker.is_none() && !state.stop {
                state = shared
                    .handed
                    .wait(state)
                    .unwrap_or_else(|error| error.into_inner());
            }
            if state.stop {
                return;
            }
            state.until
        };
        // poll(2) counts milliseconds: round up, so that the driver wakes at or after the
        // deadline, never just before it (and sleeps again).
        let timeout = until.map_or(-1, |until| {
            let left = until.saturating_duration_since(Instant::now());
            i32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
        });
        let mut fds = [
            PollFd::new(&epoll.0, PollFlags::POLLIN),
            PollFd::new(&shared.stop_fd, PollFlags::POLLIN),
            PollFd::new(&shared.nudge_fd, PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => {
                // Cannot happen with valid descriptors; wake the driver, which polls.
            }
        }
        // Reset the nudge (a read of a non-blocking eventfd that was not written fails with
        // EAGAIN, which is fine).
        let mut counter = [0u8; 8];
        let _ = nix::unistd::read(shared.nudge_fd.as_raw_fd(), &mut counter);
        let waker = {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.stop {
                return;
            }
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A non-blocking socket in the current executor's set, with what its waiting tasks need.
/// Dropping it closes the descriptor, which takes it out of the set.
pub(super) struct Registered<S: AsFd> {
    token: u64,
    poller: Rc<Poller>,
    socket: S,
}

impl<S: AsFd> std::fmt::Debug for Registered<S> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Registered")
            .field("fd", &self.socket.as_fd().as_raw_fd())
            .field("token", &self.token)
            .finish()
    }
}

impl<S: AsFd> Registered<S> {
    /// Registers `socket`, which must be non-blocking, with the current executor's set.
    pub(super) fn new(socket: S) -> io::Result<Registered<S>> {
        let poller = Poller::current()?;
        let token = poller.register(socket.as_fd())?;
        Ok(Registered {
            token,
            poller,
            socket,
        })
    }

    /// The socket.
    pub(super) fn socket(&self) -> &S {
        &self.socket
    }

    /// Runs `operation` until it does not report [`io::ErrorKind::WouldBlock`], waiting for
    /// the socket to be ready for `direction` in between, for at most `timeout` in all. The
    /// first try reads no clock: a deadline is set only if the task has to wait, and it is no
    /// timer: the slot holds it, and the driver ends the wait when it comes (see
    /// [`Slots::expire`]; a glommio timer a wait cost a clock read, a timer-map insert and
    /// removal, and the reactor's scan of the map every turn: 6-8% of a shard's CPU at 64
    /// clients in session 19). `drained` says of a result that the socket was left not ready
    /// (a short `recv` or `send`): the next call then waits for an event before it tries.
    pub(super) async fn io<T>(
        &self,
        direction: Direction,
        timeout: Option<Duration>,
        operation: impl FnMut(&S) -> io::Result<T>,
        drained: impl Fn(&T) -> bool,
    ) -> Result<T, TransportError> {
        let mut operation = operation;
        if let Some(done) = self.try_io(direction, &mut operation, &drained) {
            return done.map_err(Into::into);
        }
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        let mut waiting = false;
        poll_fn(|context| {
            if let Some(done) = self.try_io(direction, &mut operation, &drained) {
                return Poll::Ready(done.map_err(Into::into));
            }
            // Only a wait of this call can have expired: the first registration clears
            // whatever an earlier, abandoned wait left.
            if waiting
                && self
                    .poller
                    .slots
                    .borrow_mut()
                    .take_expired(self.token, direction)
            {
                let timeout = timeout.expect("only a wait with a deadline expires");
                return Poll::Ready(Err(TransportError::TimedOut(timeout)));
            }
            waiting = true;
            match self
                .poller
                .wait(self.token, direction, context.waker(), deadline)
            {
                Ok(()) => Poll::Pending,
                Err(error) => Poll::Ready(Err(error.into())),
            }
        })
        .await
    }

    /// One try of `operation` if the socket may be ready: `None` if it is not or would block
    /// (the socket is then known not ready until its next event).
    fn try_io<T>(
        &self,
        direction: Direction,
        operation: &mut impl FnMut(&S) -> io::Result<T>,
        drained: &impl Fn(&T) -> bool,
    ) -> Option<io::Result<T>> {
        let poller = &self.poller;
        if !poller
            .slots
            .borrow_mut()
            .may_be_ready(self.token, direction)
        {
            return None;
        }
        poller.tries.set(poller.tries.get() + 1);
        match attempt(&self.socket, operation) {
            Ok(Some(value)) => {
                poller
                    .operations
                    .set(poller.operations.get().wrapping_add(1));
                if drained(&value) {
                    poller.slots.borrow_mut().not_ready(self.token, direction);
                }
                Some(Ok(value))
            }
            Ok(None) => {
                poller.slots.borrow_mut().not_ready(self.token, direction);
                None
            }
            Err(error) => Some(Err(error)),
        }
    }
}

/// One try of `operation`: `None` if it would block. Retries when a signal interrupted it.
fn attempt<S, T>(
    socket: &S,
    operation: &mut impl FnMut(&S) -> io::Result<T>,
) -> io::Result<Option<T>> {
    loop {
        match operation(socket) {
            Ok(value) => return Ok(Some(value)),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
}

impl<S: AsFd> Drop for Registered<S> {
    fn drop(&mut self) {
        self.poller.deregister(self.token);
    }
}

#[cfg(test)]
mod tests {
    //! The readiness set under the transport's own API: waits that end on the busy path and on
    //! the quiet one (handed to the watcher thread), timeouts and dropped reads that lose
    //! nothing, more ready sockets than one `epoll_wait` takes, a writer held back by a slow
    //! reader, and executors one after another on one thread.

    use super::Poller;
    use crate::transport::{Connection, Listener, SocketReader, SocketWriter, TransportError};
    use futures::future::{select, Either};
    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::pin::pin;
    use std::rc::Rc;
    use std::time::Duration;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn on_executor<T>(test: impl std::future::Future<Output = T> + 'static) -> T {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(512 * 1024)
            .make()
            .expect("a glommio executor (io_uring and locked memory)")
            .run(test)
    }

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    /// Runs `serve` on a new thread's executor with a listener bound on loopback; returns the
    /// listener's address and the thread.
    fn serve_on_thread<T: Send + 'static, Fut: std::future::Future<Output = T> + 'static>(
        serve: impl FnOnce(Listener) -> Fut + Send + 'static,
    ) -> (SocketAddr, std::thread::JoinHandle<T>) {
        let (address_out, address_in) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            on_executor(async move {
                let listener = Listener::bind(loopback()).unwrap();
                address_out.send(listener.local_addr()).unwrap();
                serve(listener).await
            })
        });
        (address_in.recv().unwrap(), server)
    }

    /// Accepts connections and echoes every byte back, each connection on its own task.
    fn echo_server(listener: Listener) {
        glommio::spawn_local(async move {
            while let Ok(connection) = listener.accept().await {
                glommio::spawn_local(async move {
                    let (mut reader, mut writer) = connection.into_halves();
                    let mut buffer = vec![0u8; 4096];
                    loop {
                        match reader.read(&mut buffer, Some(TIMEOUT)).await {
                            Ok(0) | Err(_) => break,
                            Ok(count) => {
                                if writer
                                    .write_all(&buffer[..count], Some(TIMEOUT))
                                    .await
                                    .is_err()
                                {
                                    break;
                                }
                            }
                        }
                    }
                })
                .detach();
            }
        })
        .detach();
    }

    /// Both ends of one loopback connection: (connected, accepted).
    async fn connected_pair() -> (Connection, Connection) {
        let listener = Listener::bind(loopback()).unwrap();
        let client = Connection::connect(listener.local_addr(), TIMEOUT)
            .await
            .unwrap();
        (client, listener.accept().await.unwrap())
    }

    async fn read_exactly(reader: &mut SocketReader, mut buffer: &mut [u8]) {
        while !buffer.is_empty() {
            let count = reader.read(buffer, Some(TIMEOUT)).await.expect("read");
            assert_ne!(count, 0, "the peer closed early");
            buffer = &mut buffer[count..];
        }
    }

    #[test]
    fn a_request_read_makes_one_recv() {
        // A client thread sends a request, waits for its answer, and sends the next: each time
        // the shard's read waits first. It must wait without trying `recv` (the socket was
        // drained by the last read), and try once when the request is there; each answer is
        // one `send`. Without the readiness flags a read tried three times.
        const ROUNDS: u64 = 300;
        let (address, server) = serve_on_thread(|listener| async move {
            let poller = Poller::current().unwrap();
            let (mut reader, mut writer) = listener.accept().await.unwrap().into_halves();
            let tries = poller.tries.get();
            // Room for more than a request, as a frame decoder's buffer has.
            let mut buffer = [0u8; 4096];
            for _ in 0..ROUNDS {
                let mut received = 0;
                while received < 64 {
                    let count = reader.read(&mut buffer[received..], Some(TIMEOUT)).await;
                    let count = count.expect("read");
                    assert_ne!(count, 0, "the client closed early");
                    received += count;
                }
                assert_eq!(received, 64, "one request at a time");
                writer
                    .write_all(&buffer[..64], Some(TIMEOUT))
                    .await
                    .unwrap();
            }
            poller.tries.get() - tries
        });
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        for round in 0..ROUNDS {
            // A pause, so that the shard's read is waiting when the request comes (the shape
            // of the workload, not a wait for a condition).
            std::thread::sleep(Duration::from_micros(200));
            let request = [round as u8; 64];
            stream.write_all(&request).unwrap();
            let mut answer = [0u8; 64];
            stream.read_exact(&mut answer).unwrap();
            assert_eq!(answer, request);
        }
        let tries = server.join().unwrap();
        println!("{tries} socket operations tried for {ROUNDS} requests and answers");
        // One recv and one send a round; a few more where a request came in two parts or a
        // stale event woke a read.
        assert!(
            tries <= ROUNDS * 2 + ROUNDS / 4,
            "{tries} socket operations tried for {ROUNDS} rounds"
        );
    }

    #[test]
    fn the_end_of_a_stream_after_its_last_bytes_is_read() {
        // The peer's last bytes and its FIN come while the shard's read waits, so one event
        // may report both: the read that takes the bytes is short, and no edge follows for
        // the FIN. The next read must still see the end of the stream.
        for round in 0..20 {
            let (waiting_out, waiting_in) = std::sync::mpsc::channel();
            let (address, server) = serve_on_thread(move |listener| async move {
                let poller = Poller::current().unwrap();
                let (mut reader, _writer) = listener.accept().await.unwrap().into_halves();
                let mut buffer = [0u8; 4096];
                let reading = glommio::spawn_local(async move {
                    let first = reader.read(&mut buffer, Some(TIMEOUT)).await;
                    let second = reader.read(&mut buffer, Some(TIMEOUT)).await;
                    (
                        first.map_err(|e| e.to_string()),
                        second.map_err(|e| e.to_string()),
                    )
                });
                // Once the read has tried and waits, the peer may send.
                let deadline = std::time::Instant::now() + TIMEOUT;
                while poller.slots.borrow().waiters == 0 {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the read never waited"
                    );
                    glommio::timer::sleep(Duration::from_micros(50)).await;
                }
                waiting_out.send(()).unwrap();
                reading.await
            });
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            waiting_in.recv().unwrap();
            stream.write_all(b"last bytes").unwrap();
            stream.shutdown(std::net::Shutdown::Write).unwrap();
            let (first, second) = server.join().unwrap();
            assert_eq!(first, Ok(10), "round {round}: the last bytes");
            assert_eq!(second, Ok(0), "round {round}: the end of the stream");
        }
    }

    #[test]
    fn echoes_through_busy_and_quiet_periods() {
        // Clients are plain threads with blocking sockets, so the shard is quiet whenever they
        // pause: its waits must then end through the watcher thread.
        let (stop_out, stop_in) = std::sync::mpsc::channel();
        let (address, server) = serve_on_thread(move |listener| async move {
            let poller = Poller::current().unwrap();
            echo_server(listener);
            // Serves until the clients are done: they connect to this one to say so.
            let stop = Listener::bind(loopback()).unwrap();
            stop_out.send(stop.local_addr()).unwrap();
            let _last = stop.accept().await.unwrap();
            poller.handovers.get()
        });
        let stop = stop_in.recv().unwrap();
        let clients: Vec<_> = (0..16u8)
            .map(|client| {
                std::thread::spawn(move || {
                    let mut stream = std::net::TcpStream::connect(address).unwrap();
                    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                    for round in 0..40u8 {
                        let message = vec![client ^ round; 1 + usize::from(round) * 37];
                        stream.write_all(&message).unwrap();
                        let mut echoed = vec![0u8; message.len()];
                        stream.read_exact(&mut echoed).unwrap();
                        assert_eq!(echoed, message, "client {client} round {round}");
                        if round % 8 == 7 {
                            // A quiet shard: well past the spin before it hands the set over.
                            std::thread::sleep(super::READINESS_SPIN * 20);
                        }
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        std::net::TcpStream::connect(stop).unwrap();
        let handovers = server.join().unwrap();
        assert!(
            handovers > 0,
            "the shard never handed its set to the watcher, so the quiet path went untested"
        );
    }

    #[test]
    fn a_timed_out_or_dropped_read_loses_nothing() {
        on_executor(async {
            let (client, server) = connected_pair().await;
            let (mut reader, _writer) = server.into_halves();
            let (_client_reader, mut client_writer) = client.into_halves();
            let mut buffer = [0u8; 16];
            let timed_out = reader
                .read(&mut buffer, Some(Duration::from_millis(5)))
                .await;
            assert!(matches!(timed_out, Err(TransportError::TimedOut(_))));
            // A read dropped while it waits (raced against a timer that wins).
            {
                let read = pin!(reader.read(&mut buffer, None));
                let timer = pin!(glommio::timer::sleep(Duration::from_millis(5)));
                assert!(matches!(select(read, timer).await, Either::Right(_)));
            }
            client_writer
                .write_all(b"after", Some(TIMEOUT))
                .await
                .unwrap();
            let mut got = [0u8; 5];
            read_exactly(&mut reader, &mut got).await;
            assert_eq!(&got, b"after");
        });
    }

    /// Reads from a socket nothing arrives on, with `timeout`: the read must time out, not
    /// before `timeout` (and not never: a guard timer fails the test).
    async fn expires_on_time(reader: &mut SocketReader, timeout: Duration, regime: &str) {
        let mut buffer = [0u8; 16];
        let begun = std::time::Instant::now();
        let read = pin!(reader.read(&mut buffer, Some(timeout)));
        let guard = pin!(glommio::timer::sleep(TIMEOUT));
        match select(read, guard).await {
            Either::Left((Err(TransportError::TimedOut(_)), _)) => {}
            Either::Left((other, _)) => panic!("{regime}: {other:?} instead of a timeout"),
            Either::Right(_) => panic!("{regime}: the deadline never ended the wait"),
        }
        assert!(begun.elapsed() >= timeout, "{regime}: the wait ended early");
    }

    #[test]
    fn a_deadline_ends_a_wait_whether_the_shard_is_busy_or_quiet() {
        // Deadlines are kept in the slots and ended by the driver: on its turns while other
        // sockets keep it busy, and through the watcher's poll timeout while it is quiet.
        // Neither may end a wait early, and an expired wait leaves nothing behind for the
        // socket's next wait.
        const SHORT: Duration = Duration::from_millis(20);
        on_executor(async {
            let listener = Listener::bind(loopback()).unwrap();
            let echo = listener.local_addr();
            echo_server(listener);
            let (client, server) = connected_pair().await;
            let (mut reader, _writer) = server.into_halves();
            let (_client_reader, mut client_writer) = client.into_halves();
            let busy = Rc::new(std::cell::Cell::new(true));
            let pinger = glommio::spawn_local({
                let busy = busy.clone();
                async move {
                    let (mut reader, mut writer) = Connection::connect(echo, TIMEOUT)
                        .await
                        .unwrap()
                        .into_halves();
                    let mut rounds = 0u64;
                    while busy.get() {
                        writer.write_all(b"ping", Some(TIMEOUT)).await.unwrap();
                        let mut pong = [0u8; 4];
                        read_exactly(&mut reader, &mut pong).await;
                        rounds += 1;
                    }
                    rounds
                }
            });
            expires_on_time(&mut reader, SHORT, "busy").await;
            busy.set(false);
            assert!(pinger.await > 0, "the shard was never busy");
            let handovers = Poller::current().unwrap().handovers.get();
            expires_on_time(&mut reader, SHORT, "quiet").await;
            assert!(
                Poller::current().unwrap().handovers.get() > handovers,
                "the quiet wait never went to the watcher"
            );
            // A wait registered while the set is with the watcher, by a task a timer woke,
            // whose deadline is earlier than the one the watcher sleeps until (the only other
            // wait is a read without a timeout; older deadlines of ended waits may linger).
            let (other_client, other_server) = connected_pair().await;
            let (mut other_reader, _other_writer) = other_server.into_halves();
            let waiting = glommio::spawn_local(async move {
                let mut buffer = [0u8; 16];
                let read = other_reader.read(&mut buffer, None).await;
                drop(read);
            });
            let handovers = Poller::current().unwrap().handovers.get();
            let deadline = std::time::Instant::now() + TIMEOUT;
            let sleeps_past = |poller: &Poller| {
                poller.handed_until.get().is_some_and(|until| {
                    until.is_none_or(|until| until > std::time::Instant::now() + SHORT * 2)
                })
            };
            while !sleeps_past(&Poller::current().unwrap()) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the set never went to a watcher sleeping past the next deadline"
                );
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            assert!(Poller::current().unwrap().handovers.get() > handovers);
            expires_on_time(&mut reader, SHORT, "registered while handed over").await;
            drop(other_client);
            waiting.await;
            // The next wait has a long deadline and gets the bytes that come after the short
            // one expired. The writer runs only once the read waits (one thread); its pause is
            // the workload's shape, turns of the driver while the long read waits, and no
            // assertion depends on its length.
            let writing = glommio::spawn_local(async move {
                glommio::timer::sleep(SHORT).await;
                client_writer
                    .write_all(b"later", Some(TIMEOUT))
                    .await
                    .unwrap();
                client_writer
            });
            let mut got = [0u8; 5];
            read_exactly(&mut reader, &mut got).await;
            assert_eq!(&got, b"later");
            drop(writing.await);
        });
    }

    #[test]
    fn more_ready_sockets_than_one_wait_takes() {
        let count = super::EVENTS_PER_WAIT + 44;
        on_executor(async move {
            let listener = Listener::bind(loopback()).unwrap();
            let address = listener.local_addr();
            echo_server(listener);
            let mut halves = Vec::new();
            for _ in 0..count {
                let connection = Connection::connect(address, TIMEOUT).await.unwrap();
                halves.push(connection.into_halves());
            }
            // Every client writes, then every client reads: all sockets are ready at once.
            for (index, (_, writer)) in halves.iter_mut().enumerate() {
                writer
                    .write_all(&(index as u32).to_le_bytes(), Some(TIMEOUT))
                    .await
                    .unwrap();
            }
            let readers: Vec<_> = halves
                .into_iter()
                .enumerate()
                .map(|(index, (mut reader, writer))| {
                    glommio::spawn_local(async move {
                        let mut got = [0u8; 4];
                        read_exactly(&mut reader, &mut got).await;
                        assert_eq!(u32::from_le_bytes(got), index as u32);
                        drop(writer);
                    })
                })
                .collect();
            for reader in readers {
                reader.await;
            }
        });
    }

    #[test]
    fn a_writer_waits_for_a_slow_reader_and_a_closed_peer_is_an_error() {
        on_executor(async {
            let (client, server) = connected_pair().await;
            let (mut reader, _) = server.into_halves();
            let (_, mut writer): (SocketReader, SocketWriter) = client.into_halves();
            // Far more than the socket buffers hold: the writer must wait for room.
            let sent: Rc<Vec<u8>> = Rc::new((0..16 << 20).map(|byte| (byte % 251) as u8).collect());
            let writing = glommio::spawn_local({
                let sent = sent.clone();
                async move {
                    writer.write_all(&sent, Some(TIMEOUT)).await.unwrap();
                    writer
                }
            });
            let mut received = vec![0u8; sent.len()];
            read_exactly(&mut reader, &mut received).await;
            assert!(received == *sent, "the stream arrived changed");
            let mut writer = writing.await;
            // The reading side goes away: writing on is an error (no SIGPIPE), not a hang.
            drop(reader);
            let mut failed = false;
            for _ in 0..64 {
                if writer
                    .write_all(&[7u8; 65536], Some(TIMEOUT))
                    .await
                    .is_err()
                {
                    failed = true;
                    break;
                }
            }
            assert!(failed, "writes to a closed peer kept succeeding");
        });
    }

    #[test]
    fn executors_one_after_another_on_one_thread() {
        for round in 0..3u8 {
            on_executor(async move {
                let listener = Listener::bind(loopback()).unwrap();
                let address = listener.local_addr();
                echo_server(listener);
                let (mut reader, mut writer) = Connection::connect(address, TIMEOUT)
                    .await
                    .unwrap()
                    .into_halves();
                writer.write_all(&[round; 3], Some(TIMEOUT)).await.unwrap();
                let mut got = [0u8; 3];
                read_exactly(&mut reader, &mut got).await;
                assert_eq!(got, [round; 3]);
            });
        }
    }

    #[test]
    fn connecting_to_a_closed_port_fails() {
        on_executor(async {
            let address = {
                let listener = std::net::TcpListener::bind(loopback()).unwrap();
                listener.local_addr().unwrap()
            };
            let error = Connection::connect(address, TIMEOUT).await.unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
        });
    }
}
