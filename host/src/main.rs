//! `sat-host`: loads plugin libraries, trains and evaluates models with them. Parses the
//! command line, runs the subcommand and turns its result into the exit code; the rest
//! is the `sat_host` library.
use clap::Parser;
use sat_host::commands::{self, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    sat_host::logging::init(cli.global.verbose);
    match commands::dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            log::logger().flush();
            eprintln!("{}error: {e:#}", sat_host::logging::rank_prefix());
            commands::exit_code(&e)
        }
    }
}
