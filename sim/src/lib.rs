//! `chorus-sim`: the real Chorus node code on turmoil's simulated network,
//! driven by a seeded workload and fault schedule, checked by invariants
//! that need no model of the implementation.

pub mod check;
pub mod clock;
pub mod cluster;
pub mod faults;
pub mod net;
pub mod run;
