//! Integration tests of the detection crate.

mod coco_parity;
mod detector;
mod losses;
