//! Joining a multi-process job (torchrun, srun, mpirun), and `detnas dist check`: a quick
//! test of the job's process group (collectives, the differentiable all-gather of
//! synchronized BatchNorm, the store's queue) that prints one JSON line per rank.

use crate::Failure;
use crate::runtime::RuntimeArgs;
use clap::Args;
use detnas_dist::{Launch, ProcessGroup};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// This process's place in a job, from the launcher's environment (`None`: it runs alone).
///
/// # Errors
/// Exit code 2 for an inconsistent launcher environment.
pub fn launch() -> Result<Option<Launch>, Failure> {
    Launch::from_env().map_err(crate::usage)
}

/// The device of this rank: a requested GPU becomes the GPU of the rank's local index (one
/// GPU per process, as torchrun expects).
pub fn rank_device(device: Device, launch: Option<&Launch>) -> Device {
    match (device, launch) {
        (Device::Cuda(_), Some(l)) => Device::Cuda(l.local_rank),
        (d, _) => d,
    }
}

/// Whether this process is a rank other than 0 of a job (which leaves the printed results to
/// rank 0).
pub fn is_follower(launch: Option<&Launch>) -> bool {
    launch.is_some_and(|l| l.rank != 0)
}

/// Joins the job of `launch` on `device` (none: `None`).
///
/// # Errors
/// Exit code 1 when the store cannot be reached or a backend cannot be built.
pub fn join(launch: Option<&Launch>, device: Device, timeout: Duration) -> Result<Option<Arc<ProcessGroup>>, Failure> {
    let Some(l) = launch else { return Ok(None) };
    let pg = ProcessGroup::init(l, device, timeout)?;
    if pg.rank() == 0 {
        tracing::info!(
            "joined a job of {} processes ({:?}; store {}:{})",
            pg.world(),
            l.launcher,
            l.master_addr,
            l.master_port
        );
    }
    Ok(Some(Arc::new(pg)))
}

#[derive(Args)]
pub struct CheckArgs {
    /// Seconds any wait may take before the check fails.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Elements of the all-reduce timed for bandwidth.
    #[arg(long, default_value_t = 1 << 22)]
    elements: i64,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// `detnas dist check`: run under a launcher (e.g. `torchrun --nproc-per-node=2 --no-python
/// detnas dist check --device cpu`).
pub fn check(a: CheckArgs) -> Result<(), Failure> {
    let requested = a.runtime.init()?;
    let launch = launch()?.ok_or_else(|| {
        crate::usage(anyhow::anyhow!(
            "not started by a launcher (torchrun, srun or mpirun set RANK/WORLD_SIZE or their own variables)"
        ))
    })?;
    let device = rank_device(requested, Some(&launch));
    let started = Instant::now();
    let pg = join(Some(&launch), device, Duration::from_secs(a.timeout))?.expect("launched");
    let joined = started.elapsed().as_secs_f64();
    let (rank, world) = (pg.rank() as f64, pg.world() as f64);
    let opts = (Kind::Float, device);

    // All-reduce: Σ (rank + 1) over the ranks.
    let t = Tensor::full([4], rank + 1.0, opts);
    pg.all_reduce_sum(&[&t])?;
    let want = world * (world + 1.0) / 2.0;
    let all_reduce = t.to_device(Device::Cpu).double_value(&[0]) == want;

    // Broadcast from the last rank.
    let b = Tensor::full([3], rank, opts);
    pg.broadcast(&[&b], pg.world() - 1)?;
    let broadcast = b.to_device(Device::Cpu).double_value(&[2]) == world - 1.0;

    // Differentiable all-gather: y = Σ_r (r + 1) · x_r over the gathered rows; dy/dx_r on
    // rank r is Σ over the ranks of (r + 1), i.e. world · (rank + 1).
    let x = Tensor::full([1, 2], 1.0, opts).set_requires_grad(true);
    let g = pg.all_gather(&x)?;
    let weights = Tensor::arange_start(1, pg.world() as i64 + 1, opts).view([-1, 1]);
    (g * weights).sum(Kind::Float).backward();
    let grad = x.grad().to_device(Device::Cpu).double_value(&[0, 0]);
    let all_gather = grad == world * (rank + 1.0);

    // Store and queue: every rank pushes its rank; rank 0 pops them all.
    pg.queue_push("check/queue", format!("{}", pg.rank()).as_bytes())?;
    pg.barrier()?;
    let queue = if pg.rank() == 0 {
        let mut seen = Vec::new();
        while let Some(v) = pg.queue_pop("check/queue", false)? {
            seen.push(String::from_utf8_lossy(&v).parse::<usize>().unwrap_or(usize::MAX));
        }
        seen.sort_unstable();
        seen == (0..pg.world()).collect::<Vec<_>>()
    } else {
        true
    };
    pg.barrier()?;

    // Synchronized BatchNorm against one BatchNorm over the concatenated batch, and a
    // recalibration of shards against one over all images.
    let (sync_bn_diff, recal_diff) = check_sync_bn(&pg, device)?;
    let sync_bn = sync_bn_diff < 1e-4;
    let recal = recal_diff < 1e-5;

    // All-reduce bandwidth on `elements` floats.
    let big = Tensor::ones([a.elements], opts);
    pg.all_reduce_sum(&[&big])?;
    let t0 = Instant::now();
    let reps = 5;
    for _ in 0..reps {
        pg.all_reduce_sum(&[&big])?;
    }
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
    let secs = t0.elapsed().as_secs_f64() / reps as f64;
    let ok = all_reduce && broadcast && all_gather && queue && sync_bn && recal;
    println!(
        "{}",
        json!({
            "rank": pg.rank(), "world": pg.world(), "local_rank": launch.local_rank, "launcher": format!("{:?}", launch.launcher),
            "device": crate::runtime::describe(device), "joined_seconds": joined,
            "all_reduce": all_reduce, "broadcast": broadcast, "all_gather_backward": all_gather, "store_queue": queue,
            "sync_bn_max_relative_difference": sync_bn_diff, "recalibration_max_relative_difference": recal_diff,
            "all_reduce_mb": a.elements as f64 * 4.0 / 1e6, "all_reduce_seconds": secs,
            "ok": ok,
        })
    );
    if !ok {
        return Err(Failure {
            code: 1,
            error: anyhow::anyhow!("rank {}: a collective gave a wrong result", pg.rank()),
        });
    }
    Ok(())
}

/// Largest relative difference between `a` and `b` (scaled by `b`'s largest magnitude).
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[]);
    d / b.to_kind(Kind::Double).abs().max().double_value(&[]).max(1e-12)
}

/// Synchronized BN on this rank's rows of a batch every rank generates alike, against a
/// plain BN over the whole batch: outputs, input gradients, affine gradients and running
/// statistics; then exact recalibration of this rank's shards against one over all images.
/// Returns the largest relative differences `(BN, recalibration)`.
fn check_sync_bn(pg: &Arc<ProcessGroup>, device: Device) -> Result<(f64, f64), Failure> {
    use detnas_nn::bn::{BnMode, Recalibration, run_bn};
    use tch::nn;
    let (w, r) = (pg.world() as i64, pg.rank() as i64);
    let per = 3;
    tch::manual_seed(11);
    let x = (Tensor::randn([per * w, 5, 4, 4], (Kind::Float, device)) * 2.0 + 1.5).set_requires_grad(true);
    let up = Tensor::randn([per * w, 5, 4, 4], (Kind::Float, device));
    let build = || {
        let vs = nn::VarStore::new(device);
        let bn = detnas_nn::layers::batch_norm(&(vs.root() / "bn"), 5);
        tch::no_grad(|| {
            bn.ws.as_ref().expect("affine").shallow_clone().copy_(&Tensor::randn([5], (Kind::Float, device)));
            bn.bs.as_ref().expect("affine").shallow_clone().copy_(&Tensor::randn([5], (Kind::Float, device)));
        });
        (vs, bn)
    };
    tch::manual_seed(12);
    let (_vr, reference) = build();
    tch::manual_seed(12);
    let (_vs, synced) = build();

    let full = run_bn(&reference, &x, true);
    (&full * &up).sum(Kind::Float).backward();
    let (dx_full, dw_full) = (x.grad().copy(), reference.ws.as_ref().expect("affine").grad().copy());

    let mine = x.narrow(0, r * per, per).detach().set_requires_grad(true);
    let guard = detnas_train::engine::sync_bn(pg);
    let out = run_bn(&synced, &mine, true);
    (&out * up.narrow(0, r * per, per)).sum(Kind::Float).backward();
    detnas_train::engine::check_sync()?;
    let dw = synced.ws.as_ref().expect("affine").grad();
    pg.all_reduce_sum(&[&dw])?;
    let diffs = [
        rel(&out, &full.narrow(0, r * per, per)),
        rel(&mine.grad(), &dx_full.narrow(0, r * per, per)),
        rel(&dw, &dw_full),
        rel(&synced.running_mean, &reference.running_mean),
        rel(&synced.running_var, &reference.running_var),
    ];

    // Recalibration: two batches of `per · world` images, this rank's rows of each.
    let batches: Vec<Tensor> =
        (0..2).map(|_| Tensor::randn([per * w, 5, 4, 4], (Kind::Float, device)) * 3.0 + 2.0).collect();
    drop(guard);
    let session = Recalibration::begin(BnMode::Exact);
    for b in &batches {
        let _ = tch::no_grad(|| run_bn(&reference, b, true));
    }
    session.finish();
    let _guard = detnas_train::engine::sync_bn(pg);
    let session = Recalibration::begin(BnMode::Exact);
    for b in &batches {
        let _ = tch::no_grad(|| run_bn(&synced, &b.narrow(0, r * per, per), true));
    }
    session.finish();
    detnas_train::engine::check_sync()?;
    let recal =
        rel(&synced.running_mean, &reference.running_mean).max(rel(&synced.running_var, &reference.running_var));
    Ok((diffs.into_iter().fold(0.0, f64::max), recal))
}
