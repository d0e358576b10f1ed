//! Where a candidate's copy and its baseline's copy of one request meet. Each deposits its
//! half (its leg and the fields it differed from the primary in) once its comparison is
//! done; the second to arrive records the paired observation in the candidate's pairs:
//! control = the baseline, shadow = the candidate. A half left alone (the other copy was
//! dropped, or never got an outcome) is counted `unpaired` when the slot goes.

use std::sync::{Arc, Mutex, PoisonError};

use crate::stats::PathEntry;
use crate::stats::pairs::{LegObs, Observation};

/// How a shadow policy takes part in pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pairing {
    /// Compared with the primary.
    Alone,
    /// Compared with the baseline policy at this index.
    Candidate { baseline: usize },
    /// The baseline of the candidate policy at this index (and compared with the primary
    /// on its own row, which shows the noise).
    Baseline { candidate: usize },
}

/// One copy's result, as a pair needs it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Half {
    pub(crate) leg: LegObs,
    /// Its comparison with the primary gave a result (not a skip).
    pub(crate) compared: bool,
    /// The fields it differed from the primary in.
    pub(crate) fields: Vec<String>,
}

/// The meeting point of one request's candidate and baseline copies.
pub(crate) struct PairSlot {
    path: Arc<PathEntry>,
    candidate: usize,
    waiting: Mutex<Option<(bool, Half)>>,
}

impl PairSlot {
    pub(crate) fn new(path: Arc<PathEntry>, candidate: usize) -> Arc<Self> {
        Arc::new(PairSlot {
            path,
            candidate,
            waiting: Mutex::new(None),
        })
    }

    /// Deposits one side's half; `is_candidate` says which.
    pub(crate) fn deposit(&self, is_candidate: bool, half: Half) {
        let other = {
            let mut w = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            match w.take() {
                Some(o) if o.0 != is_candidate => Some(o.1),
                _ => {
                    *w = Some((is_candidate, half.clone()));
                    None
                }
            }
        };
        let Some(other) = other else { return };
        let (cand, base) = if is_candidate {
            (half, other)
        } else {
            (other, half)
        };
        if let Some(stats) = self.path.shadows.get(self.candidate) {
            stats.pairs.record(&joined(cand, base));
        }
    }
}

impl Drop for PairSlot {
    fn drop(&mut self) {
        let left = self
            .waiting
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if left.is_some()
            && let Some(stats) = self.path.shadows.get(self.candidate)
        {
            stats.pairs.unpaired();
        }
    }
}

/// The paired observation: the candidate against the baseline, both compared with the
/// primary. The candidate mismatches on this request when it differs in a field the
/// baseline did not differ in.
pub(crate) fn joined(cand: Half, base: Half) -> Observation {
    let compared = cand.compared && base.compared;
    let mismatch = compared && cand.fields.iter().any(|f| !base.fields.contains(f));
    Observation {
        control: base.leg,
        shadow: cand.leg,
        compared,
        mismatch,
        paired: true,
        shadow_fields: cand.fields,
        control_fields: base.fields,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half(fields: &[&str]) -> Half {
        Half {
            leg: LegObs::default(),
            compared: true,
            fields: fields.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn a_candidate_differing_only_where_the_baseline_does_is_no_mismatch() {
        assert!(!joined(half(&["/id"]), half(&["/id", "/date"])).mismatch);
        assert!(joined(half(&["/id", "/price"]), half(&["/id"])).mismatch);
        let mut skipped = half(&["/price"]);
        skipped.compared = false;
        assert!(!joined(half(&["/price"]), skipped).mismatch, "not compared");
    }
}
