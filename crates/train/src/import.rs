//! Official ImageNet weights as a detnas pre-training checkpoint: the SinglePathOneShot
//! supernet of megvii-model/SinglePathOneShot (`src/Supernet/network.py`, `blocks.py`;
//! published as `Supernet/checkpoint-150000.pth.tar`, not bundled) becomes a checkpoint of the
//! `small-spos` space that `model.pretrained` and `eval cls` accept.
//!
//! The official network is detnas's Small space with SPOS's channel shuffle
//! ([`detnas_space::ChannelShuffle::EvenOdd`]), non-affine BNs and no bias in the first conv,
//! the last 1×1 conv and the classifier; those parameters become weight 1 and bias 0. Names:
//!
//! | official (`module.` prefix optional) | detnas |
//! |---|---|
//! | `first_conv.0`, `first_conv.1` | `stem.conv`, `stem.bn` |
//! | `features.i.c.branch_main.k` (Shufflenet: conv 0, 3, 5; BN 1, 4, 6) | `features.i.c.branch.j` |
//! | `features.i.3.branch_main.k` (Xception: conv 0, 2, 5, 7, 10, 12; BN +1) | `features.i.3.branch.j` |
//! | `features.i.c.branch_proj.k` (conv 0, 2; BN 1, 3) | `features.i.c.proj.j` |
//! | `conv_last.0`, `conv_last.1` | `head.last_conv.conv`, `head.last_conv.bn` |
//! | `classifier.0` | `head.fc` |

use crate::TrainError;
use crate::checkpoint::{self, TrainState};
use crate::pretrain::{ClsState, build_supernet};
use detnas_runtime::ConfigDocument;
use detnas_space::SearchSpace;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// The configuration recorded with an imported SPOS supernet: the official recipe
/// (SinglePathOneShot `src/Supernet/train.py`: batch 1024, lr 0.5 linear, 150k iterations,
/// weight decay 4e-5, label smoothing 0.1) on ImageNet folders.
const SPOS_RECIPE: &str = r#"seed = 0
[model]
space = "small-spos"
[data]
input_size = 224
eval_resize = 256
[data.source]
kind = "image-folder"
train = "imagenet/train"
val = "imagenet/val"
[schedule]
iterations = 150000
batch = 1024
lr = 0.5
lr_schedule = "linear"
weight_decay = 4e-5
label_smoothing = 0.1
"#;

/// The official name of a detnas supernet variable of the SPOS network, and the value it
/// takes when the official file has none (non-affine BN, absent biases), if any.
fn spos_source(name: &str) -> Option<(String, Option<f64>)> {
    let (module, leaf) = name.rsplit_once('.')?;
    let bn_default = match leaf {
        "weight" => Some(1.0),
        "bias" => Some(0.0),
        _ => None,
    };
    let map_unit = |official: &str, conv_or_bn: &str| -> Option<(String, Option<f64>)> {
        Some(match conv_or_bn {
            "conv" => (format!("{official}.{leaf}"), (leaf == "bias").then_some(0.0)),
            "bn" => (format!("{official}.{leaf}"), bn_default),
            _ => return None,
        })
    };
    let parts: Vec<&str> = module.split('.').collect();
    match parts.as_slice() {
        ["stem", unit] => map_unit(if *unit == "conv" { "first_conv.0" } else { "first_conv.1" }, unit),
        ["head", "last_conv", unit] => map_unit(if *unit == "conv" { "conv_last.0" } else { "conv_last.1" }, unit),
        ["head", "fc"] => Some((format!("classifier.0.{leaf}"), (leaf == "bias").then_some(0.0))),
        ["features", i, c, part, j, unit] => {
            let j: usize = j.parse().ok()?;
            let (seq, conv_index) = match (*part, *c) {
                ("branch", "3") => ("branch_main", *[0, 2, 5, 7, 10, 12].get(j)?),
                ("branch", _) => ("branch_main", *[0, 3, 5].get(j)?),
                ("proj", _) => ("branch_proj", *[0, 2].get(j)?),
                _ => return None,
            };
            let k = if *unit == "conv" { conv_index } else { conv_index + 1 };
            map_unit(&format!("features.{i}.{c}.{seq}.{k}"), unit)
        }
        _ => None,
    }
}

/// Converts the SPOS supernet's state dict in `weights` (safetensors, official names, with or
/// without the `module.` prefix; `scripts/pth_to_safetensors.py` converts the published
/// `.pth.tar`) into a pre-training checkpoint of the `small-spos` space under `out`
/// (`out/checkpoints/step-0`); returns the checkpoint folder. The classes are named
/// `class-0000`, … (ImageNet's order in the official loader).
///
/// # Errors
/// [`TrainError::Checkpoint`] naming the file and tensor when a tensor the network needs is
/// missing or has another shape, or when the file holds tensors the network does not use (not
/// this network); [`TrainError::Checkpoint`] or [`TrainError::Io`] when the checkpoint cannot
/// be written.
pub fn import_spos(weights: &Path, out: &Path) -> Result<PathBuf, TrainError> {
    let bad = |message: String| TrainError::Checkpoint { path: weights.to_path_buf(), message };
    let mut official: BTreeMap<String, Tensor> = Tensor::read_safetensors(weights)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("module.").unwrap_or(&k).to_string(), v))
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .collect();
    let classes = official
        .get("classifier.0.weight")
        .map(|w| w.size()[0] as usize)
        .ok_or_else(|| bad("no classifier.0.weight: not the SinglePathOneShot supernet".into()))?;
    let space = SearchSpace::small_spos();
    let (vs, _net) = build_supernet(&space, classes, Device::Cpu);
    tch::no_grad(|| -> Result<(), TrainError> {
        for (name, var) in vs.variables() {
            let (source, default) = spos_source(&name).ok_or_else(|| bad(format!("no official name for '{name}'")))?;
            match (official.remove(&source), default) {
                (Some(t), _) if t.size() == var.size() => {
                    var.shallow_clone().copy_(&t);
                }
                (Some(t), _) => {
                    return Err(bad(format!("'{source}' has shape {:?}, '{name}' needs {:?}", t.size(), var.size())));
                }
                (None, Some(v)) => {
                    let _ = var.shallow_clone().fill_(v);
                }
                (None, None) => return Err(bad(format!("has no '{source}' (for '{name}')"))),
            }
        }
        Ok(())
    })?;
    if !official.is_empty() {
        let extra: Vec<&String> = official.keys().take(5).collect();
        return Err(bad(format!(
            "{} tensors the SPOS supernet does not have (e.g. {extra:?}): another network",
            official.len()
        )));
    }
    let config: crate::PretrainConfig =
        toml::from_str(SPOS_RECIPE).map_err(|e| bad(format!("the recorded recipe: {e}")))?;
    let state = TrainState {
        format: checkpoint::FORMAT,
        step: 0,
        loader: Default::default(),
        path_rng_word_pos: "0".into(),
        config_hash: config.result_hash(),
        seed: 0,
        code_version: detnas_runtime::code_version(),
        data_fingerprint: format!("imported from {}", weights.display()),
        space,
        skipped_samples: 0,
        world_size: 1,
        rank_positions: Vec::new(),
        task: ClsState { classes: (0..classes).map(|i| format!("class-{i:04}")).collect() },
    };
    checkpoint::save_training(
        &out.join("checkpoints"),
        0,
        1,
        &vs,
        &crate::PathSgd::new(0.9, 4e-5),
        &state,
        &config.to_toml(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_recipe_is_a_valid_configuration() {
        let c: crate::PretrainConfig = toml::from_str(SPOS_RECIPE).unwrap();
        c.check().unwrap();
        assert_eq!(c.space().unwrap(), SearchSpace::small_spos());
    }

    #[test]
    fn every_supernet_variable_has_an_official_name() {
        let n = |s: &str| spos_source(s).unwrap();
        assert_eq!(n("stem.conv.weight"), ("first_conv.0.weight".into(), None));
        assert_eq!(n("stem.conv.bias"), ("first_conv.0.bias".into(), Some(0.0)));
        assert_eq!(n("stem.bn.weight"), ("first_conv.1.weight".into(), Some(1.0)));
        assert_eq!(n("stem.bn.running_var"), ("first_conv.1.running_var".into(), None));
        assert_eq!(n("features.0.2.branch.1.conv.weight"), ("features.0.2.branch_main.3.weight".into(), None));
        assert_eq!(
            n("features.0.2.branch.2.bn.running_mean"),
            ("features.0.2.branch_main.6.running_mean".into(), None)
        );
        assert_eq!(n("features.5.3.branch.3.conv.weight"), ("features.5.3.branch_main.7.weight".into(), None));
        assert_eq!(n("features.5.3.branch.5.bn.bias"), ("features.5.3.branch_main.13.bias".into(), Some(0.0)));
        assert_eq!(n("features.4.1.proj.1.bn.running_var"), ("features.4.1.branch_proj.3.running_var".into(), None));
        assert_eq!(n("head.last_conv.conv.weight"), ("conv_last.0.weight".into(), None));
        assert_eq!(n("head.fc.bias"), ("classifier.0.bias".into(), Some(0.0)));
        let (vs, _) = build_supernet(&SearchSpace::small_spos(), 1000, Device::Cpu);
        for (name, _) in vs.variables() {
            assert!(spos_source(&name).is_some(), "{name}");
        }
    }
}
