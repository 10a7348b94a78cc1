//! The backbone under the official names: `ShuffleNetV2DetNAS` of megvii-model/DetNAS
//! (`maskrcnn_benchmark/modeling/backbone/detnasnet.py`, `shuffle_blocks.py`) built with a
//! fixed architecture. Block `i` is `features.i`, named by stage `s` (1-based) and repeat
//! letter `r` (`1a`, `1b`, …) with op `O` (`shufflenet_3x3`, `shufflenet_5x5`,
//! `shufflenet_7x7`, `xception_3x3`):
//!
//! | detnas | official |
//! |---|---|
//! | `stem.conv.{weight,bias}`, `stem.bn.*` | `first_conv.conv.*`, `first_conv.bn.*` |
//! | shufflenet: `branch.0` (1×1) | `conv.0.interstellar{sr}_{O}_branch2a`, BN `conv.0.bn{sr}_{O}_branch2a` |
//! | shufflenet: `branch.1` (depthwise k×k) | `conv.1.interstellar{sr}_{O}_branch2b_s`, BN `…_branch2b_s_bn` |
//! | shufflenet: `branch.2` (1×1) | `conv.1.interstellar{sr}_{O}_branch2b`, BN `conv.1.bn{sr}_{O}_branch2b` |
//! | xception: `branch.{2u, 2u+1}` (depthwise, 1×1), u = 0, 1, 2 | `conv.u.interstellar{sr}_{O}_branch2{a,b,c}_s` (+`_s_bn`), `conv.u.interstellar{sr}_{O}_branch2{a,b,c}` (BN `bn…`) |
//! | `proj.0` (depthwise), `proj.1` (1×1) of stride-2 blocks | `proj_conv.interstellar{sr}_proj_s` (+`_s_bn`), `proj_conv.interstellar{sr}_proj` (BN `proj_conv.bn{sr}_proj`) |
//!
//! BN layers carry `weight`, `bias`, `running_mean`, `running_var` and, as PyTorch's
//! `BatchNorm2d` state dicts do, `num_batches_tracked` (0).

use crate::PipelineError;
use detnas_space::{Arch, Choice, SearchSpace};
use std::collections::BTreeMap;
use tch::Tensor;

const OPS: [&str; 4] = ["shufflenet_3x3", "shufflenet_5x5", "shufflenet_7x7", "xception_3x3"];

/// The official name of a detnas child-backbone variable (`stem.…`, `features.i.…`), or
/// `None` for names outside the backbone.
pub fn official_name(space: &SearchSpace, arch: &Arch, name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix("stem.") {
        return Some(format!("first_conv.{rest}"));
    }
    let rest = name.strip_prefix("features.")?;
    let (i, rest) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let slot = space.slots().into_iter().nth(i)?;
    // Index of the first block of each stage.
    let starts: Vec<usize> = space
        .depths
        .iter()
        .scan(0usize, |acc, &d| {
            let s = *acc;
            *acc += d as usize;
            Some(s)
        })
        .collect();
    let stage = starts.iter().rposition(|&s| i >= s)?;
    let start = starts[stage];
    let sr = format!("{}{}", stage + 1, (b'a' + (i - start) as u8) as char);
    let choice = *arch.choices().get(i)?;
    let (part, rest) = rest.split_once('.')?;
    let (j, rest) = rest.split_once('.')?;
    let j: usize = j.parse().ok()?;
    let (kind, leaf) = rest.split_once('.')?; // conv|bn, weight|…
    let _ = slot;
    let (unit_prefix, conv, bn) = match part {
        "branch" => {
            let q = format!("{sr}_{}", OPS[choice.id() as usize]);
            let (u, branch, spatial) = match choice {
                Choice::Xception => (j / 2, ["branch2a", "branch2b", "branch2c"][j / 2], j % 2 == 0),
                _ => match j {
                    0 => (0, "branch2a", false),
                    1 => (1, "branch2b", true),
                    _ => (1, "branch2b", false),
                },
            };
            let base = format!("interstellar{q}_{branch}");
            if spatial {
                (format!("conv.{u}"), format!("{base}_s"), format!("{base}_s_bn"))
            } else {
                (format!("conv.{u}"), base, format!("bn{q}_{branch}"))
            }
        }
        "proj" => {
            let base = format!("interstellar{sr}_proj");
            if j == 0 {
                ("proj_conv".to_string(), format!("{base}_s"), format!("{base}_s_bn"))
            } else {
                ("proj_conv".to_string(), base, format!("bn{sr}_proj"))
            }
        }
        _ => return None,
    };
    let module = if kind == "conv" { conv } else { bn };
    Some(format!("features.{i}.{unit_prefix}.{module}.{leaf}"))
}

/// `(detnas name, official name)` pairs.
pub type NameMapping = Vec<(String, String)>;

/// Maps a detnas child backbone (names without prefix) to the official state dict,
/// adding `num_batches_tracked` for every BN.
///
/// # Errors
/// [`PipelineError::Config`] naming a variable without an official name (outside `stem.` and
/// `features.`, malformed, or beyond the space or `arch`).
pub fn to_official(
    space: &SearchSpace,
    arch: &Arch,
    vars: &BTreeMap<String, Tensor>,
) -> Result<(BTreeMap<String, Tensor>, NameMapping), PipelineError> {
    let mut out = BTreeMap::new();
    let mut mapping = Vec::new();
    for (k, v) in vars {
        let o = official_name(space, arch, k)
            .ok_or_else(|| PipelineError::Config(format!("no official name for backbone variable '{k}'")))?;
        if let Some(bn) = o.strip_suffix(".running_var") {
            out.insert(format!("{bn}.num_batches_tracked"), Tensor::from(0i64));
        }
        mapping.push((k.clone(), o.clone()));
        out.insert(o, v.shallow_clone());
    }
    Ok((out, mapping))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_names_follow_the_reference_definition() {
        let s = SearchSpace::small();
        let a: Arch = "21202112331300313132".parse().unwrap();
        let n = |x: &str| official_name(&s, &a, x).unwrap();
        assert_eq!(n("stem.conv.weight"), "first_conv.conv.weight");
        assert_eq!(n("stem.bn.running_var"), "first_conv.bn.running_var");
        // Block 0: stage 1 repeat a, choice 2 (7x7), stride 2.
        assert_eq!(
            n("features.0.branch.0.conv.weight"),
            "features.0.conv.0.interstellar1a_shufflenet_7x7_branch2a.weight"
        );
        assert_eq!(n("features.0.branch.0.bn.weight"), "features.0.conv.0.bn1a_shufflenet_7x7_branch2a.weight");
        assert_eq!(
            n("features.0.branch.1.conv.weight"),
            "features.0.conv.1.interstellar1a_shufflenet_7x7_branch2b_s.weight"
        );
        assert_eq!(
            n("features.0.branch.1.bn.bias"),
            "features.0.conv.1.interstellar1a_shufflenet_7x7_branch2b_s_bn.bias"
        );
        assert_eq!(
            n("features.0.branch.2.conv.weight"),
            "features.0.conv.1.interstellar1a_shufflenet_7x7_branch2b.weight"
        );
        assert_eq!(
            n("features.0.branch.2.bn.running_mean"),
            "features.0.conv.1.bn1a_shufflenet_7x7_branch2b.running_mean"
        );
        assert_eq!(n("features.0.proj.0.conv.weight"), "features.0.proj_conv.interstellar1a_proj_s.weight");
        assert_eq!(n("features.0.proj.0.bn.weight"), "features.0.proj_conv.interstellar1a_proj_s_bn.weight");
        assert_eq!(n("features.0.proj.1.conv.weight"), "features.0.proj_conv.interstellar1a_proj.weight");
        assert_eq!(n("features.0.proj.1.bn.weight"), "features.0.proj_conv.bn1a_proj.weight");
        // Block 9: stage 3 (blocks 8..16) repeat b, choice 3 (Xception).
        assert_eq!(
            n("features.9.branch.0.conv.weight"),
            "features.9.conv.0.interstellar3b_xception_3x3_branch2a_s.weight"
        );
        assert_eq!(n("features.9.branch.1.bn.weight"), "features.9.conv.0.bn3b_xception_3x3_branch2a.weight");
        assert_eq!(
            n("features.9.branch.4.bn.weight"),
            "features.9.conv.2.interstellar3b_xception_3x3_branch2c_s_bn.weight"
        );
        assert_eq!(
            n("features.9.branch.5.conv.weight"),
            "features.9.conv.2.interstellar3b_xception_3x3_branch2c.weight"
        );
        assert_eq!(
            n("features.19.branch.0.conv.weight"),
            "features.19.conv.0.interstellar4d_shufflenet_7x7_branch2a.weight"
        );
        assert!(official_name(&s, &a, "fpn.inner.0.weight").is_none());
    }
}
