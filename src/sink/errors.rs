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

/// Codes that mean "this statement will never be accepted as it is": the document or the
/// update itself is wrong for the target. Only these dead-letter a document; every other
/// code (stale routing 13388/63/150/249 on a sharded target, LockBusy 46, memory limits
/// 146, codes added by later servers or by DocumentDB) is retried with backoff and
/// reported, because dead-lettering it would lose a document that the target would take
/// a moment later.
pub const PERMANENT_CODES: [(i32, &str); 16] = [
    (2, "BadValue"),
    (9, "FailedToParse"),
    (14, "TypeMismatch"),
    (28, "PathNotViable"),
    (30, "InvalidPath"),
    (40, "ConflictingUpdateOperators"),
    (52, "DollarPrefixedFieldName"),
    (55, "InvalidDBRef"),
    (56, "EmptyFieldName"),
    (57, "DottedFieldName"),
    (66, "ImmutableField"),
    (121, "DocumentValidationFailure"),
    (10334, "BSONObjectTooLarge"),
    (17280, "KeyTooLong"),
    (17419, "document larger than 16 MB after the update"),
    (16837, "update path conflict"),
];

/// Classifies a MongoDB server error code.
pub fn classify_code(code: i32) -> ErrorClass {
    match code {
        11000 | 11001 => ErrorClass::DuplicateKey,
        _ if PERMANENT_CODES.iter().any(|(c, _)| *c == code) => ErrorClass::Poison,
        _ => ErrorClass::Transient,
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
        assert_eq!(classify_code(121), ErrorClass::Poison, "validator");
    }

    #[test]
    fn unknown_and_routing_codes_are_retried_not_dead_lettered() {
        for code in [13388, 63, 150, 249, 46, 146, 12586, 99999, 0] {
            assert_eq!(classify_code(code), ErrorClass::Transient, "code {code}");
        }
    }
}
