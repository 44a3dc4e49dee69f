//! `flexserve`: the FlexServe host binary (CLI now; VMM and daemon as they land).

mod bench_engine;
mod cli;
mod huge_buffer;
mod model_file;
mod text_stream;
mod unprotected;

use anyhow::{Context, bail};
use clap::Parser;
use cli::{Cli, Command};
use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Each error's message already names its cause; no backtrace for users.
            eprintln!("flexserve: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            if !args.unprotected {
                bail!(
                    "the protected guest VM is not built yet in this version; \
                     pass --unprotected to run the engine directly on the host (no isolation)"
                );
            }
            if args.memory.is_some() {
                eprintln!(
                    "[flexserve] note: --memory applies to the guest VM; ignored with --unprotected"
                );
            }
            let prompt = match &args.prompt {
                Some(p) => p.clone(),
                None => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .context("reading the prompt from stdin")?;
                    s
                }
            };
            unprotected::run(&args, &prompt)?;
        }
        Command::BenchEngine(args) => bench_engine::run(&args)?,
    }
    Ok(())
}
