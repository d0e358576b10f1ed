//! What one request's access-log line learns from the request side: how many body bytes
//! the tee passed from the client to the primary, and what became of the request at each
//! shadow policy of its route (refused at admission with a reason, queued, or dropped later
//! with a reason). It exists only when the access log is on (one allocation per routed
//! request then); with the log off nothing here is built and the tee counts nothing.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use super::policy::ShadowPolicy;
use crate::metrics::DropReason;

/// No decision yet (an admitted copy whose body or primary answer has not come).
const UNDECIDED: u8 = 0;
/// Offered to the shadow's queue and accepted.
const QUEUED: u8 = 1;
/// Dropped: `DROPPED + reason as u8`.
const DROPPED: u8 = 2;
/// Set on the policies that admitted the request; the order of these among the route's
/// policies is the order of `Plan::targets`.
const ADMITTED: u8 = 0x80;

/// One request's body count and shadow decisions.
pub(crate) struct Trace {
    received: AtomicU64,
    /// One slot per shadow policy of the route, in config order.
    shadows: Box<[(Arc<ShadowPolicy>, AtomicU8)]>,
}

impl Trace {
    pub(crate) fn new(policies: &[Arc<ShadowPolicy>]) -> Arc<Trace> {
        Arc::new(Trace {
            received: AtomicU64::new(0),
            shadows: policies
                .iter()
                .map(|p| (p.clone(), AtomicU8::new(UNDECIDED)))
                .collect(),
        })
    }

    /// Counts request body bytes passed on to the primary.
    pub(crate) fn add_received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Request body bytes passed on to the primary so far.
    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Policy `index` of the route admitted the request (`Ok`) or refused it.
    pub(crate) fn admission(&self, index: usize, decision: Result<(), DropReason>) {
        if let Some((_, slot)) = self.shadows.get(index) {
            slot.store(
                match decision {
                    Ok(()) => ADMITTED | UNDECIDED,
                    Err(reason) => DROPPED + reason as u8,
                },
                Ordering::Relaxed,
            );
        }
    }

    /// The copy for the `target`-th admitting policy was queued (`Ok`) or dropped.
    pub(crate) fn decided(&self, target: usize, decision: Result<(), DropReason>) {
        let slot = self
            .shadows
            .iter()
            .map(|(_, slot)| slot)
            .filter(|slot| slot.load(Ordering::Relaxed) & ADMITTED != 0)
            .nth(target);
        if let Some(slot) = slot {
            let state = match decision {
                Ok(()) => QUEUED,
                Err(reason) => DROPPED + reason as u8,
            };
            slot.store(ADMITTED | state, Ordering::Relaxed);
        }
    }
}

/// `candidate:queued,other:sampled_out` (`undecided` for an admitted copy whose body or
/// primary answer was still missing); `-` for a route without shadows.
impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.shadows.is_empty() {
            return f.write_str("-");
        }
        for (i, (policy, slot)) in self.shadows.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:", policy.spec.shadow)?;
            match slot.load(Ordering::Relaxed) & !ADMITTED {
                UNDECIDED => f.write_str("undecided")?,
                QUEUED => f.write_str("queued")?,
                n => match DropReason::ALL.get(usize::from(n - DROPPED)) {
                    Some(reason) => write!(f, "{reason:?}")?,
                    None => f.write_str("unknown")?,
                },
            }
        }
        Ok(())
    }
}
