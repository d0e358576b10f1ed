//! Load tools for teeproxy: an open- and closed-loop HTTP load driver with HDR latency
//! histograms. The fake upstreams (`loadgen upstream`) are the teeproxy library's demo
//! application and fault modes.

pub mod drive;
pub mod schedule;
