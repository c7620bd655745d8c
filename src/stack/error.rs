//! The Stack reconciler's errors: what is retried with a backoff, and what the user must fix.

use crate::reason::Failure;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read the stack's inputs")]
    Dereference(#[source] kube::Error),
    #[error("failed to publish the stack's configuration")]
    Publish(#[source] kube::Error),
    #[error("failed to write the stack's status")]
    Status(#[source] kube::Error),
    #[error("the reconcile panicked")]
    Panicked,
    /// What the user must fix, as the store's steps say it too: a full pass ends on it and reports
    /// it as Ready=False; it goes no further up.
    #[error("{}", .0.message)]
    Invalid(Failure),
}

impl Error {
    pub fn category(&self) -> &'static str {
        match self {
            Self::Dereference(_) => "dereference",
            Self::Publish(_) => "publish",
            Self::Status(_) => "status",
            Self::Panicked => "panic",
            Self::Invalid(_) => "invalid",
        }
    }

    /// `result` with what the user must fix split off, for a step that gathers such failures.
    pub fn split<T>(result: Result<T, Error>) -> Result<Result<T, Failure>, Error> {
        match result {
            Ok(value) => Ok(Ok(value)),
            Err(Error::Invalid(failure)) => Ok(Err(failure)),
            Err(error) => Err(error),
        }
    }
}
