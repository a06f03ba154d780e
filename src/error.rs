//! Exit codes, and the mapping from the library's typed errors to them. The binary is the
//! only place that uses `anyhow`; it asks here which code an error means.

/// Process exit codes (their own leaf module, so verdicts can name them).
pub use crate::exit;

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
                RunError::Transaction(crate::copy::transaction::TxnError::Fenced { .. }) => {
                    exit::LOCKED
                }
                RunError::Transaction(crate::copy::transaction::TxnError::Checkpoint(e)) => {
                    checkpoint_code(e)
                }
                RunError::Transaction(_) => exit::OTHER,
            };
        }
        if let Some(e) = cause.downcast_ref::<crate::import::ImportError>() {
            use crate::import::ImportError as E;
            return match e {
                E::State(e) => checkpoint_code(e),
                E::Cluster(_) => exit::CLUSTER,
                E::FileChanged { .. } => exit::CHECKPOINT,
                E::NothingToImport(_) => exit::USAGE,
                E::Read { .. } | E::Rejects { .. } => exit::OTHER,
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
        CheckpointError::Read { .. }
        | CheckpointError::Write { .. }
        | CheckpointError::Store { .. } => exit::OTHER,
        CheckpointError::Locked { .. }
        | CheckpointError::Fenced { .. }
        | CheckpointError::Taken { .. } => exit::LOCKED,
        CheckpointError::TopicMissing { .. } | CheckpointError::Cluster { .. } => exit::CLUSTER,
        _ => exit::CHECKPOINT,
    }
}
