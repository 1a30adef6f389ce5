//! A progress bar for an initial copy when the source runs on a terminal (documents
//! acknowledged by Kafka against the collection's estimated count). It reads the status
//! board, which the reader updates anyway, so the copy's hot path does not know about it.
//! Off a terminal the copy reports through the log and `/status` (`copied`, `copy_total`).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::status::StatusBoard;

pub struct CopyProgress {
    bar: Option<ProgressBar>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts the bar (only on a terminal).
pub fn show(board: StatusBoard, ns: String, total: Option<u64>) -> CopyProgress {
    if !std::io::stderr().is_terminal() {
        return CopyProgress { bar: None, task: None };
    }
    let bar = ProgressBar::new(total.unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} docs  {per_sec}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("copying {ns}"));
    let updated = bar.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Some(c) = board.collection(&ns) {
                updated.set_position(c.copied);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    CopyProgress { bar: Some(bar), task: Some(task) }
}

impl CopyProgress {
    pub fn finish(self) {
        if let Some(task) = self.task {
            task.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
