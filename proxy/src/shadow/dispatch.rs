//! The receiving side of a shadow cluster's queue. A dispatcher owns its receiver and runs
//! as one task: it takes a copy, waits for an in-flight slot, and starts the exchange. It
//! ends by itself once its queue is closed (every `ShadowQueue` dropped: the snapshot that
//! held it was replaced and the last request using it is done): what was still queued then
//! gets `shadow_drain` to go out, as at shutdown, and the rest is counted `shutdown`. At
//! shutdown, `Dispatchers::drain` gives every dispatcher, of every config generation, one
//! deadline: the queue stops taking copies, what is queued is sent until the deadline, what
//! is left is counted `shutdown`, and copies still in flight end as `aborted`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::exchange::{self, Exchanger};
use super::queue::{Circuit, ShadowJob, ShadowQueue};
use crate::config::ClusterConfig;
use crate::metrics::{DropReason, Leg, Metrics, ShadowClusterMetrics};
use crate::upstream::{Cluster, Resolve};

/// At most this many queued copies are taken in a row without yielding to the runtime.
const BATCH: u32 = 32;

/// The drain deadline every dispatcher watches: `None` while running.
type DrainWatch = watch::Receiver<Option<Instant>>;

/// One shadow cluster's dispatcher: its queue's receiver, its own client, its in-flight cap.
pub(crate) struct Dispatcher {
    rx: mpsc::Receiver<ShadowJob>,
    /// Completes when the `ShadowQueue` is dropped (its config retired and the last
    /// request using it done).
    retired: oneshot::Receiver<()>,
    /// Once retired, what is still queued gets this long, as at shutdown.
    retire_within: Duration,
    exchanger: Arc<Exchanger>,
    in_flight: Arc<Semaphore>,
    metrics: ShadowClusterMetrics,
}

/// A shadow cluster as one config generation uses it: the queue's sending side (for the
/// routes) and its dispatcher (to be started).
pub(crate) fn shadow_cluster(
    name: &str,
    c: &ClusterConfig,
    metrics: &Metrics,
    retire_within: Duration,
    resolver: &Arc<dyn Resolve>,
) -> (Arc<ShadowQueue>, Dispatcher) {
    let (tx, rx) = mpsc::channel(c.shadow_queue);
    let (retiring, retired) = oneshot::channel();
    let upstream = Cluster::new(name, c, metrics.cluster(name, Leg::shadow), resolver);
    let circuit = Arc::new(Circuit::new(name, upstream.availability()));
    let cm = metrics.shadow_cluster(name);
    let queue = ShadowQueue::new(
        tx,
        retiring,
        c.shadow_max_bytes,
        circuit.clone(),
        cm.clone(),
    );
    let dispatcher = Dispatcher {
        rx,
        retired,
        retire_within,
        exchanger: Arc::new(Exchanger {
            name: name.to_string(),
            upstream,
            circuit,
            in_flight: cm.in_flight.clone(),
        }),
        in_flight: Arc::new(Semaphore::new(c.shadow_max_in_flight)),
        metrics: cm,
    };
    (Arc::new(queue), dispatcher)
}

impl Dispatcher {
    /// The queue's receiving side, for tests that take copies off by hand.
    #[cfg(test)]
    pub(crate) fn into_receiver(self) -> mpsc::Receiver<ShadowJob> {
        self.rx
    }

    /// Runs until the queue is closed and empty and the copies in flight are done, or
    /// until the drain deadline.
    pub(crate) async fn run(mut self, mut drain: DrainWatch) {
        let mut tasks = JoinSet::new();
        let mut deadline = *drain.borrow_and_update();
        let mut in_a_row = 0;
        if deadline.is_some() {
            self.rx.close();
        }
        loop {
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::error!(shadow = %self.exchanger.name, "shadow task panicked; the primary is unaffected");
                }
            }
            // A copy already queued is taken without the select below (its futures cost
            // more than the copy's hand-off), at most `BATCH` in a row: then the select's
            // `recv` spends the task's budget and lets the worker run other tasks.
            let queued =
                if in_a_row < BATCH && deadline.is_none() && !drain.has_changed().unwrap_or(true) {
                    if self.retired_now() {
                        deadline = Some(Instant::now() + self.retire_within);
                        None
                    } else {
                        self.rx.try_recv().ok()
                    }
                } else {
                    None
                };
            in_a_row = if queued.is_some() { in_a_row + 1 } else { 0 };
            let next = if queued.is_some() {
                queued
            } else {
                tokio::select! {
                    _ = sleep_until(deadline) => break,
                    _ = &mut self.retired, if deadline.is_none() => {
                        deadline = Some(Instant::now() + self.retire_within);
                        continue;
                    }
                    changed = drain.changed(), if deadline.is_none() => {
                        deadline = self.draining(changed, &drain);
                        continue;
                    }
                    job = self.rx.recv() => job,
                }
            };
            // `None`: every sender is gone and the queue is empty.
            let Some(job) = next else { break };
            self.metrics.queue_depth.dec();
            let permit = match self.in_flight.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => loop {
                    tokio::select! {
                        p = self.in_flight.clone().acquire_owned() => break p.ok(),
                        _ = &mut self.retired, if deadline.is_none() => {
                            deadline = Some(Instant::now() + self.retire_within);
                        }
                        changed = drain.changed(), if deadline.is_none() => {
                            deadline = self.draining(changed, &drain);
                        }
                        _ = sleep_until(deadline) => break None,
                    }
                },
            };
            let Some(permit) = permit else {
                job.spec.dropped(DropReason::shutdown, &job.path);
                break;
            };
            job.spec.metrics.sent.inc();
            // Boxed: tokio moves a task's future whole as the task starts and ends, and
            // the exchange's is large; a box moves as a pointer.
            tasks.spawn(Box::pin(exchange::send(
                self.exchanger.clone(),
                job,
                permit,
            )));
        }
        // Drain deadline reached, or the queue closed and empty: count what is left, then
        // let the copies in flight finish, at most until the drain deadline (for a retired
        // queue: `retire_within` from now).
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.retire_within);
        self.rx.close();
        while let Ok(job) = self.rx.try_recv() {
            self.metrics.queue_depth.dec();
            job.spec.dropped(DropReason::shutdown, &job.path);
        }
        let _ = tokio::time::timeout_at(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.shutdown().await;
    }

    /// Whether the queue has been retired, without waiting: polled with a no-op waker (the
    /// select in `run` registers the real one while `deadline` is unset; once this is true,
    /// `run` sets it and never polls `retired` again).
    fn retired_now(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(&mut self.retired).poll(&mut cx).is_ready()
    }

    /// The drain deadline once it is set (now, if its sender is gone); closes the queue.
    fn draining(
        &mut self,
        changed: Result<(), watch::error::RecvError>,
        drain: &DrainWatch,
    ) -> Option<Instant> {
        let deadline = match changed {
            Ok(()) => *drain.borrow(),
            Err(_) => Some(Instant::now()),
        };
        if deadline.is_some() {
            self.rx.close();
        }
        deadline
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Every running dispatcher, of every config generation still in use.
pub(crate) struct Dispatchers {
    tasks: Mutex<JoinSet<()>>,
    drain: watch::Sender<Option<Instant>>,
}

impl Default for Dispatchers {
    fn default() -> Self {
        Dispatchers {
            tasks: Mutex::new(JoinSet::new()),
            drain: watch::channel(None).0,
        }
    }
}

impl Dispatchers {
    /// Starts dispatchers (a new config's); reaps the ones that have ended.
    pub(crate) fn start(&self, dispatchers: Vec<Dispatcher>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        while tasks.try_join_next().is_some() {}
        for d in dispatchers {
            tasks.spawn(d.run(self.drain.subscribe()));
        }
    }

    /// Dispatchers still running (ended ones are reaped first).
    pub(crate) fn running(&self) -> usize {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        while tasks.try_join_next().is_some() {}
        tasks.len()
    }

    /// Stops every queue taking copies, sends what is queued for up to `within`, abandons
    /// the rest (counted `shutdown`) and waits for the dispatchers to end.
    pub(crate) async fn drain(&self, within: Duration) {
        let deadline = Instant::now() + within;
        self.drain.send_replace(Some(deadline));
        let mut tasks =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        // Each dispatcher returns by the deadline; the margin covers task teardown.
        let _ = tokio::time::timeout_at(deadline + Duration::from_secs(1), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.shutdown().await;
    }
}
