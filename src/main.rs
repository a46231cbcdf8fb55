//! vllm-sentinel: thin entry point; all behaviour lives in [`vllm_sentinel::run`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = vllm_sentinel::cli::Cli::parse();
    match vllm_sentinel::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
