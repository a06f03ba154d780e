//! kmirror: mirror Kafka topics from one cluster to another with checkpointed progress,
//! rate limits and verification counts, driven by a TOML routing file.
//!
//! Where things are:
//! - `config`: the routing file (parse, check, positions in errors);
//! - `cluster`: connections, bounded lookups; `plan`: tasks with resolved offsets;
//! - `copy`: the copy path (source partition -> batch -> produce -> ack tracker);
//! - `checkpoint`: where progress is stored; `counts`: verification counts and tables;
//! - `verify`: record-by-record comparison of source and target; `purge`: deleting what
//!   verify proved copied from the source (DeleteRecords, DeleteTopics);
//! - `report`: the JSON documents of `check` and `run` (`--output json`); `progress`: the
//!   live display and progress lines of a run;
//! - `observe`: the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, `/status`) and stall detection;
//! - `dev_cluster`, `demo`: in-memory clusters for the demo, tests and benchmarks;
//! - `exit`: exit codes; `error`: which code an error means; `redact`: secret values masked wherever text leaves.

pub mod archive;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod copy;
pub mod counts;
pub mod demo;
pub mod dev_cluster;
pub mod durable;
pub mod error;
pub mod exit;
pub mod import;
pub mod observe;
pub mod plan;
pub mod progress;
pub mod purge;
pub mod rate_limit;
pub mod redact;
pub mod report;
pub mod verify;
