//! Why a reconcile of either kind did not finish: a call to the apiserver that failed (retried with
//! a backoff), a panic contained to its object, or what the user must fix. `Read` is the error of
//! the reconciler's reads: the store names the object it could not read, the Stack passes
//! kube's error on.

use crate::reason::Failure;

#[derive(Debug, thiserror::Error)]
pub enum Error<Read: std::error::Error + 'static = kube::Error> {
    #[error("failed to read its inputs")]
    Dereference(#[source] Read),
    #[error("failed to publish its configuration")]
    Publish(#[source] kube::Error),
    #[error("failed to write its status")]
    Status(#[source] kube::Error),
    #[error("failed to update its finalizer")]
    Finalizer(#[source] kube::Error),
    #[error("failed to check whether the namespace or the CRD is being deleted")]
    DeletionScope(#[source] kube::Error),
    #[error("the reconcile panicked")]
    Panicked,
    /// What the user must fix: a full pass ends on it and reports it as Ready=False; it goes no
    /// further up.
    #[error("{}", .0.message)]
    Invalid(Failure),
}

impl<Read: std::error::Error + 'static> Error<Read> {
    /// A static label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Dereference(_) => "dereference",
            Self::Publish(_) => "publish",
            Self::Status(_) => "status",
            Self::Finalizer(_) => "finalizer",
            Self::DeletionScope(_) => "deletion_scope",
            Self::Panicked => "panic",
            Self::Invalid(_) => "invalid",
        }
    }

    /// `result` with what the user must fix split off, for a step that gathers such failures.
    pub fn split<T>(result: Result<T, Self>) -> Result<Result<T, Failure>, Self> {
        match result {
            Ok(value) => Ok(Ok(value)),
            Err(Self::Invalid(failure)) => Ok(Err(failure)),
            Err(error) => Err(error),
        }
    }
}
