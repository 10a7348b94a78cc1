//! Official ImageNet weights as detnas pre-training checkpoints, which `model.pretrained`,
//! `eval cls` and `pretrain.reuse` accept. The files are published by their authors and not
//! bundled; `scripts/pth_to_safetensors.py` turns their `.pth.tar` into safetensors.
//!
//! **SPOS** (`detnas import spos`): the SinglePathOneShot supernet of
//! megvii-model/SinglePathOneShot (`src/Supernet/network.py`, `blocks.py`; published as
//! `Supernet/checkpoint-150000.pth.tar`). It is detnas's Small space with SPOS's channel
//! shuffle ([`detnas_space::ChannelShuffle::EvenOdd`], the space `small-spos`), non-affine BNs
//! and no bias in the first conv, the last 1×1 conv and the classifier; those parameters become
//! weight 1 and bias 0. Names:
//!
//! | official (`module.` prefix optional) | detnas |
//! |---|---|
//! | `first_conv.0`, `first_conv.1` | `stem.conv`, `stem.bn` |
//! | `features.i.c.branch_main.k` (Shufflenet: conv 0, 3, 5; BN 1, 4, 6) | `features.i.c.branch.j` |
//! | `features.i.3.branch_main.k` (Xception: conv 0, 2, 5, 7, 10, 12; BN +1) | `features.i.3.branch.j` |
//! | `features.i.c.branch_proj.k` (conv 0, 2; BN 1, 3) | `features.i.c.proj.j` |
//! | `conv_last.0`, `conv_last.1` | `head.last_conv.conv`, `head.last_conv.bn` |
//! | `classifier.0` | `head.fc` |
//!
//! **DetNAS** (`detnas import detnas`): the ImageNet supernet of megvii-model/DetNAS
//! (`Supernet-ImageNet/detnasnet.py`, `shuffle_blocks.py`; its README's "ImageNet supernet
//! model"), for the Small (300M) or Large (1.3G) space, DetNAS's own shuffle. Block `i`, choice
//! `c` is `features.i.c.` followed by the names of [`crate::export`]'s table; `first_conv`,
//! `last_conv.{conv,bn}` and `fc.fc` are the stem, the last 1×1 conv and the classifier.

use detnas_runtime::ConfigDocument;
use detnas_space::{Arch, Choice, SearchSpace};
use detnas_train::TrainError;
use detnas_train::checkpoint::{self, TrainState};
use detnas_train::pretrain::{ClsState, build_supernet};
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

/// The configuration recorded with an imported DetNAS supernet: the official recipe
/// (DetNAS `Supernet-ImageNet/train.py`, as SPOS's) on ImageNet folders, for `space`.
fn detnas_recipe(space: &str) -> String {
    SPOS_RECIPE.replace("space = \"small-spos\"", &format!("space = \"{space}\""))
}

/// The official name of a detnas supernet variable of the DetNAS ImageNet supernet of `space`
/// or, with `fixed`, of a searched model of that architecture (no choice level in its names;
/// an empty name for the choices it does not take, which keep their initial values).
fn detnas_source(space: &SearchSpace, fixed: Option<&Arch>, name: &str) -> Option<(String, Option<f64>)> {
    if let Some(rest) = name.strip_prefix("head.last_conv.") {
        return Some((format!("last_conv.{rest}"), None));
    }
    if let Some(rest) = name.strip_prefix("head.fc.") {
        return Some((format!("fc.fc.{rest}"), None));
    }
    let any = Arch::uniform(Choice::Shuffle3, space.num_blocks());
    if name.starts_with("stem.") {
        return Some((crate::export::official_name(space, &any, name)?, None));
    }
    let rest = name.strip_prefix("features.")?;
    let (i, rest) = rest.split_once('.')?;
    let (c, rest) = rest.split_once('.')?;
    let choice = Choice::from_id(c.parse().ok()?)?;
    let arch = Arch::uniform(choice, space.num_blocks());
    let official = crate::export::official_name(space, &arch, &format!("features.{i}.{rest}"))?;
    match fixed {
        None => {
            let tail = official.strip_prefix(&format!("features.{i}."))?;
            Some((format!("features.{i}.{c}.{tail}"), None))
        }
        Some(a) if *a.choices().get(i.parse::<usize>().ok()?)? == choice => Some((official, None)),
        Some(_) => Some((String::new(), None)),
    }
}

/// Converts the SPOS supernet's state dict in `weights` (safetensors, official names, with or
/// without the `module.` prefix) into a pre-training checkpoint of the `small-spos` space
/// under `out` (`out/checkpoints/step-00000000`); returns the checkpoint folder.
///
/// # Errors
/// As [`import_supernet`].
pub fn import_spos(weights: &Path, out: &Path) -> Result<PathBuf, TrainError> {
    import_supernet(weights, read_official(weights)?, out, &SearchSpace::small_spos(), SPOS_RECIPE, spos_source)
}

/// Converts a DetNAS ImageNet state dict in `weights` into a pre-training checkpoint of the
/// `small` or `large` space (told by the first conv's width) under `out`; returns the
/// checkpoint folder. The supernet's names hold the choice (`features.i.c.…`); a searched
/// model's do not (`features.i.…`, the DetNAS backbone's names plus `last_conv` and `fc.fc`)
/// and need its architecture `arch`: its choices get the weights, the others keep their
/// initial values (train it as a fixed architecture: `model.arch`, `sampling.arch`).
///
/// # Errors
/// [`TrainError::Checkpoint`] when the first conv is missing or of neither space's width, for
/// a searched model without `arch` or an `arch` that does not fit the space; as
/// [`import_supernet`].
pub fn import_detnas(weights: &Path, out: &Path, arch: Option<&Arch>) -> Result<PathBuf, TrainError> {
    let bad = |message: String| TrainError::Checkpoint { path: weights.to_path_buf(), message };
    let official = read_official(weights)?;
    let supernet = official.keys().any(|k| k.starts_with("features.0.0."));
    let stem = official
        .get("first_conv.conv.weight")
        .map(|v| v.size()[0])
        .ok_or_else(|| bad("no first_conv.conv.weight: not a DetNAS ImageNet network".into()))?;
    let (name, space) = match stem {
        16 => ("small", SearchSpace::small()),
        48 => ("large", SearchSpace::large()),
        other => {
            return Err(bad(format!(
                "first_conv has {other} channels: neither the Small (16) nor the Large (48) space"
            )));
        }
    };
    let fixed = match (supernet, arch) {
        (true, _) => None,
        (false, None) => {
            return Err(bad("a searched model (no choice in its names): give its architecture (--arch)".into()));
        }
        (false, Some(a)) => {
            let a = space.parse_arch(&a.to_string()).map_err(|e| bad(format!("--arch: {e}")))?;
            Some(a)
        }
    };
    let recipe = detnas_recipe(name);
    let s = space.clone();
    import_supernet(weights, official, out, &space, &recipe, move |n| detnas_source(&s, fixed.as_ref(), n))
}

/// The tensors of safetensors file `weights` by official name: without the DataParallel
/// prefix `module.` and BN's `num_batches_tracked` counters.
///
/// # Errors
/// [`TrainError::Checkpoint`] when `weights` is not a readable safetensors file.
fn read_official(weights: &Path) -> Result<BTreeMap<String, Tensor>, TrainError> {
    Ok(Tensor::read_safetensors(weights)
        .map_err(|e| TrainError::Checkpoint {
            path: weights.to_path_buf(),
            message: format!("not a safetensors file: {e}"),
        })?
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("module.").unwrap_or(&k).to_string(), v))
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .collect())
}

/// Converts the supernet state dict `official` read from `weights` ([`read_official`]) into a
/// pre-training checkpoint of `space` under `out`, `source` giving each variable's
/// official name and the value it takes when the file has none (an empty name: the variable
/// keeps its initial value). The classes are named
/// `class-0000`, … (ImageNet's order in the official loaders); `recipe` is the recorded
/// configuration.
///
/// # Errors
/// [`TrainError::Checkpoint`] naming the file and tensor when a tensor the network needs is
/// missing or has another shape, or when the file holds tensors the network does not use (not
/// this network); [`TrainError::Checkpoint`] or [`TrainError::Io`] when the checkpoint cannot
/// be written.
fn import_supernet(
    weights: &Path,
    mut official: BTreeMap<String, Tensor>,
    out: &Path,
    space: &SearchSpace,
    recipe: &str,
    source: impl Fn(&str) -> Option<(String, Option<f64>)>,
) -> Result<PathBuf, TrainError> {
    let bad = |message: String| TrainError::Checkpoint { path: weights.to_path_buf(), message };
    let fc = source("head.fc.weight").map(|s| s.0).unwrap_or_default();
    let classes = official
        .get(&fc)
        .map(|w| w.size()[0] as usize)
        .ok_or_else(|| bad(format!("no {fc}: not the network this command imports")))?;
    let (vs, _net) = build_supernet(space, classes, Device::Cpu);
    tch::no_grad(|| -> Result<(), TrainError> {
        for (name, var) in vs.variables() {
            let (src, default) = source(&name).ok_or_else(|| bad(format!("no official name for '{name}'")))?;
            if src.is_empty() {
                continue; // a choice the imported network does not have: its initial value
            }
            match (official.remove(&src), default) {
                (Some(t), _) if t.size() == var.size() => {
                    var.shallow_clone().copy_(&t);
                }
                (Some(t), _) => {
                    return Err(bad(format!("'{src}' has shape {:?}, '{name}' needs {:?}", t.size(), var.size())));
                }
                (None, Some(v)) => {
                    let _ = var.shallow_clone().fill_(v);
                }
                (None, None) => return Err(bad(format!("has no '{src}' (for '{name}')"))),
            }
        }
        Ok(())
    })?;
    if !official.is_empty() {
        let extra: Vec<&String> = official.keys().take(5).collect();
        return Err(bad(format!(
            "{} tensors the {} supernet does not have (e.g. {extra:?}): another network",
            official.len(),
            space.name
        )));
    }
    let config: detnas_train::PretrainConfig =
        toml::from_str(recipe).map_err(|e| bad(format!("the recorded recipe: {e}")))?;
    let state = TrainState {
        format: checkpoint::FORMAT,
        step: 0,
        loader: Default::default(),
        path_rng_word_pos: "0".into(),
        config_hash: config.result_hash(),
        seed: 0,
        code_version: detnas_runtime::code_version(),
        data_fingerprint: format!("imported from {}", weights.display()),
        space: space.clone(),
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
        &detnas_train::PathSgd::new(0.9, 4e-5),
        &state,
        &config.to_toml(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_recipe_is_a_valid_configuration() {
        let c: detnas_train::PretrainConfig = toml::from_str(SPOS_RECIPE).unwrap();
        c.check().unwrap();
        assert_eq!(c.space().unwrap(), SearchSpace::small_spos());
        for space in ["small", "large"] {
            let c: detnas_train::PretrainConfig = toml::from_str(&detnas_recipe(space)).unwrap();
            c.check().unwrap();
            assert_eq!(c.model.space, space);
        }
    }

    #[test]
    fn every_detnas_supernet_variable_has_its_official_name() {
        let small = SearchSpace::small();
        let n = |s: &str| detnas_source(&small, None, s).unwrap().0;
        assert_eq!(n("stem.conv.bias"), "first_conv.conv.bias");
        assert_eq!(
            n("features.0.2.branch.1.conv.weight"),
            "features.0.2.conv.1.interstellar1a_shufflenet_7x7_branch2b_s.weight"
        );
        assert_eq!(
            n("features.9.3.branch.4.bn.weight"),
            "features.9.3.conv.2.interstellar3b_xception_3x3_branch2c_s_bn.weight"
        );
        assert_eq!(n("features.4.1.proj.1.bn.running_var"), "features.4.1.proj_conv.bn2a_proj.running_var");
        assert_eq!(n("head.last_conv.bn.bias"), "last_conv.bn.bias");
        assert_eq!(n("head.fc.weight"), "fc.fc.weight");
        // A searched model: its choices by the backbone's names, the others kept.
        let arch: Arch = "31".repeat(10).parse().unwrap();
        let f = |s: &str| detnas_source(&small, Some(&arch), s).unwrap().0;
        assert_eq!(
            f("features.0.3.branch.0.conv.weight"),
            "features.0.conv.0.interstellar1a_xception_3x3_branch2a_s.weight"
        );
        assert_eq!(f("features.0.1.branch.0.conv.weight"), "");
        for sp in [SearchSpace::small(), SearchSpace::large()] {
            let (vs, _) = build_supernet(&sp, 10, Device::Cpu);
            for (name, _) in vs.variables() {
                assert!(detnas_source(&sp, None, &name).is_some(), "{name}");
            }
        }
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
