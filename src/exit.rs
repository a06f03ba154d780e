//! Process exit codes (documented in README.md).

/// Success: the run reached its end (or was stopped cleanly), or verify matched.
pub const OK: i32 = 0;
/// Verification mismatch, or a run that ended with halted partitions or failed records.
pub const MISMATCH: i32 = 1;
/// Command-line usage error (from clap).
pub const USAGE: i32 = 2;
/// The routing file is invalid (nothing was connected).
pub const CONFIG: i32 = 3;
/// A cluster is unreachable, or a topic, partition or offset lookup failed.
pub const CLUSTER: i32 = 4;
/// The checkpoint is corrupt, truncated, or belongs to another job, cluster or topic.
pub const CHECKPOINT: i32 = 5;
/// The job is locked by another process (its pid, host and start are in the message).
pub const LOCKED: i32 = 6;
/// Anything else: I/O (a checkpoint that cannot be read or written), internal errors.
pub const OTHER: i32 = 70;
