//! Strict image decoding: a truncated or corrupt file is an error naming the file.
//!
//! Formats: JPEG, PNG, TIFF, BMP and WebP. Every image becomes 8-bit RGB in its *displayed*
//! frame:
//! * **EXIF orientation** (JPEG, PNG, TIFF, WebP) is applied, so a photo stored 100×40 with
//!   orientation 6 is decoded 40×100, the frame its annotations were drawn in. Sizes from
//!   headers ([`image_size`]) are reported in the same frame.
//! * **Colour:** grey is replicated to the three channels; alpha is dropped (not composited);
//!   CMYK JPEGs and TIFFs are converted to RGB; 16-bit samples are scaled to 8 bits
//!   (`v · 255 / 65535`, rounded).
//! * **Refused, with the reason:** floating-point images (their values have no fixed range:
//!   convert them to 8 or 16 bits first), multi-page TIFFs (split the pages first), and every
//!   other format.
//!
//! The `image` crate's JPEG decoder fills a truncated scan with grey and reports success, so
//! a JPEG must also end with its end-of-image marker (`FF D9`, trailing zero padding
//! allowed). The other decoders fail on truncation (missing data, CRC or chunk sizes).

use crate::DataError;
use image::metadata::Orientation;
use image::{ColorType, DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use std::io::{BufRead, Cursor, Seek};
use std::path::Path;

/// The extensions of the readable formats (lower case), for listing image folders.
pub const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "tif", "tiff", "bmp", "webp"];

/// Whether `path` has one of [`IMAGE_EXTENSIONS`] (any case).
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

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
/// [`DataError::Decode`] for an empty file, a format that is not read (see the module), a JPEG
/// without its end-of-image marker, a floating-point image, a multi-page TIFF, or a corrupt or
/// zero-size image.
pub fn decode_bytes(bytes: &[u8], path: &Path) -> Result<RgbImage, DataError> {
    let err = |message: String| DataError::Decode { path: path.to_path_buf(), message };
    if bytes.is_empty() {
        return Err(err("empty file".into()));
    }
    let format = format_of(bytes, path)?;
    if format == ImageFormat::Jpeg {
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        if end < 4 || bytes[end - 2..end] != [0xFF, 0xD9] {
            return Err(err("truncated JPEG (no end-of-image marker)".into()));
        }
    }
    if format == ImageFormat::Tiff {
        single_page_tiff(bytes, path)?;
    }
    let mut decoder =
        ImageReader::with_format(Cursor::new(bytes), format).into_decoder().map_err(|e| err(e.to_string()))?;
    check_color(decoder.color_type(), path)?;
    let orientation = orientation_of(&mut decoder);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| err(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(err("zero-size image".into()));
    }
    img.apply_orientation(orientation);
    Ok(img.to_rgb8())
}

/// `(width, height)` of the image at `path` as it is displayed (after EXIF orientation),
/// from its header alone (no pixel data is decoded).
///
/// # Errors
/// [`DataError::Io`] when the file cannot be opened; [`DataError::Decode`] for an empty file,
/// a format that is not read, a floating-point image, a multi-page TIFF or an unreadable
/// header.
pub fn image_size(path: &Path) -> Result<(u32, u32), DataError> {
    let err = |message: String| DataError::Decode { path: path.to_path_buf(), message };
    let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    let mut reader = std::io::BufReader::new(file);
    let head = reader.fill_buf().map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    if head.is_empty() {
        return Err(err("empty file".into()));
    }
    let format = format_of(head, path)?;
    if format == ImageFormat::Tiff {
        single_page_tiff_reader(&mut reader, path)?;
        reader.rewind().map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    }
    let mut decoder = ImageReader::with_format(reader, format).into_decoder().map_err(|e| err(e.to_string()))?;
    check_color(decoder.color_type(), path)?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(err("zero-size image".into()));
    }
    Ok(match orientation_of(&mut decoder) {
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH => {
            (h, w)
        }
        _ => (w, h),
    })
}

fn format_of(head: &[u8], path: &Path) -> Result<ImageFormat, DataError> {
    let err = |message: String| DataError::Decode { path: path.to_path_buf(), message };
    let format = image::guess_format(head).map_err(|_| err("not an image of a known format".into()))?;
    if !matches!(
        format,
        ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Tiff | ImageFormat::Bmp | ImageFormat::WebP
    ) {
        return Err(err(format!("unsupported format {format:?} (JPEG, PNG, TIFF, BMP and WebP are read)")));
    }
    Ok(format)
}

/// The EXIF orientation; an unreadable EXIF block counts as none (the pixels are still valid).
fn orientation_of(decoder: &mut impl ImageDecoder) -> Orientation {
    decoder.orientation().unwrap_or(Orientation::NoTransforms)
}

fn check_color(color: ColorType, path: &Path) -> Result<(), DataError> {
    if matches!(color, ColorType::Rgb32F | ColorType::Rgba32F) {
        return Err(DataError::Decode {
            path: path.to_path_buf(),
            message: "floating-point image: its values have no fixed range; convert it to 8 or 16 bits".into(),
        });
    }
    Ok(())
}

fn single_page_tiff(bytes: &[u8], path: &Path) -> Result<(), DataError> {
    single_page_tiff_reader(&mut Cursor::new(bytes), path)
}

fn single_page_tiff_reader<R: std::io::Read + Seek>(r: &mut R, path: &Path) -> Result<(), DataError> {
    let err = |message: String| DataError::Decode { path: path.to_path_buf(), message };
    let mut d = tiff::decoder::Decoder::new(r).map_err(|e| err(format!("TIFF: {e}")))?;
    if d.more_images() {
        let mut pages = 1;
        while d.more_images() && pages < 1000 {
            d.next_image().map_err(|e| err(format!("TIFF: {e}")))?;
            pages += 1;
        }
        return Err(err(format!(
            "multi-page TIFF ({pages} pages): one image per file is read; split the pages into files"
        )));
    }
    Ok(())
}
