//! Which write errors are worth retrying and which mean "this document will never be
//! accepted" (poison: dead-letter it and go on). One small function, tested.

/// How to treat an error from the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Network, elections, write-concern timeouts, throttling: retry with backoff, never skip.
    Transient,
    /// A duplicate key on a unique secondary index: often transient (documents are not
    /// ordered across partitions), so retried for a bounded time, then poison.
    DuplicateKey,
    /// This document will never be accepted (too large, invalid field names, ...).
    Poison,
}

/// Classifies a MongoDB server error code.
pub fn classify_code(code: i32) -> ErrorClass {
    match code {
        11000 | 11001 => ErrorClass::DuplicateKey,
        // HostUnreachable, HostNotFound, NetworkTimeout, ShutdownInProgress, PrimarySteppedDown,
        // ExceededTimeLimit, SocketException, NotWritablePrimary, InterruptedAtShutdown,
        // InterruptedDueToReplStateChange, NotPrimaryNoSecondaryOk, NotPrimaryOrSecondary,
        // WriteConcernFailed, MaxTimeMSExpired, WriteConflict, FailedToSatisfyReadPreference,
        // LockTimeout, NetworkInterfaceExceededTimeLimit, TooManyRequests (DocumentDB throttling),
        // TemporarilyUnavailable, CursorKilled, Interrupted.
        6 | 7 | 89 | 91 | 189 | 262 | 9001 | 10107 | 11600 | 11602 | 13435 | 13436 | 64 | 50 | 112 | 133
        | 24 | 202 | 16500 | 365 | 237 | 11601 => ErrorClass::Transient,
        _ => ErrorClass::Poison,
    }
}

/// Classifies an error that failed a whole command (not one statement of it). Anything
/// that is not clearly about the documents is transient: the batch is retried, never skipped.
pub fn classify_command_error(e: &mongodb::error::Error) -> ErrorClass {
    use mongodb::error::ErrorKind;
    match e.kind.as_ref() {
        ErrorKind::Command(c) => match classify_code(c.code) {
            // A command-level "poison" code (e.g. Unauthorized) is not about one document:
            // keep retrying, loudly, rather than dead-letter a whole batch.
            ErrorClass::Poison if c.code == 10334 || c.code == 17419 => ErrorClass::Poison,
            ErrorClass::Poison => ErrorClass::Transient,
            other => other,
        },
        _ => ErrorClass::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(classify_code(11000), ErrorClass::DuplicateKey);
        assert_eq!(classify_code(10107), ErrorClass::Transient, "not primary");
        assert_eq!(classify_code(189), ErrorClass::Transient, "stepped down");
        assert_eq!(classify_code(64), ErrorClass::Transient, "write concern timeout");
        assert_eq!(classify_code(91), ErrorClass::Transient, "shutting down");
        assert_eq!(classify_code(10334), ErrorClass::Poison, "BSONObjectTooLarge");
        assert_eq!(classify_code(52), ErrorClass::Poison, "dollar-prefixed field name");
        assert_eq!(classify_code(2), ErrorClass::Poison, "bad value");
    }
}
