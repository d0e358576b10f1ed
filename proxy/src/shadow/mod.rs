//! The shadow leg. Per route, a policy decides which requests are copied (`policy`); the
//! tee keeps the body's chunks (`tee`); the rendezvous of the complete body and the
//! primary's answer builds the copies (`pending`) and offers them to each shadow cluster's
//! bounded queue (`queue`); a dispatcher per shadow cluster takes them off (`dispatch`) and
//! sends each with the cluster's own client (`exchange`); the answer is compared (`compare`,
//! with bodies decoded by `decode`) and recorded (`record`; mismatches grouped in `mismatches`), and some
//! exchanges written to a file (`capture`); `rate` caps copies per second; `trace` tells the access log what became of each copy. The
//! admin API pauses a policy or overrides its percent at runtime (`control`). Nothing on
//! the primary path waits for any of it; every copy not sent is counted with its reason.

pub(crate) mod capture;
pub(crate) mod compare;
pub(crate) mod control;
pub(crate) mod decode;
pub(crate) mod dispatch;
pub(crate) mod exchange;
pub(crate) mod mismatches;
pub(crate) mod pending;
pub(crate) mod policy;
pub(crate) mod queue;
pub(crate) mod rate;
pub(crate) mod record;
pub(crate) mod sample;
pub(crate) mod tee;
pub(crate) mod trace;
pub(crate) mod verdict;
