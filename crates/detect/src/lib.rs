//! Detectors on DetNAS backbones (DetNAS arXiv:1903.10979 §4; the official
//! maskrcnn_benchmark configs `e2e_faster_rcnn_DETNAS_*.yaml`, `retinanet_DETNAS_*.yaml`): FPN,
//! RetinaNet and FPN Faster R-CNN, their building blocks (anchors, matcher, box coding, NMS,
//! RoIAlign), and COCO / VOC evaluation. Box coordinates follow [`boxes`]' documented
//! convention everywhere.
//!
//! [`evaluate`] scores one path on a dataset (BN recalibration, inference, COCO and VOC
//! metrics); it is what training, the search and `detnas eval det` call. Depends on
//! `detnas_nn` (backbones), `detnas_data` (datasets and batches) and `detnas_space`; never on
//! training, search or the pipeline.

pub mod anchors;
pub mod backbone;
pub mod baseline;
pub mod boxes;
pub mod detector;
pub mod error;
pub mod evaluate;
pub mod fpn;
pub mod layers;
pub mod losses;
pub mod matcher;
pub mod metrics;
pub mod nms;
pub mod rcnn;
pub mod retinanet;
pub mod roi_align;
pub mod roi_heads;
pub mod rpn;
pub mod target;

pub use backbone::Backbone;
pub use boxes::{BoxCoder, Boxes};
pub use detector::{Detector, DetectorConfig, HeadConfig, Losses};
pub use error::DetectError;
pub use target::{Detections, Proposals, Target, Targets};
