//! The change-stream pipeline, in the form the server accepts.
//!
//! A document near 16 MB makes its update event (full document + updateDescription)
//! exceed the 16 MB event limit and kills the stream on that event for good (mongod 6.0
//! cannot split events). Two ways to keep such events readable:
//!
//! - `Preferred` (MongoDB): the server drops updateDescription from the events of
//!   documents over 8 MB (`$bsonSize`, `$$REMOVE`), before the event is built.
//! - `DocumentDb`: no stages at all. DocumentDB change streams take only `$match`,
//!   `$project`, `$redact`, `$addFields` and `$replaceRoot`, and it has neither `$bsonSize`
//!   nor `$$REMOVE` (AWS's compatibility table), so the size cannot be judged on the
//!   server. Instead, when a read fails on an event over 16 MB, the reader reopens from its
//!   saved position with `slim` stages (`$project` away updateDescription) for a short
//!   while to get past it, then goes back to full events (see `stream`). A full document
//!   carries every change, so nothing is lost; only that stretch's events lack their patch.
//!
//! A MongoDB source starts with `Preferred` and falls back (logged once) when the server
//! refuses it; a DocumentDB source never sends it.

use std::sync::atomic::{AtomicBool, Ordering};

use bson::{doc, Document};
use tracing::warn;

use crate::flavor::Flavor;
use crate::status::StatusBoard;

/// Documents whose update events would near the 16 MB event limit lose their
/// `updateDescription` on the server in the preferred form.
const LARGE_DOCUMENT_BYTES: i64 = 8 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Preferred,
    DocumentDb,
}

impl Form {
    pub fn stages(self, slim: bool) -> Vec<Document> {
        if slim {
            return vec![doc! {"$project": {"updateDescription": 0}}];
        }
        match self {
            Form::Preferred => vec![doc! {"$set": {"updateDescription": {"$cond": {
                "if": {"$gt": [{"$bsonSize": {"$ifNull": ["$fullDocument", {}]}}, LARGE_DOCUMENT_BYTES]},
                "then": "$$REMOVE",
                "else": "$updateDescription",
            }}}}],
            Form::DocumentDb => Vec::new(),
        }
    }

    pub fn describe(self) -> String {
        match self {
            Form::Preferred => "preferred: updateDescription dropped on the server for documents over 8 MB ($bsonSize)".into(),
            Form::DocumentDb => {
                "documentdb: no stages; an event over 16 MB is read past by reopening without updateDescription".into()
            }
        }
    }
}

/// The form every reader of this process uses, shared so a fallback happens once.
#[derive(Debug)]
pub struct PipelineChoice {
    fell_back: AtomicBool,
}

impl PipelineChoice {
    pub fn new(flavor: Flavor, board: &StatusBoard) -> Self {
        let choice = PipelineChoice { fell_back: AtomicBool::new(flavor.is_documentdb()) };
        board.set_pipeline(choice.current().describe());
        choice
    }

    pub fn current(&self) -> Form {
        if self.fell_back.load(Ordering::Relaxed) {
            Form::DocumentDb
        } else {
            Form::Preferred
        }
    }

    /// The server refused `form`: use the DocumentDB form from now on. False when `form`
    /// already was that one (nothing left to try).
    pub fn fall_back(&self, form: Form, ns: &str, reason: &str, board: &StatusBoard) -> bool {
        if form == Form::DocumentDb {
            return false;
        }
        if !self.fell_back.swap(true, Ordering::Relaxed) {
            warn!(%ns, %reason, "the source refused the preferred change-stream pipeline: using the Amazon DocumentDB form from now on (no server-side size guard; events over 16 MB are read past without updateDescription)");
            board.set_pipeline(Form::DocumentDb.describe());
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stages DocumentDB change streams accept (AWS developer guide, "Using change streams
    /// with Amazon DocumentDB").
    const DOCUMENTDB_STAGES: [&str; 5] = ["$match", "$project", "$redact", "$addFields", "$replaceRoot"];

    #[test]
    fn documentdb_forms_use_only_supported_stages() {
        for slim in [false, true] {
            for stage in Form::DocumentDb.stages(slim) {
                for key in stage.keys() {
                    assert!(DOCUMENTDB_STAGES.contains(&key.as_str()), "{key}");
                }
                assert!(!format!("{stage}").contains("$$REMOVE") && !format!("{stage}").contains("$bsonSize"));
            }
        }
    }

    #[test]
    fn falls_back_once_and_then_has_nothing_left() {
        let board = StatusBoard::new("source");
        let choice = PipelineChoice::new(Flavor::MongoDb, &board);
        assert_eq!(choice.current(), Form::Preferred);
        assert!(choice.fall_back(Form::Preferred, "d.c", "unrecognized", &board));
        assert_eq!(choice.current(), Form::DocumentDb);
        // A reader that opened with the preferred form before the switch may retry.
        assert!(choice.fall_back(Form::Preferred, "d.c2", "unrecognized", &board));
        assert!(!choice.fall_back(Form::DocumentDb, "d.c", "unrecognized", &board));
        assert_eq!(PipelineChoice::new(Flavor::DocumentDb, &board).current(), Form::DocumentDb);
    }
}
