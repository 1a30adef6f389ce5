//! The `docrepl` binary: argument parsing only; everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    docrepl::cli::run(docrepl::cli::Cli::parse())
}
