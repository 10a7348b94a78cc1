//! MNIST / Fashion-MNIST IDX files (raw or gzip): `u8` images `[N, H, W]` and `u8` labels
//! `[N]`. Greyscale is replicated to three channels.

use crate::{ClsDataset, DataError};
use image::RgbImage;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// An in-memory IDX image/label pair.
#[derive(Clone, Debug)]
pub struct IdxDataset {
    height: u32,
    width: u32,
    pixels: Vec<u8>,
    labels: Vec<u8>,
    classes: Vec<String>,
    fingerprint: String,
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::Idx { path: path.to_path_buf(), message: format!("gzip: {e}") })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX header: returns the dimensions and the payload.
fn parse_idx<'a>(bytes: &'a [u8], path: &Path, want_dims: usize) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    let err = |message: String| DataError::Idx { path: path.to_path_buf(), message };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(err("bad magic number".into()));
    }
    if bytes[2] != 0x08 {
        return Err(err(format!("element type 0x{:02x} is not unsigned byte (0x08)", bytes[2])));
    }
    let ndims = bytes[3] as usize;
    if ndims != want_dims {
        return Err(err(format!("{ndims} dimensions, expected {want_dims}")));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(err("truncated header".into()));
    }
    let dims: Vec<usize> =
        bytes[4..header].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    // The product of the dimensions can overflow (a corrupt header); compare in u128.
    let n: u128 = dims.iter().map(|&d| d as u128).product();
    if (bytes.len() - header) as u128 != n {
        return Err(err(format!(
            "payload has {} bytes, the header announces {n} ({})",
            bytes.len() - header,
            dims.iter().map(usize::to_string).collect::<Vec<_>>().join(" × ")
        )));
    }
    Ok((dims, &bytes[header..]))
}

impl IdxDataset {
    /// Reads an images file (3-D) and a labels file (1-D) of equal count.
    ///
    /// # Errors
    /// [`DataError::Io`] when a file cannot be read; [`DataError::Idx`] for bad gzip, a bad header
    /// or payload size, unequal counts, no images, or images too large.
    pub fn open(images: &Path, labels: &Path) -> Result<IdxDataset, DataError> {
        let ib = read_maybe_gz(images)?;
        let lb = read_maybe_gz(labels)?;
        let (idims, pixels) = parse_idx(&ib, images, 3)?;
        let (ldims, labels_raw) = parse_idx(&lb, labels, 1)?;
        if idims[0] != ldims[0] {
            return Err(DataError::Idx {
                path: labels.to_path_buf(),
                message: format!("{} labels for {} images in {}", ldims[0], idims[0], images.display()),
            });
        }
        if idims[0] == 0 || idims[1] == 0 || idims[2] == 0 {
            return Err(DataError::Idx { path: images.to_path_buf(), message: "no images".into() });
        }
        let (height, width) = match (u32::try_from(idims[1]), u32::try_from(idims[2])) {
            (Ok(h), Ok(w)) if (h as u64) * (w as u64) <= u32::MAX as u64 => (h, w),
            _ => {
                return Err(DataError::Idx {
                    path: images.to_path_buf(),
                    message: format!("images of {} × {} pixels are too large", idims[1], idims[2]),
                });
            }
        };
        let max = labels_raw.iter().copied().max().unwrap_or(0) as usize;
        let classes = (0..=max).map(|c| c.to_string()).collect();
        let mut h = Sha256::new();
        h.update(&ib);
        h.update(&lb);
        Ok(IdxDataset {
            height,
            width,
            pixels: pixels.to_vec(),
            labels: labels_raw.to_vec(),
            classes,
            fingerprint: format!("idx-v1:{:x}", h.finalize()),
        })
    }

    /// Imposes a class list (e.g. from a checkpoint); labels must be inside it.
    ///
    /// # Errors
    /// [`DataError::Invalid`] when a label is not below `classes.len()`.
    pub fn with_classes(mut self, classes: Vec<String>) -> Result<IdxDataset, DataError> {
        if let Some(&l) = self.labels.iter().find(|&&l| l as usize >= classes.len()) {
            return Err(DataError::Invalid(format!("IDX label {l} is outside the {} classes", classes.len())));
        }
        self.classes = classes;
        Ok(self)
    }
}

impl ClsDataset for IdxDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn label(&self, i: usize) -> usize {
        self.labels[i] as usize
    }
    fn load(&self, i: usize) -> Result<RgbImage, DataError> {
        let n = self.height as usize * self.width as usize;
        let grey = self
            .pixels
            .get(i * n..(i + 1) * n)
            .ok_or_else(|| DataError::Invalid(format!("IDX image #{i} is outside the {} images", self.len())))?;
        let rgb: Vec<u8> = grey.iter().flat_map(|&g| [g, g, g]).collect();
        RgbImage::from_raw(self.width, self.height, rgb)
            .ok_or_else(|| DataError::Invalid(format!("IDX image #{i}: {} pixels", grey.len())))
    }
    fn name(&self, i: usize) -> String {
        format!("IDX image #{i}")
    }
    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
}
