//! Exit codes, and the mapping from the library's typed errors to them. The binary is the
//! only place that uses `anyhow`; it asks here which code an error means.

/// Process exit codes (documented in README.md).
pub mod exit {
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
}

use crate::checkpoint::CheckpointError;
use crate::cluster::ClusterError;
use crate::config::ConfigError;
use crate::copy::RunError;
use crate::verify::VerifyError;

/// The exit code an error chain means.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if cause.is::<ConfigError>() {
            return exit::CONFIG;
        }
        if cause.is::<ClusterError>() {
            return exit::CLUSTER;
        }
        if let Some(e) = cause.downcast_ref::<CheckpointError>() {
            return checkpoint_code(e);
        }
        if let Some(e) = cause.downcast_ref::<RunError>() {
            return match e {
                RunError::Cluster(_) => exit::CLUSTER,
                RunError::Checkpoint(e) => checkpoint_code(e),
                RunError::CheckpointsStalled(_) => exit::OTHER,
            };
        }
        if let Some(e) = cause.downcast_ref::<VerifyError>() {
            return match e {
                VerifyError::Cluster(_) => exit::CLUSTER,
                VerifyError::Checkpoint(e) => checkpoint_code(e),
                VerifyError::Nothing(_) => exit::MISMATCH,
            };
        }
    }
    exit::OTHER
}

/// A checkpoint that cannot be trusted is 5; one that cannot be reached is I/O (70): the
/// fix for the first is a decision about the data, for the second the disk or mount.
fn checkpoint_code(e: &CheckpointError) -> i32 {
    match e {
        CheckpointError::Read { .. } | CheckpointError::Write { .. } => exit::OTHER,
        CheckpointError::Locked { .. } => exit::LOCKED,
        _ => exit::CHECKPOINT,
    }
}
