//! Analytic MACs and parameter counts, in DetNAS's convention (arXiv:1903.10979, Table 2 and
//! the official model zoo: FLOPs are multiply-accumulates of conv and FC layers at 224×224).
//!
//! FLOPs are multiply-accumulates of conv and linear layers only:
//! `out_c · k · k · in_c/groups · H_out · W_out` per conv, `in · out` per linear layer; BN,
//! ReLU, bias adds, pooling and concatenation count nothing. Parameters count every learnable
//! tensor of the fixed child network: conv weights, the stem and last-conv biases, BN γ and β,
//! FC weight and bias (running statistics excluded).
//!
//! "Backbone" is stem + blocks (the DetNAS search limit); "total" adds the classification
//! head (last 1×1 conv with bias and BN, FC to `classes`).
//!
//! This is a closed-form count written from the block definitions; the `nn` crate counts the
//! same quantities independently from instantiated modules, and tests compare the two.

use crate::space::BlockSlot;
use crate::{Arch, Choice, SearchSpace};
use serde::{Deserialize, Serialize};

/// Input resolution, height × width in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSize {
    /// Height, pixels.
    pub height: u64,
    /// Width, pixels.
    pub width: u64,
}

impl InputSize {
    /// A square input.
    pub fn square(side: u64) -> InputSize {
        InputSize { height: side, width: side }
    }
}

/// What the counts are taken at: input size and number of classes of the FC layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostModel {
    /// Input size the costs are counted at.
    pub input: InputSize,
    /// Classifier outputs (the head's FC).
    pub classes: u64,
}

impl Default for CostModel {
    /// 224×224 input, 1000 classes: the convention of the published numbers.
    fn default() -> CostModel {
        CostModel { input: InputSize::square(224), classes: 1000 }
    }
}

/// MACs and parameters of one architecture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// Multiply-accumulates of the backbone (stem and blocks).
    pub backbone_macs: u64,
    /// Multiply-accumulates of the whole classifier.
    pub total_macs: u64,
    /// Parameters of the backbone.
    pub backbone_params: u64,
    /// Parameters of the whole classifier.
    pub total_params: u64,
}

/// Spatial size after a conv with kernel `k`, padding `k/2` and stride `s`.
fn conv_out(n: u64, k: u64, s: u64) -> u64 {
    (n + 2 * (k / 2) - k) / s + 1
}

#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
struct Tally {
    macs: u64,
    params: u64,
}

impl Tally {
    /// A conv `cin → cout`, kernel `k`, `groups`, producing `hw_out` positions, optionally
    /// with bias, always followed by a BN (every conv of these networks is).
    fn conv(&mut self, cin: u64, cout: u64, k: u64, groups: u64, hw_out: u64, bias: bool) {
        let weight = cout * k * k * (cin / groups);
        self.macs += weight * hw_out;
        self.params += weight + if bias { cout } else { 0 } + 2 * cout;
    }
}

/// MACs and params of one block taking `choice`, for an input of `h × w` positions.
/// Returns the tally and the output size.
fn block(slot: &BlockSlot, choice: Choice, h: u64, w: u64) -> (Tally, u64, u64) {
    let mut t = Tally::default();
    let s = slot.stride;
    let k = choice.kernel();
    let (ho, wo) = (conv_out(h, k, s), conv_out(w, k, s));
    let (hw_in, hw_out) = (h * w, ho * wo);
    let out = slot.out_channels;
    let mid = out / 2;
    // The branch input and output widths (official `shuffle_blocks.py`).
    let (bin, bout) = if s == 1 { (slot.in_channels / 2, out / 2) } else { (slot.in_channels, out - slot.in_channels) };
    match choice {
        Choice::Shuffle3 | Choice::Shuffle5 | Choice::Shuffle7 => {
            t.conv(bin, mid, 1, 1, hw_in, false); // 1×1 before the stride
            t.conv(mid, mid, k, mid, hw_out, false); // depthwise k×k, stride s
            t.conv(mid, bout, 1, 1, hw_out, false);
        }
        Choice::Xception => {
            t.conv(bin, bin, 3, bin, hw_out, false); // depthwise 3×3, stride s
            t.conv(bin, mid, 1, 1, hw_out, false);
            t.conv(mid, mid, 3, mid, hw_out, false);
            t.conv(mid, mid, 1, 1, hw_out, false);
            t.conv(mid, mid, 3, mid, hw_out, false);
            t.conv(mid, bout, 1, 1, hw_out, false);
        }
    }
    if s == 2 {
        let c = slot.in_channels;
        t.conv(c, c, k, c, hw_out, false); // projection: depthwise k×k, stride 2
        t.conv(c, c, 1, 1, hw_out, false);
    }
    (t, ho, wo)
}

/// The exact counts of `arch` in `space` (the architecture must be valid for the space).
///
/// # Panics
/// Never for a space that passed its checks (it has stages).
pub fn cost(space: &SearchSpace, arch: &Arch, model: &CostModel) -> Cost {
    let mut backbone = Tally::default();
    let (mut h, mut w) = (conv_out(model.input.height, 3, 2), conv_out(model.input.width, 3, 2));
    backbone.conv(3, space.stem, 3, 1, h * w, true);
    for (slot, &choice) in space.slots().iter().zip(arch.choices()) {
        let (t, ho, wo) = block(slot, choice, h, w);
        backbone.macs += t.macs;
        backbone.params += t.params;
        (h, w) = (ho, wo);
    }
    let mut head = Tally::default();
    let last_in = *space.widths.last().expect("a checked space has stages");
    head.conv(last_in, space.last_conv, 1, 1, h * w, true);
    head.macs += space.last_conv * model.classes;
    head.params += space.last_conv * model.classes + model.classes;
    Cost {
        backbone_macs: backbone.macs,
        total_macs: backbone.macs + head.macs,
        backbone_params: backbone.params,
        total_params: backbone.params + head.params,
    }
}

/// MACs and params of one choice in one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockCost {
    /// The block's choice.
    pub choice: Choice,
    /// Its multiply-accumulates.
    pub macs: u64,
    /// Its parameters.
    pub params: u64,
}

/// Per-block backbone costs of every allowed choice: `table[block][i]` is the cost of the
/// i-th allowed choice (in [`SearchSpace::allowed`] order) of that block, and the stem's MACs
/// are returned beside it. Block costs are independent of the other blocks' choices, so an
/// architecture's backbone MACs is `stem + Σ table[b][choice_b].macs`.
pub fn block_macs_table(space: &SearchSpace, input: InputSize) -> (u64, Vec<Vec<BlockCost>>) {
    let (mut h, mut w) = (conv_out(input.height, 3, 2), conv_out(input.width, 3, 2));
    let mut stem = Tally::default();
    stem.conv(3, space.stem, 3, 1, h * w, true);
    let mut table = Vec::new();
    for slot in space.slots() {
        let mut row = Vec::new();
        let mut next = (h, w);
        for c in space.allowed() {
            let (t, ho, wo) = block(&slot, c, h, w);
            row.push(BlockCost { choice: c, macs: t.macs, params: t.params });
            next = (ho, wo);
        }
        table.push(row);
        (h, w) = next;
    }
    (stem.macs, table)
}

/// The smallest and largest backbone MACs and params over the whole space (each extreme is
/// taken independently per quantity). Block costs are independent, so these are exact.
///
/// Note: the uniform architectures are *not* the extremes. In a stride-2 block the Xception
/// branch applies its 1×1 convs after the stride, so it is the cheapest choice there (Small:
/// all-3×3 has 262.7M backbone MACs, the true minimum is 237.2M).
pub fn backbone_bounds(space: &SearchSpace, input: InputSize) -> (Cost, Cost) {
    let lo = cost(space, &extreme_arch(space, input, false), &CostModel { input, classes: 0 });
    let hi = cost(space, &extreme_arch(space, input, true), &CostModel { input, classes: 0 });
    let (lo_p, hi_p) = param_bounds(space, input);
    (
        Cost { backbone_macs: lo.backbone_macs, backbone_params: lo_p, ..Cost::default() },
        Cost { backbone_macs: hi.backbone_macs, backbone_params: hi_p, ..Cost::default() },
    )
}

fn param_bounds(space: &SearchSpace, input: InputSize) -> (u64, u64) {
    let (_, table) = block_macs_table(space, input);
    let stem_params = 27 * space.stem + 3 * space.stem;
    table.iter().fold((stem_params, stem_params), |(lo, hi), row| {
        (lo + row.iter().map(|r| r.params).min().unwrap_or(0), hi + row.iter().map(|r| r.params).max().unwrap_or(0))
    })
}

/// The architecture with the fewest (`largest = false`) or most backbone MACs: per block,
/// the allowed choice of smallest (largest) MACs, ties to the lower id.
///
/// # Panics
/// Never for a space that passed its checks (every block allows a choice).
pub fn extreme_arch(space: &SearchSpace, input: InputSize, largest: bool) -> Arch {
    let (_, table) = block_macs_table(space, input);
    Arch::new(
        table
            .iter()
            .map(|row| {
                let pick = if largest {
                    row.iter().min_by_key(|r| (std::cmp::Reverse(r.macs), r.choice))
                } else {
                    row.iter().min_by_key(|r| (r.macs, r.choice))
                };
                pick.expect("a checked space has choices").choice
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(space: SearchSpace, arch: &str, expected: [u64; 4]) {
        let arch = space.parse_arch(arch).unwrap();
        let c = cost(&space, &arch, &CostModel::default());
        assert_eq!([c.backbone_macs, c.total_macs, c.backbone_params, c.total_params], expected, "{arch}");
    }

    /// The published architectures (DetNAS's model zoo: COCO-FPN-300M, COCO-RetinaNet-300M,
    /// COCO-FPN-1.3G), counted to the unit.
    #[test]
    fn reference_table() {
        check(SearchSpace::small(), "21202112331300313132", [288_082_368, 321_219_008, 1_849_680, 3_533_112]);
        check(SearchSpace::small(), "23113213311133203333", [291_205_824, 324_342_464, 2_041_888, 3_725_320]);
        check(
            SearchSpace::large(),
            "0031210203123320211320222131033313333333",
            [1_269_181_536, 1_318_374_496, 8_415_216, 10_426_328],
        );
    }

    #[test]
    fn space_extremes_match_reference() {
        let s = SearchSpace::small();
        let model = CostModel::default();
        let all0 = cost(&s, &Arch::uniform(Choice::Shuffle3, 20), &model).backbone_macs;
        let all3 = cost(&s, &Arch::uniform(Choice::Xception, 20), &model).backbone_macs;
        assert_eq!((all0 + 50_000) / 100_000, 2627, "{all0}");
        assert_eq!((all3 + 50_000) / 100_000, 3257, "{all3}");
        let l = SearchSpace::large();
        let l0 = cost(&l, &Arch::uniform(Choice::Shuffle3, 40), &model).backbone_macs;
        let l3 = cost(&l, &Arch::uniform(Choice::Xception, 40), &model).backbone_macs;
        assert_eq!(((l0 as f64 / 1e7).round(), (l3 as f64 / 1e7).round()), (104.0, 139.0), "{l0} {l3}");
    }

    #[test]
    fn bounds_are_attained_and_never_beaten() {
        let model = CostModel::default();
        for s in [SearchSpace::small(), SearchSpace::large(), SearchSpace::large_3_8g().scaled(0.5).unwrap()] {
            let (lo, hi) = backbone_bounds(&s, model.input);
            let cheapest = extreme_arch(&s, model.input, false);
            let dearest = extreme_arch(&s, model.input, true);
            assert_eq!(cost(&s, &cheapest, &model).backbone_macs, lo.backbone_macs);
            assert_eq!(cost(&s, &dearest, &model).backbone_macs, hi.backbone_macs);
            let mut rng = crate::rng::seeded(11);
            for _ in 0..2000 {
                let a = crate::sample_uniform(&s, &mut rng);
                let c = cost(&s, &a, &model);
                assert!((lo.backbone_macs..=hi.backbone_macs).contains(&c.backbone_macs));
                assert!((lo.backbone_params..=hi.backbone_params).contains(&c.backbone_params));
            }
            // Single-gene changes of the cheapest architecture never lower its MACs.
            for b in 0..s.num_blocks() {
                for c in s.allowed() {
                    let mut genes = cheapest.choices().to_vec();
                    genes[b] = c;
                    assert!(cost(&s, &Arch::new(genes), &model).backbone_macs >= lo.backbone_macs);
                }
            }
        }
        // Small: the minimum uses Xception in the four stride-2 blocks, 3×3 elsewhere.
        let s = SearchSpace::small();
        assert_eq!(extreme_arch(&s, model.input, false).to_string(), "30003000300000003000");
        assert_eq!(backbone_bounds(&s, model.input).0.backbone_macs, 237_222_720);
    }

    #[test]
    fn table_sums_to_cost() {
        let s = SearchSpace::large_3_8g();
        let arch: Arch = "0123".repeat(10).parse().unwrap();
        let (stem, table) = block_macs_table(&s, InputSize::square(224));
        let sum: u64 = stem
            + table
                .iter()
                .zip(arch.choices())
                .map(|(row, c)| row.iter().find(|r| r.choice == *c).unwrap().macs)
                .sum::<u64>();
        assert_eq!(sum, cost(&s, &arch, &CostModel::default()).backbone_macs);
    }

    #[test]
    fn odd_inputs_round_up_like_conv_arithmetic() {
        assert_eq!(conv_out(225, 3, 2), 113);
        assert_eq!(conv_out(224, 7, 2), 112);
        assert_eq!(conv_out(7, 5, 1), 7);
    }
}
