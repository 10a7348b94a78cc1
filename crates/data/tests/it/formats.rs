//! Image formats and colour conversions: TIFF, BMP and WebP next to JPEG and PNG; EXIF
//! orientation; CMYK, grey, alpha and 16-bit samples; refused floating-point and multi-page
//! files; truncation of every format is an error. Fixtures: `tests/fixtures/gen.py`
//! (Pillow) for the CMYK and EXIF JPEGs; the rest are written here by independent encoders
//! (the `tiff` crate's, `image`'s BMP, PNG and lossless WebP encoders).

use detnas_data::{DataError, decode_image, image_size};
use image::{ImageFormat, Rgb, RgbImage};
use std::path::{Path, PathBuf};
use tiff::encoder::{TiffEncoder, colortype};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("detnas-formats-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 % 256) as u8, (y * 13 % 256) as u8, ((x + y) * 5 % 256) as u8]))
}

fn write_tiff<C: colortype::ColorType>(path: &Path, w: u32, h: u32, data: &[C::Inner], pages: usize)
where
    [C::Inner]: tiff::encoder::TiffValue,
{
    let mut enc = TiffEncoder::new(std::fs::File::create(path).unwrap()).unwrap();
    for _ in 0..pages {
        enc.write_image::<C>(w, h, data).unwrap();
    }
}

#[test]
fn tiff_bmp_and_webp_decode_to_the_same_pixels() {
    let d = tmp("lossless");
    let img = gradient(37, 23);
    let tif = d.join("a.tif");
    write_tiff::<colortype::RGB8>(&tif, 37, 23, img.as_raw(), 1);
    let bmp = d.join("a.bmp");
    img.save_with_format(&bmp, ImageFormat::Bmp).unwrap();
    let webp = d.join("a.webp");
    img.save_with_format(&webp, ImageFormat::WebP).unwrap();
    for p in [&tif, &bmp, &webp] {
        assert_eq!(decode_image(p).unwrap(), img, "{}", p.display());
        assert_eq!(image_size(p).unwrap(), (37, 23), "{}", p.display());
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn colour_conversions() {
    let d = tmp("colour");
    // CMYK JPEG of pure red stays red (lossy: within a few levels).
    let red = decode_image(&fixture("cmyk-red.jpg")).unwrap();
    assert_eq!(red.dimensions(), (16, 8));
    for p in red.pixels() {
        assert!(p[0] >= 245 && p[1] <= 10 && p[2] <= 10, "CMYK red decoded as {p:?}");
    }
    // Grey is replicated (8-bit TIFF and PNG).
    let grey: Vec<u8> = (0..6 * 4).map(|i| (i * 10) as u8).collect();
    let gt = d.join("grey.tif");
    write_tiff::<colortype::Gray8>(&gt, 6, 4, &grey, 1);
    let gp = d.join("grey.png");
    image::GrayImage::from_raw(6, 4, grey.clone()).unwrap().save(&gp).unwrap();
    for p in [&gt, &gp] {
        let out = decode_image(p).unwrap();
        for (px, &g) in out.pixels().zip(&grey) {
            assert_eq!(px.0, [g, g, g], "{}", p.display());
        }
    }
    // Alpha is dropped, not composited.
    let ap = d.join("alpha.png");
    image::RgbaImage::from_pixel(3, 3, image::Rgba([200, 100, 50, 0])).save(&ap).unwrap();
    assert!(decode_image(&ap).unwrap().pixels().all(|p| p.0 == [200, 100, 50]));
    // 16 bits are scaled: v·255/65535, rounded (65535 → 255, 32896 → 128, 257 → 1).
    let wide: Vec<u16> = [65535u16, 32896, 257, 0, 65535, 32896].repeat(2);
    let t16 = d.join("rgb16.tif");
    write_tiff::<colortype::RGB16>(&t16, 2, 2, &wide, 1);
    let p16 = d.join("rgb16.png");
    image::ImageBuffer::<Rgb<u16>, _>::from_raw(2, 2, wide.clone()).unwrap().save(&p16).unwrap();
    for p in [&t16, &p16] {
        let out = decode_image(p).unwrap();
        assert_eq!(out.get_pixel(0, 0).0, [255, 128, 1], "{}", p.display());
        assert_eq!(out.get_pixel(1, 0).0, [0, 255, 128], "{}", p.display());
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn exif_orientation_is_applied_to_pixels_and_header_sizes() {
    // Stored 100×40 (left half red), EXIF 6: displayed 40×100 with red on top.
    let p = fixture("exif6.jpg");
    assert_eq!(image::image_dimensions(&p).unwrap(), (100, 40), "precondition: stored frame");
    assert_eq!(image_size(&p).unwrap(), (40, 100));
    let img = decode_image(&p).unwrap();
    assert_eq!(img.dimensions(), (40, 100));
    let (top, bottom) = (img.get_pixel(20, 10).0, img.get_pixel(20, 90).0);
    assert!(top[0] > 200 && top[2] < 50, "top {top:?}");
    assert!(bottom[2] > 200 && bottom[0] < 50, "bottom {bottom:?}");
}

#[test]
fn floating_point_and_multi_page_tiffs_are_refused_with_the_reason() {
    let d = tmp("refused");
    let f = d.join("float.tif");
    write_tiff::<colortype::RGB32Float>(&f, 2, 2, &[0.5f32; 12], 1);
    let m = d.join("pages.tif");
    write_tiff::<colortype::RGB8>(&m, 2, 2, &[9u8; 12], 3);
    for (p, needle) in [(&f, "floating-point"), (&m, "multi-page TIFF (3 pages)")] {
        for e in [decode_image(p).unwrap_err(), image_size(p).unwrap_err()] {
            assert!(matches!(e, DataError::Decode { .. }), "{e}");
            let msg = e.to_string();
            assert!(msg.contains(needle) && msg.contains(&p.display().to_string()), "{msg}");
        }
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn truncated_files_of_every_format_are_errors() {
    let d = tmp("cut");
    let img = gradient(64, 48);
    let tif = d.join("cut.tif");
    write_tiff::<colortype::RGB8>(&tif, 64, 48, img.as_raw(), 1);
    let bmp = d.join("cut.bmp");
    img.save_with_format(&bmp, ImageFormat::Bmp).unwrap();
    let webp = d.join("cut.webp");
    img.save_with_format(&webp, ImageFormat::WebP).unwrap();
    for p in [&tif, &bmp, &webp] {
        let bytes = std::fs::read(p).unwrap();
        // TIFF keeps its directory at the end: cut the pixel data in the middle instead.
        let cut: Vec<u8> = if p == &tif {
            let mut b = bytes.clone();
            b.truncate(bytes.len() / 2);
            b
        } else {
            bytes[..bytes.len() * 6 / 10].to_vec()
        };
        std::fs::write(p, cut).unwrap();
        let e = decode_image(p).unwrap_err();
        assert!(matches!(e, DataError::Decode { .. } | DataError::Io { .. }), "{}: {e}", p.display());
    }
    std::fs::remove_dir_all(&d).unwrap();
}
