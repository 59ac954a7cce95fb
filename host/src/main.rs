//! `sat-host`: loads plugin libraries, trains and evaluates models with them. Parses the
//! command line, runs the subcommand and turns its result into the exit code; the rest
//! is the `sat_host` library.
use clap::Parser;
use sat_host::commands::{self, Cli};
use sat_host::train::fault::payload_message;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    sat_host::logging::init(cli.global.verbose);
    // A failure that unwound without a panic message (a TorchScript model's error,
    // raised by `sat_models` without the panic hook) past every other catch still ends
    // as one error line and exit code 1, never Rust's 101.
    let dispatch = std::panic::AssertUnwindSafe(|| commands::dispatch(&cli));
    let result = std::panic::catch_unwind(dispatch)
        .unwrap_or_else(|payload| Err(anyhow::anyhow!(payload_message(payload.as_ref()))));
    match result {
        Ok(code) => code,
        Err(e) => {
            log::logger().flush();
            // libtorch's C++ frame traces are for libtorch's developers, not the user.
            let message = sat_models::without_frames(&format!("{e:#}"));
            eprintln!("{}error: {message}", sat_host::logging::rank_prefix());
            commands::exit_code(&e)
        }
    }
}
