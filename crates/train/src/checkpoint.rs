//! Training checkpoints: the model and the optimizer's momentum buffers as safetensors, the
//! state and the resolved configuration, written through the durable checkpoint folders of
//! [`detnas_runtime::checkpoint`] (re-exported here: discovery, verification, run-folder
//! claiming); reading them back ([`read_meta`], [`load_weights`], [`Resume`]).

use crate::{PathSgd, TrainError};
use detnas_data::Position;
pub use detnas_runtime::checkpoint::*;
use detnas_runtime::{RuntimeError, fault};
use detnas_space::SearchSpace;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Tensor, nn};

/// [`resolve`] that also takes a pipeline retraining stage folder (`RUN/retrain-found`),
/// which holds its runs in `cls/` and `det/`: there, the run `part` (`"cls"` or `"det"`).
///
/// # Errors
/// As [`resolve`].
pub fn resolve_run(path: &Path, part: &str) -> Result<(u64, PathBuf), RuntimeError> {
    match resolve(path) {
        Err(_) if path.join(part).join("checkpoints").is_dir() => resolve(&path.join(part)),
        found => found,
    }
}

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

/// Everything besides tensors that a training checkpoint holds (`state.json`): the engine's
/// part, and the task's (`T`, flattened into the same object).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState<T> {
    /// Version of this layout ([`FORMAT`]); another is refused.
    pub format: u32,
    /// Completed updates.
    pub step: u64,
    /// This rank's loader position after the step (epoch and cursor).
    pub loader: Position,
    /// Word position of the path stream (decimal string: it is a u128).
    pub path_rng_word_pos: String,
    /// Result hash of the run's configuration (a resume under another is refused).
    pub config_hash: String,
    /// The run's seed.
    pub seed: u64,
    /// The code that wrote it ([`detnas_runtime::code_version`]).
    pub code_version: String,
    /// Fingerprint of the training data (a resume on other data is refused).
    pub data_fingerprint: String,
    /// The search space the weights belong to.
    pub space: SearchSpace,
    /// Samples skipped so far because they could not be loaded.
    pub skipped_samples: u64,
    /// Processes that trained together (1 for a single process).
    #[serde(default = "one")]
    pub world_size: usize,
    /// Every rank's loader position, by rank (empty for a single process).
    #[serde(default)]
    pub rank_positions: Vec<Position>,
    /// The task's part (classes, categories, carved ids), flattened into the same object.
    #[serde(flatten)]
    pub task: T,
}

pub(crate) fn one() -> usize {
    1
}

/// Reads the configuration (`C`) and state saved in a verified checkpoint folder.
///
/// # Errors
/// [`TrainError::Checkpoint`] when `config.toml` or `state.json` is missing, does not parse as
/// this kind of checkpoint, or has another format version.
pub fn read_meta<C: DeserializeOwned, T: DeserializeOwned>(path: &Path) -> Result<(C, TrainState<T>), TrainError> {
    let err = |m: String| TrainError::Checkpoint { path: path.to_path_buf(), message: m };
    let text = std::fs::read_to_string(path.join("config.toml")).map_err(|e| err(format!("config.toml: {e}")))?;
    let cfg: C = toml::from_str(&text).map_err(|e| {
        // Name the kind of checkpoint it is, when it is another kind (a common mix-up).
        let doc: Option<toml::Table> = toml::from_str(&text).ok();
        let has = |k: &str| doc.as_ref().is_some_and(|d| d.contains_key(k));
        let section = |s: &str, k: &str| {
            doc.as_ref().and_then(|d| d.get(s)).and_then(toml::Value::as_table).is_some_and(|t| t.contains_key(k))
        };
        if section("data", "input_size") {
            err("this is a classification (pre-training) checkpoint; this command needs a fine-tuning \
                 (detection) checkpoint: a `detnas finetune` run folder or its checkpoints/step-N"
                .into())
        } else if has("detector") {
            err("this is a detection (fine-tuning) checkpoint; this command needs a pre-training \
                 checkpoint: a `detnas pretrain` run folder or its checkpoints/step-N"
                .into())
        } else {
            err(format!("config.toml: {e}"))
        }
    })?;
    let text = std::fs::read_to_string(path.join("state.json")).map_err(|e| err(format!("state.json: {e}")))?;
    let state: TrainState<T> = serde_json::from_str(&text).map_err(|e| err(format!("state.json: {e}")))?;
    if state.format != FORMAT {
        return Err(err(format!("state format {} is not {}", state.format, FORMAT)));
    }
    Ok((cfg, state))
}

/// Loads the model (and optimizer) tensors of a verified checkpoint folder.
///
/// # Errors
/// [`TrainError::Checkpoint`] when a file is missing or does not match the variables.
pub fn load_weights(path: &Path, vs: &mut nn::VarStore, opt: Option<&mut PathSgd>) -> Result<(), TrainError> {
    let err = |m: String| TrainError::Checkpoint { path: path.to_path_buf(), message: m };
    vs.load(path.join("model.safetensors")).map_err(|e| err(format!("model.safetensors: {e}")))?;
    if let Some(opt) = opt {
        let device = vs.device();
        let buffers: BTreeMap<String, Tensor> = Tensor::read_safetensors(path.join("optimizer.safetensors"))
            .map_err(|e| err(format!("optimizer.safetensors: {e}")))?
            .into_iter()
            .map(|(k, t)| (k, t.to_device(device)))
            .collect();
        opt.set_buffers(buffers);
    }
    Ok(())
}

/// A checkpoint to resume from, found before the task builds its data (which may depend on
/// the task state, e.g. a class mapping).
#[derive(Debug)]
pub struct Resume<T> {
    /// Its step.
    pub step: u64,
    /// The verified `step-N` folder.
    pub path: PathBuf,
    /// Its `state.json`.
    pub state: TrainState<T>,
}

impl<T: DeserializeOwned> Resume<T> {
    /// The checkpoint `resume_from` names (`--resume-from`), else the latest of
    /// `out/checkpoints`, else `None` (a fresh run).
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] for a checkpoint that fails verification or cannot be read
    /// as this kind — never a silent fresh start.
    pub fn find(out: &Path, resume_from: Option<&Path>) -> Result<Option<Resume<T>>, TrainError> {
        let found = match resume_from {
            Some(p) => Some(resolve(p)?),
            None => latest(&out.join("checkpoints"))?,
        };
        found
            .map(|(step, path)| {
                let (_, state): (toml::Table, TrainState<T>) = read_meta(&path)?;
                Ok(Resume { step, path, state })
            })
            .transpose()
    }
}
