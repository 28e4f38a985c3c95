//! The core's errors, one enum for every module above the store; the REST edge maps
//! them to Scaleway's JSON error bodies in one place (`rest::error`).

use crate::store::StoreError;

/// What went wrong, with what the caller needs to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such resource.
    #[error("{resource} {id:?} is not found")]
    NotFound {
        /// Kind: namespace, function, token, cron.
        resource: &'static str,
        /// The id asked for.
        id: String,
    },
    /// One or more arguments are not allowed; each with the reason.
    #[error("invalid argument(s): {}", .0.iter().map(|(a, m)| format!("{a}: {m}")).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<(String, String)>),
    /// A resource with this name exists already (Scaleway's `already_exists`).
    #[error("{message}")]
    AlreadyExists {
        /// Kind of resource.
        resource: &'static str,
        /// The id of the one that exists.
        id: String,
        /// What collides, and what to do.
        message: String,
    },
    /// The resource is in the middle of a change that must end first (`transient_state`).
    #[error("{resource} {id} is {state}: wait until it is done, then try again")]
    TransientState {
        /// Kind of resource.
        resource: &'static str,
        /// Its id.
        id: String,
        /// The state it is in.
        state: &'static str,
    },
    /// The resource is not in a state that allows this (`precondition_failed`).
    #[error("{0}")]
    Precondition(String),
    /// A service the control plane depends on did not answer; trying again later may work.
    #[error("{0}")]
    Unavailable(String),
    /// No or a wrong admin key.
    #[error("{0}")]
    Unauthenticated(String),
    /// The durable store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A task of the control plane failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// One invalid argument.
    pub fn invalid(argument: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Invalid(vec![(argument.into(), message.into())])
    }
}
