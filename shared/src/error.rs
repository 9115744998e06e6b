//! Errors of the core, classified by what the caller should do about them: try again
//! later, or stop (and, for a job, die at once rather than spin through its retries).

/// A failure of a core operation.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The connection or the server had a passing problem, or the transaction lost a
    /// serialization/deadlock/lock-timeout race: the same call may succeed later.
    #[error("transient database error: {0}")]
    Retryable(#[source] sqlx::Error),
    /// Something the schema and the code guarantee did not hold (a delivery that did not
    /// touch the rows it locked, say). Retrying cannot help; an operator must look.
    #[error("invariant broken: {0}")]
    Invariant(String),
    /// Any other database error: a named constraint the caller may map to an answer, or
    /// a bug. Not retried.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for CoreError {
    fn from(err: sqlx::Error) -> Self {
        if is_transient(&err) {
            CoreError::Retryable(err)
        } else {
            CoreError::Database(err)
        }
    }
}

impl CoreError {
    pub fn invariant(what: impl Into<String>) -> Self {
        CoreError::Invariant(what.into())
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, CoreError::Retryable(_))
    }

    /// The name of the constraint a database error violated, for mapping at the call site.
    pub fn constraint(&self) -> Option<&str> {
        match self {
            CoreError::Database(e) | CoreError::Retryable(e) => violated_constraint(e),
            CoreError::Invariant(_) => None,
        }
    }
}

/// Maps a database error to the name of the constraint it violated, if any.
pub fn violated_constraint(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

/// Errors worth retrying: the connection or the server had a passing problem, or the
/// transaction lost a serialization/deadlock/lock-timeout race, or the server is shutting
/// down, restarting or out of connections.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        // The connection broke mid-message (a server restart, say).
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            Some(
                "40001" // serialization_failure
                    | "40P01" // deadlock_detected
                    | "55P03" // lock_not_available (lock_timeout)
                    | "57014" // query_canceled (statement_timeout)
                    | "57P01" // admin_shutdown
                    | "57P02" // crash_shutdown
                    | "57P03" // cannot_connect_now
                    | "53300" // too_many_connections
                    | "08000"
                    | "08003"
                    | "08006" // connection exceptions
            )
        ),
        _ => false,
    }
}
