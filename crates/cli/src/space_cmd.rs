//! `detnas space …`: search-space inspection (no tensors involved).

use crate::Failure;
use crate::args::{CostArgs, SpaceArgs, parse_count};
use clap::Subcommand;
use detnas_space::cost::backbone_bounds;
use detnas_space::{Constraint, cost, format_count, rng, sample_constrained};
use serde_json::json;

#[derive(Subcommand)]
pub enum SpaceCommand {
    /// MACs and parameters of one architecture (backbone = stem + blocks; total adds the head).
    Stats {
        #[command(flatten)]
        space: SpaceArgs,
        /// The architecture: choice ids as `21202112331300313132` or `2,1,2,0,…`.
        #[arg(long)]
        arch: String,
        #[command(flatten)]
        cost: CostArgs,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sample architectures uniformly, optionally under MACs/params limits.
    Sample {
        #[command(flatten)]
        space: SpaceArgs,
        /// Backbone MACs limit, e.g. `300M`.
        #[arg(long, value_parser = parse_count)]
        max_backbone_macs: Option<u64>,
        /// Backbone parameter limit, e.g. `2M`.
        #[arg(long, alias = "max-params", value_parser = parse_count)]
        max_backbone_params: Option<u64>,
        /// How many architectures.
        #[arg(short = 'n', long, default_value_t = 10)]
        count: usize,
        /// Seed of the sampling stream (ChaCha8).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Random draws allowed per architecture before giving up.
        #[arg(long, default_value_t = 100_000)]
        max_attempts: usize,
        #[command(flatten)]
        cost: CostArgs,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Measure the per-op latency table of a space on a device (cached for `search`'s
    /// latency limit): stem and every allowed choice of every block, median of repeats.
    LatencyTable {
        #[command(flatten)]
        space: SpaceArgs,
        /// Input size: `224` (square) or `HxW`.
        #[arg(long, default_value = "224", value_parser = crate::args::parse_input)]
        input: detnas_space::InputSize,
        /// Batch size of the timed ops.
        #[arg(long, default_value_t = 1)]
        batch: i64,
        /// Timed repetitions per op (after 2 warm-up runs).
        #[arg(long, default_value_t = 20)]
        repeats: usize,
        /// Where to write the table (JSON).
        #[arg(long, default_value = "latency-table.json")]
        out: std::path::PathBuf,
        /// Print the per-block table.
        #[arg(long)]
        verbose: bool,
        #[command(flatten)]
        runtime: crate::runtime::RuntimeArgs,
    },
    /// Widths, depths, number of paths and the MACs range of a space.
    Show {
        #[command(flatten)]
        space: SpaceArgs,
        #[command(flatten)]
        cost: CostArgs,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: SpaceCommand) -> Result<(), Failure> {
    match cmd {
        SpaceCommand::Stats { space, arch, cost: c, json } => {
            let space = space.resolve()?;
            let arch = space.parse_arch(&arch).map_err(crate::usage)?;
            let k = cost(&space, &arch, &c.model());
            if json {
                println!(
                    "{}",
                    json!({
                        "space": space.name, "arch": arch.to_string(),
                        "input": [c.input.height, c.input.width], "classes": c.classes,
                        "backbone_macs": k.backbone_macs, "total_macs": k.total_macs,
                        "backbone_params": k.backbone_params, "total_params": k.total_params,
                    })
                );
            } else {
                println!("space     {}", space.name);
                println!("arch      {arch}");
                println!("input     {}x{}, {} classes", c.input.height, c.input.width, c.classes);
                println!("{:<10}{:>16}{:>12}", "", "MACs", "params");
                println!("{:<10}{:>16}{:>12}", "backbone", group(k.backbone_macs), group(k.backbone_params));
                println!("{:<10}{:>16}{:>12}", "total", group(k.total_macs), group(k.total_params));
            }
            Ok(())
        }
        SpaceCommand::Sample {
            space,
            max_backbone_macs,
            max_backbone_params,
            count,
            seed,
            max_attempts,
            cost: c,
            json,
        } => {
            let space = space.resolve()?;
            let constraint = Constraint { max_backbone_macs, max_backbone_params };
            let model = c.model();
            let mut stream = rng::seeded(seed);
            let mut rows = Vec::with_capacity(count);
            for _ in 0..count {
                let arch =
                    sample_constrained(&space, &constraint, &model, max_attempts, &mut stream).map_err(crate::usage)?;
                let k = cost(&space, &arch, &model);
                rows.push((arch, k));
            }
            if json {
                let list: Vec<_> = rows
                    .iter()
                    .map(|(a, k)| json!({"arch": a.to_string(), "backbone_macs": k.backbone_macs, "backbone_params": k.backbone_params}))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for (a, k) in rows {
                    println!(
                        "{a}  {:>9} MACs  {:>8} params",
                        format_count(k.backbone_macs),
                        format_count(k.backbone_params)
                    );
                }
            }
            Ok(())
        }
        SpaceCommand::LatencyTable { space, input, batch, repeats, out, verbose, runtime } => {
            let space = space.resolve()?;
            let device = runtime.init()?;
            if batch < 1 || repeats < 1 {
                return Err(crate::usage(anyhow::anyhow!("--batch and --repeats must be at least 1")));
            }
            let t = detnas_nn::latency::measure_table(&space, input, batch, device, repeats);
            t.write(&out)?;
            let (lo, hi) = t.bounds();
            if verbose {
                println!("block  {:>8}  {:>8}  {:>8}  {:>8}   (ms)", "3x3", "5x5", "7x7", "xcep");
                for (b, row) in t.blocks.iter().enumerate() {
                    let cells: Vec<String> = row
                        .iter()
                        .map(|v| v.map(|ms| format!("{ms:>8.3}")).unwrap_or_else(|| format!("{:>8}", "-")))
                        .collect();
                    println!("{b:>5}  {}", cells.join("  "));
                }
            }
            println!(
                "latency table of '{}' at {}x{} batch {batch} on {} ({} threads): stem {:.3} ms, architectures {:.2}..{:.2} ms; written to {}",
                space.name,
                input.height,
                input.width,
                t.device,
                t.threads,
                t.stem_ms,
                lo,
                hi,
                out.display()
            );
            Ok(())
        }
        SpaceCommand::Show { space, cost: c, json } => {
            let space = space.resolve()?;
            let (lo, hi) = backbone_bounds(&space, c.input);
            let paths = match space.num_paths() {
                Some(n) => n.to_string(),
                None => format!("10^{:.1}", space.log10_paths()),
            };
            if json {
                println!(
                    "{}",
                    json!({
                        "name": space.name, "stem": space.stem, "widths": space.widths, "depths": space.depths,
                        "last_conv": space.last_conv, "choices": space.choices, "blocks": space.num_blocks(),
                        "paths": paths, "input": [c.input.height, c.input.width],
                        "backbone_macs_min": lo.backbone_macs, "backbone_macs_max": hi.backbone_macs,
                        "backbone_params_min": lo.backbone_params, "backbone_params_max": hi.backbone_params,
                    })
                );
            } else {
                println!("space         {}", space.name);
                println!("stem          {} channels (3x3 conv, stride 2)", space.stem);
                for (i, ((w, d), s)) in space.widths.iter().zip(&space.depths).zip(space.stage_strides()).enumerate() {
                    println!("stage {}       {w:>5} channels x {d:>2} blocks, stride {s}", i + 1);
                }
                println!("last conv     {} channels (classification only)", space.last_conv);
                println!(
                    "choices       {}",
                    space.allowed().iter().map(|c| format!("{}={c}", c.id())).collect::<Vec<_>>().join(", ")
                );
                println!("blocks        {}", space.num_blocks());
                println!("paths         {paths} ({}^{})", space.choices.len(), space.num_blocks());
                println!(
                    "backbone MACs {} .. {} at {}x{}",
                    format_count(lo.backbone_macs),
                    format_count(hi.backbone_macs),
                    c.input.height,
                    c.input.width
                );
                println!(
                    "backbone params {} .. {}",
                    format_count(lo.backbone_params),
                    format_count(hi.backbone_params)
                );
            }
            Ok(())
        }
    }
}

/// `288082368` → `288,082,368`.
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
