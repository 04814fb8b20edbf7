//! Writes seeded weights (and optionally a seeded input batch) for the fidelity fixtures.
//!
//! `cargo run -p idunno-worker --example gen_weights -- OUT_DIR [--seed N]
//! [--input-seed N --batch N] [ARCH ...]` writes `OUT_DIR/<arch>.safetensors`
//! via `idunno_models::weights::generate` and, with `--input-seed`,
//! `OUT_DIR/<arch>_input.safetensors` holding one tensor `input` of shape
//! `(batch, 3, S, S)`. It is a helper for `scripts/models/make_fidelity_fixtures.py`,
//! not part of the worker.

use std::path::PathBuf;
use std::time::Instant;

use idunno_models::{weights, Arch};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut out: Option<PathBuf> = None;
    let mut seed = 0u64;
    let mut input_seed: Option<u64> = None;
    let mut batch = 2usize;
    let mut archs = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seed" => seed = args.next().ok_or("--seed needs a value")?.parse()?,
            "--input-seed" => {
                input_seed = Some(args.next().ok_or("--input-seed needs a value")?.parse()?)
            }
            "--batch" => batch = args.next().ok_or("--batch needs a value")?.parse()?,
            _ if out.is_none() => out = Some(PathBuf::from(arg)),
            name => archs.push(name.parse::<Arch>()?),
        }
    }
    let out =
        out.ok_or("usage: gen_weights OUT_DIR [--seed N] [--input-seed N] [--batch N] [ARCH...]")?;
    std::fs::create_dir_all(&out)?;
    if archs.is_empty() {
        archs = Arch::ALL.to_vec();
    }
    for arch in archs {
        let start = Instant::now();
        let path = out.join(format!("{arch}.safetensors"));
        weights::generate(arch, seed, &path)?;
        println!(
            "{arch}: weights seed {seed} -> {} ({:.2?})",
            path.display(),
            start.elapsed()
        );
        if let Some(input_seed) = input_seed {
            let input = weights::random_input(input_seed, batch, arch.input_size())?;
            let path = out.join(format!("{arch}_input.safetensors"));
            input.save_safetensors("input", &path)?;
            println!(
                "{arch}: input seed {input_seed} {:?} -> {}",
                input.dims(),
                path.display()
            );
        }
    }
    Ok(())
}
