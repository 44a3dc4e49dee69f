//! `flexserve-model`: inspect GGUF files, convert them between tensor types, and generate
//! tiny random-weight models for tests.

mod inspect;
mod rng;
mod tiny;

use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use inference_guest::ggml_type::{GgmlType, SUPPORTED_NAMES};
use inference_guest::gguf::Gguf;
use inference_guest::gguf::writer::GgufWriter;
use model_tools::{codec, convert, sealing};

#[derive(Parser)]
#[command(
    name = "flexserve-model",
    version,
    about = "Inspect, convert and generate GGUF models for FlexServe"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a GGUF file's version, metadata (arrays abbreviated) and tensor table, or a
    /// sealed model's public header (sizes, layers, recipients, signature).
    Inspect {
        /// The .gguf or .fsm file.
        file: PathBuf,
    },
    /// Make a model owner's signing key: SECRET (mode 0600) and SECRET.pub.
    Keygen {
        /// Where to write the secret key; the public key goes to this name plus `.pub`.
        secret: PathBuf,
    },
    /// Seal a GGUF for guests: re-laid layer by layer, encrypted under a fresh content key
    /// wrapped to each guest, signed by the owner (docs/sealed-model.md).
    Seal {
        /// The plaintext .gguf model.
        input: PathBuf,
        /// The sealed .fsm file to write.
        output: PathBuf,
        /// A guest's sealing public key (64 hex digits, as `flexserve guest-key` prints it)
        /// or a file holding one; repeat for several guests.
        #[arg(long = "to", required = true)]
        to: Vec<String>,
        /// The owner's secret key file (from `flexserve-model keygen`).
        #[arg(long)]
        sign: PathBuf,
        /// Plaintext bytes per sealed chunk (4096 to 1048576).
        #[arg(long, default_value_t = sealed_model::MAX_CHUNK_BYTES)]
        chunk_bytes: u32,
    },
    /// Re-type every 2-D weight (like `llama-quantize --allow-requantize --pure`);
    /// 1-D tensors stay F32.
    Convert {
        /// Input .gguf file.
        input: PathBuf,
        /// Output .gguf file.
        output: PathBuf,
        /// Target weight type: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, IQ4_NL,
        /// IQ4_XS.
        #[arg(long = "type", value_parser = parse_type)]
        ty: GgmlType,
    },
    /// Generate a seeded random-weight llama model with another model's tokenizer.
    Tiny {
        /// Output .gguf file.
        output: PathBuf,
        /// Model whose `tokenizer.*` metadata is copied.
        #[arg(long)]
        vocab_from: PathBuf,
        /// Weight type: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, IQ4_NL,
        /// IQ4_XS.
        #[arg(long = "type", value_parser = parse_type)]
        ty: GgmlType,
        /// Type one tensor class differently, CLASS=TYPE (repeatable), e.g.
        /// `--type-for token_embd=Q5_0 --type-for ffn_down=Q6_K` for a Q4_K_M-like mix.
        /// Classes: token_embd, attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down.
        #[arg(long = "type-for", value_parser = parse_type_for)]
        type_for: Vec<(String, GgmlType)>,
        /// Architecture: qwen2 adds Q/K/V biases and uses NeoX RoPE, qwen3 per-head Q/K
        /// norms with NeoX RoPE, llama3 llama3's RoPE frequency factors (`rope_freqs`),
        /// gemma3 Gemma 3's graph (a sliding window of 8; use 6 layers for a global one),
        /// gemma2 Gemma 2's (every other layer slides over 8, soft-capped attention and
        /// logits), phi3 Phi-3's (fused attn_qkv and ffn_up, RoPE over half of each head).
        #[arg(long, value_enum, default_value = "llama")]
        arch: tiny::TinyArch,
        /// PRNG seed: the same seed gives the same bytes.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Embedding length.
        #[arg(long, default_value_t = 256)]
        embd: usize,
        /// Number of transformer blocks.
        #[arg(long, default_value_t = 2)]
        layers: usize,
        /// Attention heads.
        #[arg(long, default_value_t = 4)]
        heads: usize,
        /// Key/value heads (grouped-query attention).
        #[arg(long, default_value_t = 2)]
        kv_heads: usize,
        /// Head size, if not --embd / --heads (qwen3 models' heads are wider).
        #[arg(long)]
        head_dim: Option<usize>,
        /// Feed-forward hidden size.
        #[arg(long, default_value_t = 512)]
        ff: usize,
        /// Context length.
        #[arg(long, default_value_t = 512)]
        ctx: usize,
    },
}

fn parse_type(s: &str) -> Result<GgmlType, String> {
    GgmlType::from_name(s)
        .ok_or_else(|| format!("unknown type '{s}'; use one of {SUPPORTED_NAMES}"))
}

fn parse_type_for(s: &str) -> Result<(String, GgmlType), String> {
    let (class, ty) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not CLASS=TYPE, e.g. ffn_down=Q6_K"))?;
    Ok((class.to_string(), parse_type(ty)?))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn write(path: &Path, w: &GgufWriter) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::new(file);
    w.write_to(&mut out)
        .with_context(|| format!("writing {}", path.display()))?;
    out.flush()?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes, each naming what failed; no backtrace for users.
            eprintln!("flexserve-model: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Inspect { file } => {
            let bytes = read(&file)?;
            if sealing::is_sealed(&bytes) {
                print!("{}", sealing::inspect(&file, &bytes)?);
                return Ok(());
            }
            let g = Gguf::parse(&bytes)
                .with_context(|| format!("{} is not a valid GGUF file", file.display()))?;
            print!("{}", inspect::report(&g, bytes.len()));
        }
        Command::Convert { input, output, ty } => {
            if input == output {
                bail!("input and output are the same file; write the conversion elsewhere");
            }
            let bytes = read(&input)?;
            let g = Gguf::parse(&bytes)
                .with_context(|| format!("{} is not a valid GGUF file", input.display()))?;
            // A `\r` progress line only on a terminal; a log file gets one line per file.
            let tty = std::io::stderr().is_terminal();
            if !tty {
                let n = g.tensors().len();
                eprintln!(
                    "converting {} to {} ({n} tensors)",
                    input.display(),
                    ty.name()
                );
            }
            let mut drawn = false;
            let w = convert::convert(&g, ty, |i, n, name| {
                if tty {
                    eprint!("\r[{i}/{n}] {name:40}");
                    drawn = true;
                }
            });
            if drawn {
                eprintln!();
            }
            write(
                &output,
                &w.with_context(|| format!("converting {} to {}", input.display(), ty.name()))?,
            )?;
            eprintln!("wrote {}", output.display());
        }
        Command::Tiny {
            output,
            vocab_from,
            ty,
            type_for,
            arch,
            seed,
            embd,
            layers,
            heads,
            kv_heads,
            head_dim,
            ff,
            ctx,
        } => {
            let bytes = read(&vocab_from)?;
            let g = Gguf::parse(&bytes)
                .with_context(|| format!("{} is not a valid GGUF file", vocab_from.display()))?;
            let params = tiny::TinyParams {
                arch,
                ty,
                type_for,
                seed,
                embd,
                layers,
                heads,
                kv_heads,
                head_dim,
                ff,
                ctx,
            };
            let w = tiny::generate(&g, &params).context("generating the tiny model")?;
            write(&output, &w)?;
            eprintln!("wrote {}", output.display());
        }
        Command::Keygen { secret } => {
            let public = sealing::keygen(&secret)?;
            eprintln!(
                "wrote {} (secret, mode 0600) and {}.pub",
                secret.display(),
                secret.display()
            );
            println!("{public}");
        }
        Command::Seal {
            input,
            output,
            to,
            sign,
            chunk_bytes,
        } => seal(&input, &output, &to, &sign, chunk_bytes)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// `flexserve-model seal`.
fn seal(input: &Path, output: &Path, to: &[String], sign: &Path, chunk_bytes: u32) -> Result<()> {
    if input == output {
        bail!("input and output are the same file; write the sealed model elsewhere");
    }
    let sealed = sealing::seal_file(input, output, to, sign, chunk_bytes)?;
    eprintln!(
        "wrote {}: {} layers, {} plaintext bytes, {} bytes sealed to {} guest(s)",
        output.display(),
        sealed.layers,
        sealed.body_bytes,
        sealed.file_bytes,
        to.len()
    );
    Ok(())
}
