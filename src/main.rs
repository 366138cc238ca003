use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    payvault::telemetry::init();
    if let Err(e) = payvault::telemetry::harden_process() {
        eprintln!("payvault: cannot disable core dumps: {e}");
        return ExitCode::FAILURE;
    }
    let cli = payvault::cli::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("payvault: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(payvault::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("payvault: {e:#}");
            ExitCode::FAILURE
        }
    }
}
