#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was violated (duplicate email, digest, ...).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database could not be reached or answered with an error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A direct SQLite read (see `sqlite::reader`) failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row could not be decoded into its model.
    #[error("unreadable row: {0}")]
    Corrupt(String),
    #[error("migration {name} failed: {reason}")]
    Migration { name: String, reason: String },
    #[error("configuration: {0}")]
    Config(String),
    /// The request is valid on its own but not against stored data
    /// (an unknown contact id, properties over the limit after a merge).
    #[error("invalid: {}: {}", .0.field, .0.message)]
    Invalid(keyflow_core::FieldError),
    /// A grouped write failed as a whole; nothing of it was stored.
    #[error("write failed: {0}")]
    WriteFailed(String),
    /// The database could not be reached for a grouped write (one failure
    /// answered to every request of the group); nothing of it was stored.
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// This failure as told to each request of a grouped write: still 503
    /// when the database was unreachable, else a write failure.
    pub(crate) fn for_each_job(&self) -> Self {
        if self.is_unavailable() {
            Self::Unavailable(self.to_string())
        } else {
            Self::WriteFailed(self.to_string())
        }
    }

    /// Maps a unique-constraint violation to `Conflict`, anything else to `Database`.
    pub(crate) fn from_write(err: sqlx::Error, what: &str) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Self::Conflict(format!("{what} already exists"))
            }
            _ => Self::Database(err),
        }
    }

    /// A failed write: a unique-constraint violation becomes `Conflict`
    /// ("`what` already exists"); anything else stays as it was.
    pub(crate) fn for_write(self, what: &str) -> Self {
        match self {
            Self::Database(e) => Self::from_write(e, what),
            other => other,
        }
    }

    /// Whether the database is unreachable (503) rather than misbehaving (500).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unavailable(_) => true,
            Self::Database(
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed,
            ) => true,
            // SQLite's BUSY (5) and LOCKED (6), extended codes included: the
            // write lock stayed taken past busy_timeout.
            Self::Database(sqlx::Error::Database(db)) => db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
            Self::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::CannotOpen
            ),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    fn sqlite_failure(code: i32) -> StoreError {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        ))
    }

    #[test]
    fn busy_and_locked_sqlite_are_unavailable_not_internal() {
        // SQLITE_BUSY, SQLITE_LOCKED, SQLITE_CANTOPEN, and BUSY_SNAPSHOT (517).
        for code in [5, 6, 14, 517] {
            assert!(sqlite_failure(code).is_unavailable(), "{code}");
        }
        // A constraint violation (19) or corruption (11) is a real error.
        for code in [19, 11] {
            assert!(!sqlite_failure(code).is_unavailable(), "{code}");
        }
        assert!(!StoreError::Corrupt("x".into()).is_unavailable());
    }

    #[test]
    fn a_grouped_write_tells_each_request_the_same_kind_of_failure() {
        let unreachable = StoreError::Database(sqlx::Error::PoolTimedOut);
        let told = unreachable.for_each_job();
        assert!(matches!(told, StoreError::Unavailable(_)) && told.is_unavailable());
        let broken = StoreError::Corrupt("x".into()).for_each_job();
        assert!(matches!(broken, StoreError::WriteFailed(_)) && !broken.is_unavailable());
    }
}
