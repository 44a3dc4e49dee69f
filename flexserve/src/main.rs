//! `flexserve`: the FlexServe host binary: `run` (protected guest or `--unprotected`),
//! `bench-engine`, `bench-e2e`, `serve` (the daemon, `flexserve::serve`), `isolation` (what a
//! guest gets on this host), `proxy` and `chat` (sealed sessions' client side).

use anyhow::Context;
use clap::Parser;
use flexserve::cli::{Cli, Command};
use flexserve::{bench, run, serve};
use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    match dispatch() {
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

fn dispatch() -> anyhow::Result<Finished> {
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
                run::host::run(&args, &prompt)?;
            } else if run::guest::run(&args, &prompt)? {
                return Ok(Finished::Interrupted);
            }
        }
        Command::BenchEngine(args) => bench::engine::run(&args)?,
        Command::BenchE2e(args) => bench::e2e::run(&args)?,
        Command::BenchSealed(args) => bench::sealed::run(&args)?,
        Command::Serve(args) => {
            let config = serve::config::Config::load(args.config.as_deref(), &args.overrides())?;
            serve::run(config)?;
        }
        Command::GuestKey(args) => guest_key(&args)?,
        Command::Models(args) => flexserve::models_cli::run(&args)?,
        Command::ApiKey(flexserve::cli::ApiKeyCommand::New { name }) => {
            serve::auth::print_new(&name)?;
        }
        Command::Proxy(args) => flexserve::proxy::run(flexserve::proxy::ProxyConfig {
            listen: args.listen,
            upstream: args.upstream,
            guest_key: args.guest_key,
            plain: args.plain,
        })?,
        Command::Chat(args) => flexserve::chat::run(&args)?,
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
                use vmm::key_root::{DevelopmentRoot, KeyRoot};
                println!("{}", isolation.describe());
                match DevelopmentRoot::default_path()
                    .and_then(|p| DevelopmentRoot::open_or_create(&p))
                {
                    Ok(root) => println!("key root: {}", root.describe()),
                    Err(e) => println!("key root: none ({e}; sealed models are refused)"),
                }
            }
        }
    }
    Ok(Finished::Done)
}

/// `flexserve guest-key`: the sealing and session keys a guest booted from these images
/// derives from this host's key root, and the root's attestation key. With the development root the host can compute it; a production root
/// would have the guest report it instead.
fn guest_key(args: &flexserve::cli::GuestKeyArgs) -> anyhow::Result<()> {
    use vmm::key_root::{DevelopmentRoot, KeyRoot};
    let images = vmm::guest_images::GuestImages::locate(args.images.as_deref())?;
    let root = DevelopmentRoot::open_or_create(&DevelopmentRoot::default_path()?)?;
    let measurement = images.measurement();
    let key = sealed_model::derive_guest_key(root.secret(), &measurement).public();
    if args.quiet {
        println!("{key}");
        return Ok(());
    }
    let hex: String = measurement.iter().map(|b| format!("{b:02x}")).collect();
    println!("guest sealing key: {key}");
    println!(
        "guest session key: {} (clients seal requests to it; pin it with `flexserve proxy --guest-key`)",
        sealed_session::derive_session_key(root.secret(), &measurement).public()
    );
    println!(
        "attestation key: {} (signs the guest's statement, served at GET /v1/flexserve/guest)",
        sealed_session::derive_attestation_key(root.secret()).public()
    );
    println!("measurement: {hex} (images in {})", images.dir.display());
    println!("key root: {} ({})", root.describe(), root.path().display());
    Ok(())
}
