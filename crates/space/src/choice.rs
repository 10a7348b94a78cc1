//! The four candidate operations of a DetNAS block.

use std::fmt;

/// One candidate operation of a ShuffleNetV2 block. The discriminant is the choice id used
/// in architecture strings (`0 = 3×3`, `1 = 5×5`, `2 = 7×7`, `3 = Xception`), as in the
/// official code's `blocks_key` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Choice {
    /// 1×1 → depthwise 3×3 → 1×1 branch.
    Shuffle3 = 0,
    /// 1×1 → depthwise 5×5 → 1×1 branch.
    Shuffle5 = 1,
    /// 1×1 → depthwise 7×7 → 1×1 branch.
    Shuffle7 = 2,
    /// Three depthwise-separable 3×3 units (deeper receptive field).
    Xception = 3,
}

impl Choice {
    /// All choices in id order.
    pub const ALL: [Choice; 4] = [Choice::Shuffle3, Choice::Shuffle5, Choice::Shuffle7, Choice::Xception];

    /// The numeric id (0..=3).
    pub fn id(self) -> u8 {
        self as u8
    }

    /// The choice with this id, if any.
    pub fn from_id(id: u8) -> Option<Choice> {
        Choice::ALL.get(id as usize).copied()
    }

    /// Kernel size of the depthwise convolutions (3 for Xception), also used by the
    /// projection branch of stride-2 blocks.
    pub fn kernel(self) -> u64 {
        match self {
            Choice::Shuffle3 | Choice::Xception => 3,
            Choice::Shuffle5 => 5,
            Choice::Shuffle7 => 7,
        }
    }

    /// The official code's name (`shufflenet_3x3`, …, `xception_3x3`).
    pub fn official_name(self) -> &'static str {
        match self {
            Choice::Shuffle3 => "shufflenet_3x3",
            Choice::Shuffle5 => "shufflenet_5x5",
            Choice::Shuffle7 => "shufflenet_7x7",
            Choice::Xception => "xception_3x3",
        }
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Choice::Shuffle3 => "3x3",
            Choice::Shuffle5 => "5x5",
            Choice::Shuffle7 => "7x7",
            Choice::Xception => "xception",
        })
    }
}
