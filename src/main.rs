//! The `docrepl` binary: argument parsing only; everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;

/// Every event is a handful of short-lived buffers (raw BSON, JSON text, Kafka records)
/// freed on other threads than the ones that made them. glibc's malloc spent a third of a
/// drain's CPU on that pattern (`perf record` on `docrepl run`); mimalloc's per-thread
/// free lists do not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    docrepl::cli::run(docrepl::cli::Cli::parse())
}
