//! Detectors on DetNAS backbones (reference §5): FPN, RetinaNet and FPN Faster R-CNN,
//! their building blocks (anchors, matcher, box coding, NMS, RoIAlign), and COCO / VOC
//! evaluation. Box coordinates follow [`boxes`]' documented convention everywhere.

pub mod anchors;
pub mod backbone;
pub mod boxes;
pub mod detector;
pub mod error;
pub mod eval;
pub mod fpn;
pub mod layers;
pub mod losses;
pub mod matcher;
pub mod nms;
pub mod rcnn;
pub mod retinanet;
pub mod roi_align;
pub mod target;

pub use backbone::Backbone;
pub use boxes::{BoxCoder, Boxes};
pub use detector::{Detector, DetectorConfig, HeadConfig};
pub use error::DetectError;
pub use target::{Detections, Target};
