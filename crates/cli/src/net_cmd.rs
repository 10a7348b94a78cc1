//! `detnas net …`: build the supernet / child network and check it.

use crate::Failure;
use crate::args::{CostArgs, SpaceArgs};
use crate::runtime::{RuntimeArgs, describe};
use clap::{Args, Subcommand};
use detnas_nn::{ChildNetConfig, SupernetConfig, measure_child};
use detnas_space::{cost, format_count, rng, sample_uniform};
use serde_json::json;
use std::time::Instant;
use tch::{Kind, Tensor, nn};

#[derive(Subcommand)]
pub enum NetCommand {
    /// Run one path of the supernet: feature shapes and strides, counts measured on the
    /// instantiated child vs the closed form, forward (and backward) time.
    Check(CheckArgs),
}

#[derive(Args, Clone, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub space: SpaceArgs,
    /// Architecture (default: uniformly sampled with --seed).
    #[arg(long)]
    pub arch: Option<String>,
    /// Seed for the sampled architecture, the weights and the input.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub cost: CostArgs,
    /// Batch size of the timed forward.
    #[arg(long, default_value_t = 2)]
    pub batch: i64,
    /// Also run backward (train-mode forward, cross-entropy on random labels).
    #[arg(long)]
    pub backward: bool,
    /// Timed repetitions after one warm-up; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: NetCommand) -> Result<(), Failure> {
    match cmd {
        NetCommand::Check(a) => check(&a),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn check(a: &CheckArgs) -> Result<(), Failure> {
    let device = a.runtime.init()?;
    let space = a.space.resolve()?;
    let arch = match &a.arch {
        Some(s) => space.parse_arch(s).map_err(crate::usage)?,
        None => sample_uniform(&space, &mut rng::seeded(a.seed)),
    };
    if a.batch < 1 || a.repeat < 1 {
        return Err(crate::usage(anyhow::anyhow!("--batch and --repeat must be at least 1")));
    }
    let (h, w) = (a.cost.input.height as i64, a.cost.input.width as i64);
    let classes = a.cost.classes as i64;
    tch::manual_seed(a.seed as i64);
    let vs = nn::VarStore::new(device);
    let net = SupernetConfig { space: space.clone(), classes: Some(classes) }.build(&vs.root());
    let x = Tensor::randn([a.batch, 3, h, w], (Kind::Float, device));
    let feats = tch::no_grad(|| net.features_t(&x, &arch, false))?;
    for f in &feats {
        if !bool::try_from(f.isfinite().all()).unwrap_or(false) {
            return Err(Failure { code: 4, error: anyhow::anyhow!("non-finite values in the features of {arch}") });
        }
    }

    // Counts: closed form vs the instantiated child.
    let analytic = cost(&space, &arch, &a.cost.model());
    let cvs = nn::VarStore::new(device);
    let child =
        ChildNetConfig { space: space.clone(), arch: arch.clone(), classes: Some(classes) }.build(&cvs.root())?;
    let measured = measure_child(&child, &cvs, h, w);

    // Timing.
    let labels = Tensor::randint(classes, [a.batch], (Kind::Int64, device));
    let step = || -> Result<(), Failure> {
        if a.backward {
            let loss = net.forward_t(&x, &arch, true)?.cross_entropy_for_logits(&labels);
            loss.backward();
            let v = f64::try_from(&loss).unwrap_or(f64::NAN);
            if !v.is_finite() {
                return Err(Failure { code: 4, error: anyhow::anyhow!("non-finite loss {v}") });
            }
        } else {
            let _ = tch::no_grad(|| net.forward_t(&x, &arch, false))?;
        }
        if let tch::Device::Cuda(_) = device {
            tch::Cuda::synchronize(0);
        }
        Ok(())
    };
    step()?;
    let mut times = Vec::with_capacity(a.repeat);
    for _ in 0..a.repeat {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let secs = median(times);
    let what = if a.backward { "forward+backward" } else { "forward" };
    let shapes: Vec<Vec<i64>> = feats.iter().map(|f| f.size()).collect();
    if a.json {
        println!(
            "{}",
            json!({
                "space": space.name, "arch": arch.to_string(), "device": describe(device),
                "input": [h, w], "batch": a.batch, "features": shapes,
                "analytic": {"backbone_macs": analytic.backbone_macs, "total_macs": analytic.total_macs,
                             "backbone_params": analytic.backbone_params, "total_params": analytic.total_params},
                "measured": {"backbone_macs": measured.backbone_macs, "total_macs": measured.total_macs,
                             "backbone_params": measured.backbone_params, "total_params": measured.total_params},
                "mode": what, "seconds": secs, "images_per_second": a.batch as f64 / secs,
            })
        );
    } else {
        println!("space   {}   arch {arch}   device {}", space.name, describe(device));
        for (i, s) in shapes.iter().enumerate() {
            println!("C{}      {:?}  stride {}", i + 2, s, h / s[2]);
        }
        println!("{:<16}{:>14}{:>14}", "", "closed form", "measured");
        for (name, x, y) in [
            ("backbone MACs", analytic.backbone_macs, measured.backbone_macs),
            ("total MACs", analytic.total_macs, measured.total_macs),
            ("backbone params", analytic.backbone_params, measured.backbone_params),
            ("total params", analytic.total_params, measured.total_params),
        ] {
            println!(
                "{name:<16}{:>14}{:>14}{}",
                format_count(x),
                format_count(y),
                if x == y { "" } else { "  MISMATCH" }
            );
        }
        println!(
            "{what}: {:.1} ms per batch of {} at {h}x{w} ({:.1} images/s, median of {})",
            secs * 1e3,
            a.batch,
            a.batch as f64 / secs,
            a.repeat
        );
    }
    if analytic.backbone_macs != measured.backbone_macs || analytic.total_params != measured.total_params {
        return Err(Failure { code: 1, error: anyhow::anyhow!("closed-form and measured counts differ") });
    }
    Ok(())
}
