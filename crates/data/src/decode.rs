//! Strict image decoding: a truncated or corrupt file is an error naming the file.
//!
//! The `image` crate's JPEG decoder fills a truncated scan with grey and reports success, so
//! a JPEG must also end with its end-of-image marker (`FF D9`, trailing zero padding
//! allowed). PNG decoding already fails on truncation (missing data or CRC).

use crate::DataError;
use image::{ImageFormat, RgbImage};
use std::path::Path;

/// Reads and decodes `path` to RGB.
///
/// # Errors
/// [`DataError::Io`] when the file cannot be read; otherwise as [`decode_bytes`].
pub fn decode_image(path: &Path) -> Result<RgbImage, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    decode_bytes(&bytes, path)
}

/// Decodes an in-memory file; `path` only names it in errors.
///
/// # Errors
/// [`DataError::Decode`] for an empty file, a format other than JPEG or PNG, a JPEG without
/// its end-of-image marker, or a corrupt or zero-size image.
pub fn decode_bytes(bytes: &[u8], path: &Path) -> Result<RgbImage, DataError> {
    let err = |message: String| DataError::Decode { path: path.to_path_buf(), message };
    if bytes.is_empty() {
        return Err(err("empty file".into()));
    }
    let format = image::guess_format(bytes).map_err(|_| err("not a JPEG or PNG image".into()))?;
    if format == ImageFormat::Jpeg {
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        if end < 4 || bytes[end - 2..end] != [0xFF, 0xD9] {
            return Err(err("truncated JPEG (no end-of-image marker)".into()));
        }
    }
    if !matches!(format, ImageFormat::Jpeg | ImageFormat::Png) {
        return Err(err(format!("unsupported format {format:?} (JPEG and PNG are read)")));
    }
    let img = image::load_from_memory_with_format(bytes, format).map_err(|e| err(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(err("zero-size image".into()));
    }
    Ok(img.to_rgb8())
}
