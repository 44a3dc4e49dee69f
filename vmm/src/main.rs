//! `flexserve`: the FlexServe host binary: `run` (protected guest or `--unprotected`),
//! `bench-engine`, `bench-e2e`, `serve` (the daemon, `vmm::serve`), `isolation` (what a
//! guest gets on this host).

mod bench_e2e;
mod bench_engine;
mod cli;
mod huge_buffer;
mod model_file;
mod protected;
mod unprotected;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command};
use std::io::Read;
use std::process::ExitCode;
use vmm::text_stream;

fn main() -> ExitCode {
    match run() {
        Ok(Finished::Done) => ExitCode::SUCCESS,
        // The shell convention for a command stopped by SIGINT.
        Ok(Finished::Interrupted) => ExitCode::from(130),
        Err(e) => {
            // Each error's message already names its cause; no backtrace for users.
            eprintln!("flexserve: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How a command ended without an error.
enum Finished {
    Done,
    Interrupted,
}

fn run() -> anyhow::Result<Finished> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            if args.unprotected && (args.memory.is_some() || args.images.is_some()) {
                eprintln!(
                    "[flexserve] note: --memory and --images apply to the guest VM; \
                     ignored with --unprotected"
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
            if args.unprotected {
                unprotected::run(&args, &prompt)?;
            } else if protected::run(&args, &prompt)? {
                return Ok(Finished::Interrupted);
            }
        }
        Command::BenchEngine(args) => bench_engine::run(&args)?,
        Command::BenchE2e(args) => bench_e2e::run(&args)?,
        Command::Serve(args) => {
            let config =
                vmm::serve::config::Config::load(args.config.as_deref(), &args.overrides())?;
            vmm::serve::run(config)?;
        }
        Command::Isolation(args) => {
            // The smallest private pool: enough to see what backs it.
            let m = vmm::machine::Machine::new(vmm::machine::MachineConfig {
                private_size: 2 << 20,
                ..Default::default()
            })
            .context("cannot create a VM to probe")?;
            let isolation = m.isolation();
            if args.quiet {
                println!("{}", isolation.level());
            } else {
                println!("{}", isolation.describe());
            }
        }
    }
    Ok(Finished::Done)
}
