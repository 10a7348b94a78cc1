//! Training checkpoints: the model and the optimizer's momentum buffers as safetensors, the
//! state and the resolved configuration, written through the durable checkpoint folders of
//! [`detnas_runtime::checkpoint`] (re-exported here: discovery, verification, run-folder
//! claiming).

use crate::{PathSgd, TrainError};
pub use detnas_runtime::checkpoint::*;
use detnas_runtime::{RuntimeError, fault};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Saves a training checkpoint `step` into `dir`: the model (`model.safetensors`), the
/// optimizer's momentum buffers (`optimizer.safetensors`), `state` as `state.json` and the
/// resolved configuration as `config.toml` — atomically ([`save`]); the newest `keep` are
/// kept.
///
/// # Errors
/// [`TrainError::Checkpoint`] or [`TrainError::Io`] when a file cannot be written; the
/// previous checkpoints are left intact.
pub fn save_training<S: Serialize>(
    dir: &Path,
    step: u64,
    keep: usize,
    vs: &tch::nn::VarStore,
    opt: &PathSgd,
    state: &S,
    config_toml: &str,
) -> Result<PathBuf, TrainError> {
    let tensors = |e: tch::TchError, tmp: &Path| RuntimeError::checkpoint(tmp, e.to_string());
    Ok(save(
        dir,
        step,
        keep,
        |tmp| {
            vs.save(tmp.join("model.safetensors")).map_err(|e| tensors(e, tmp))?;
            fault::during_save(step);
            // Contiguous copies: a buffer may have the channels-last strides of its gradient.
            let bufs: Vec<(&str, tch::Tensor)> =
                opt.buffers().iter().map(|(k, v)| (k.as_str(), v.contiguous())).collect();
            let bufs: Vec<(&str, &tch::Tensor)> = bufs.iter().map(|(k, v)| (*k, v)).collect();
            tch::Tensor::write_safetensors(&bufs, tmp.join("optimizer.safetensors")).map_err(|e| tensors(e, tmp))?;
            let json = serde_json::to_string_pretty(state).map_err(|e| RuntimeError::checkpoint(tmp, e.to_string()))?;
            std::fs::write(tmp.join("state.json"), json).map_err(|e| RuntimeError::io(tmp, e))?;
            std::fs::write(tmp.join("config.toml"), config_toml).map_err(|e| RuntimeError::io(tmp, e))
        },
        || (),
    )?)
}
