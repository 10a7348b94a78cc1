//! A view of some samples of a dataset (e.g. the BN-recalibration images).

use crate::{ClsDataset, DataError};
use image::RgbImage;
use std::sync::Arc;

/// Samples `indices` of `inner`, in that order.
#[derive(Clone)]
pub struct Subset {
    inner: Arc<dyn ClsDataset>,
    indices: Vec<usize>,
}

impl std::fmt::Debug for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Subset({} samples)", self.indices.len())
    }
}

impl Subset {
    /// # Panics
    /// If an index is out of range.
    pub fn new(inner: Arc<dyn ClsDataset>, indices: Vec<usize>) -> Subset {
        assert!(indices.iter().all(|&i| i < inner.len()), "subset index out of range");
        Subset { inner, indices }
    }
}

impl ClsDataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn classes(&self) -> &[String] {
        self.inner.classes()
    }
    fn label(&self, i: usize) -> usize {
        self.inner.label(self.indices[i])
    }
    fn load(&self, i: usize) -> Result<RgbImage, DataError> {
        self.inner.load(self.indices[i])
    }
    fn name(&self, i: usize) -> String {
        self.inner.name(self.indices[i])
    }
    fn fingerprint(&self) -> String {
        format!("subset:{}:{:?}", self.inner.fingerprint(), self.indices)
    }
}
