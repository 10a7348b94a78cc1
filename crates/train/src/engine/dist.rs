//! The data-parallel glue of the [`Trainer`](super::Trainer): synchronized BatchNorm over the
//! job's process group, the ranks' agreement on what they resume, rank 0's buffers and the
//! bit-identity check at every checkpoint, and the end-of-run barrier.

use super::RunOptions;
use crate::TrainError;
use detnas_data::Position;
use detnas_device::host;
use detnas_dist::ProcessGroup;
use std::rc::Rc;
use std::sync::Arc;
use tch::{Kind, Tensor, nn};

/// Synchronized BatchNorm over a process group.
struct GroupSync(Arc<ProcessGroup>);

impl detnas_nn::bn::BnSync for GroupSync {
    fn all_gather(&self, stats: &Tensor) -> Result<Tensor, String> {
        self.0.all_gather(stats).map_err(|e| e.to_string())
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor, String> {
        let t = t.copy();
        self.0.all_reduce_sum(&[&t]).map_err(|e| e.to_string())?;
        Ok(t)
    }
}

/// Synchronized BatchNorm on this thread over `pg` while the guard lives.
pub fn sync_bn(pg: &Arc<ProcessGroup>) -> detnas_nn::bn::SyncGuard {
    detnas_nn::bn::synchronize(Rc::new(GroupSync(pg.clone())))
}

/// Waits at the end of a run until every rank has finished it (rank 0 evaluates and writes
/// while the others wait), so that the ranks start the next stage together.
///
/// # Errors
/// [`TrainError::Dist`] when a rank failed or the timeout passed.
pub fn finish_rank(opts: &RunOptions) -> Result<(), TrainError> {
    if let Some(pg) = &opts.dist {
        pg.barrier()?;
    }
    Ok(())
}

/// Whether this rank's `mine` differs from rank 0's (broadcast), agreed by every rank; rank
/// 0's values are returned beside.
fn differs_from_root(pg: &ProcessGroup, mine: &[f64], site: &'static str) -> Result<(bool, Vec<f64>), TrainError> {
    let root = host::upload(mine, &[mine.len() as i64], tch::Device::Cpu, site);
    pg.broadcast(&[&root], 0)?;
    let root: Vec<f64> = host::read(&root, site)?;
    let differs = host::upload(&[f64::from(u8::from(root.as_slice() != mine))], &[1], tch::Device::Cpu, site);
    pg.all_reduce_sum(&[&differs])?;
    Ok((host::scalar(&differs, site)? > 0.0, root))
}

/// Fails unless every rank holds the same `value` (rank 0's, broadcast).
pub(super) fn agree(pg: &ProcessGroup, value: u64, what: &str) -> Result<(), TrainError> {
    let (differs, root) = differs_from_root(pg, &[value as f64], "train.dist.agree")?;
    if differs {
        return Err(TrainError::Dist(detnas_dist::DistError::Collective(format!(
            "the ranks disagree on {what} (rank {} has {value}, rank 0 has {}): they must share the run folder",
            pg.rank(),
            root[0]
        ))));
    }
    Ok(())
}

/// Every rank's loader position, by rank.
pub(super) fn gather_positions(pg: &ProcessGroup, mine: Position) -> Result<Vec<Position>, TrainError> {
    let w = pg.world();
    let mut v = vec![0f64; 2 * w];
    v[2 * pg.rank()] = mine.epoch as f64;
    v[2 * pg.rank() + 1] = mine.cursor as f64;
    let t = host::upload(&v, &[v.len() as i64], tch::Device::Cpu, "train.dist.positions");
    pg.all_reduce_sum(&[&t])?;
    let v: Vec<f64> = host::read(&t, "train.dist.positions")?;
    Ok((0..w).map(|r| Position { epoch: v[2 * r] as u64, cursor: v[2 * r + 1] as usize }).collect())
}

/// Gives every rank rank 0's buffers (BN running statistics), as DDP's `broadcast_buffers`
/// does. Without SyncBN each rank's running statistics follow its own shard; a checkpoint
/// holds rank 0's, so every rank continues from the state a resumed run would load.
pub(super) fn broadcast_buffers(pg: &ProcessGroup, vs: &nn::VarStore) -> Result<(), TrainError> {
    let mut bufs: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| !t.requires_grad()).collect();
    bufs.sort_by(|a, b| a.0.cmp(&b.0));
    if !bufs.is_empty() {
        tch::no_grad(|| pg.broadcast(&bufs.iter().map(|b| &b.1).collect::<Vec<_>>(), 0))?;
    }
    Ok(())
}

/// Fails unless every rank's weights are bit-identical to rank 0's (checked through a
/// checksum of every variable, read in one piece).
pub(super) fn check_identical(pg: &ProcessGroup, vs: &nn::VarStore) -> Result<(), TrainError> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let sums = tch::no_grad(|| {
        Tensor::stack(&vars.iter().map(|(_, t)| t.to_kind(Kind::Double).sum(Kind::Double)).collect::<Vec<_>>(), 0)
    });
    let sums: Vec<f64> = host::read(&sums, "train.dist.check_identical")?;
    if differs_from_root(pg, &sums, "train.dist.check_identical")?.0 {
        return Err(TrainError::Dist(detnas_dist::DistError::Collective(
            "the ranks' weights differ from rank 0's: the data-parallel update diverged".into(),
        )));
    }
    Ok(())
}
