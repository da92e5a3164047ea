//! The store by area: each file declares one area's trait (the contract the
//! server programs against) and implements it once, in SQL both databases
//! accept, for every [`crate::backend::Backend`].

pub mod audit;
pub mod contacts;
pub mod credentials;
pub mod events;
pub mod jobs;
pub mod keys;
pub mod members;
pub mod metrics;
pub mod schema;
pub mod sessions;
pub mod tenancy;
pub mod workflow_runs;
pub mod workflows;
