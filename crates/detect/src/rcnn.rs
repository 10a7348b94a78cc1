//! FPN Faster R-CNN (Ren et al. 2015; Lin et al. 2017) with maskrcnn_benchmark's defaults as
//! DetNAS configures them (`e2e_faster_rcnn_DETNAS_COCO_FPN_300M_*.yaml`): the region
//! proposal network on P2–P6 ([`crate::rpn`]) and the box head on P2–P5
//! ([`crate::roi_heads`]). In training, the ground-truth boxes are added to the proposals.

pub use crate::roi_heads::{BoxHeadKind, RoiHeads, RoiHeadsConfig, RoiSample};
pub use crate::rpn::{Rpn, RpnConfig, RpnOutputs};
use serde::{Deserialize, Serialize};

/// Faster R-CNN settings: `[detector.head.rpn]` and `[detector.head.roi]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FasterRcnnConfig {
    /// The region proposal network.
    pub rpn: RpnConfig,
    /// The RoI box head.
    pub roi: RoiHeadsConfig,
}
