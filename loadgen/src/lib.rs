//! Load tools for teeproxy: an open- and closed-loop HTTP load driver with HDR latency
//! histograms, and the replay of teeproxy record files. The fake upstreams (`loadgen upstream`) are the teeproxy library's demo
//! application and fault modes.

pub mod drive;
pub mod replay;
pub mod schedule;
