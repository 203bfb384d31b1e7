//! A single-threaded executor for the simulation: no threads, no wall clock, no runtime.
//!
//! Every future in the simulation returns `Pending` only at explicit points (a simulated
//! request yields once, a sleep waits for simulated time), so one poll moves a task to its
//! next such point. The driver picks which task to poll from the seed; a crash is the
//! task's future dropped between two polls, exactly what a process dying at that await
//! point looks like to everything it shared.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use reseq_core::{Clock, Millis};

/// A future that is pending once: the point where another task may run.
pub struct Yield(bool);

pub fn yield_now() -> Yield {
    Yield(false)
}

impl Future for Yield {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Simulated time, shared by everything; only the driver moves it.
#[derive(Clone, Default)]
pub struct SimTime(Arc<AtomicU64>);

impl SimTime {
    pub fn new(start: Millis) -> SimTime {
        SimTime(Arc::new(AtomicU64::new(start.0)))
    }
    pub fn now(&self) -> Millis {
        Millis(self.0.load(Ordering::SeqCst))
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

/// One worker's view of time: the simulated time off by a fixed skew (SPEC §4 must hold
/// with clocks that disagree a little).
#[derive(Clone)]
pub struct SkewedClock {
    pub time: SimTime,
    pub skew_ms: i64,
}

impl Clock for SkewedClock {
    fn now(&self) -> Millis {
        Millis(self.time.now().0.saturating_add_signed(self.skew_ms))
    }
}

/// Waits until the simulated time (as `clock` sees it) reaches `until`.
pub async fn sleep_until(clock: &SkewedClock, until: Millis) {
    while clock.now() < until {
        yield_now().await;
    }
}

struct NoopWake;
impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

pub type Task<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// Polls `task` once; whether it finished.
pub fn poll_once(task: &mut Task<'_>) -> bool {
    let waker = Waker::from(Arc::new(NoopWake));
    let mut cx = Context::from_waker(&waker);
    task.as_mut().poll(&mut cx).is_ready()
}
