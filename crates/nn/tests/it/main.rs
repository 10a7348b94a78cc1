//! Integration tests of detnas-nn: structure (shapes, strides, counts), inheritance, path
//! isolation of gradients, and the golden fixture made with PyTorch.

mod bn;
mod golden;
mod structure;
mod zero_cost;
