//! Pictures of detections: the image with labelled boxes and a legend, as SVG (`detnas
//! predict` and the report's example predictions).

use detnas_detect::metrics::CocoDetection;
use image::RgbImage;
use std::collections::HashMap;
use std::path::Path;

const PALETTE: [[u8; 3]; 10] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 212],
];

/// One detection to draw.
#[derive(Clone, Debug, PartialEq)]
pub struct Drawn {
    /// `[x1, y1, x2, y2]` in image pixels.
    pub bbox: [f64; 4],
    /// Class name.
    pub class: String,
    /// Confidence.
    pub score: f32,
    /// Palette index (the class's label).
    pub colour: usize,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Top-left corner of a box's label of `size` `[width, height]`: above the box's corner
/// `[x1, y1]` when there is room, else inside it, and always within an image of `image`
/// `[width, height]` (a label wider than the image starts at its left edge).
fn label_origin([x1, y1]: [f64; 2], [tw, th]: [f64; 2], [w, h]: [f64; 2]) -> (f64, f64) {
    let y = if y1 >= th { y1 - th } else { y1 };
    (x1.min(w - tw).max(0.0), y.min(h - th).max(0.0))
}

/// The image with labelled boxes, `truth` boxes (`[x1, y1, x2, y2]`, pixels) dashed, and a
/// legend of the classes drawn, as a self-contained SVG (the image embedded as PNG): readable
/// at any size in a browser.
///
/// # Errors
/// A message when the image cannot be encoded as PNG.
pub fn detections_svg(img: &RgbImage, dets: &[Drawn], truth: &[[f64; 4]]) -> Result<String, String> {
    use base64::Engine;
    use std::fmt::Write;
    let (w, h) = (img.width() as f64, img.height() as f64);
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).map_err(|e| e.to_string())?;
    let stroke = (w.min(h) / 150.0).max(2.0);
    let font = (w.min(h) / 28.0).clamp(11.0, 28.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="{font:.1}"><image width="{w}" height="{h}" href="data:image/png;base64,{}"/>"#,
        base64::engine::general_purpose::STANDARD.encode(&png)
    );
    let rgb = |c: usize| {
        let p = PALETTE[c % PALETTE.len()];
        format!("rgb({},{},{})", p[0], p[1], p[2])
    };
    for [x1, y1, x2, y2] in truth {
        let _ = write!(
            svg,
            r#"<rect x="{x1:.1}" y="{y1:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="white" stroke-width="{stroke:.1}" stroke-dasharray="{:.1}"/>"#,
            x2 - x1,
            y2 - y1,
            3.0 * stroke
        );
    }
    for d in dets {
        let [x1, y1, x2, y2] = d.bbox;
        let label = format!("{} {:.2}", d.class, d.score);
        // A label wider than a small picture is set smaller.
        let chars = label.chars().count() as f64;
        let lf = font.min(((w - 6.0) / (0.6 * chars)).max(1.0));
        let tw = lf * 0.6 * chars + 6.0;
        let (tx, ty) = label_origin([x1, y1], [tw, lf + 4.0], [w, h]);
        let _ = write!(
            svg,
            r#"<rect x="{x1:.1}" y="{y1:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="{c}" stroke-width="{stroke:.1}"/><rect x="{tx:.1}" y="{ty:.1}" width="{tw:.1}" height="{:.1}" fill="{c}"/><text x="{:.1}" y="{:.1}" font-size="{lf:.1}" fill="black">{}</text>"#,
            x2 - x1,
            y2 - y1,
            lf + 4.0,
            tx + 3.0,
            ty + lf,
            esc(&label),
            c = rgb(d.colour)
        );
    }
    let mut classes: Vec<(usize, &str)> = dets.iter().map(|d| (d.colour, d.class.as_str())).collect();
    classes.sort();
    classes.dedup();
    if !truth.is_empty() {
        classes.push((usize::MAX, "ground truth (dashed)"));
    }
    if !classes.is_empty() {
        // The legend is set smaller when the picture is narrower or lower than it.
        let longest = classes.iter().map(|c| c.1.chars().count()).max().unwrap_or(1) as f64;
        let rows = classes.len() as f64;
        let font = font.min(((w - 8.0) / (0.6 * longest + 2.0)).min((h - 14.0) / rows - 6.0).max(1.0));
        let lw = font * 0.6 * longest + font * 2.0;
        let lh = (font + 6.0) * classes.len() as f64 + 6.0;
        let _ = write!(
            svg,
            r#"<rect x="{:.1}" y="4" width="{lw:.1}" height="{lh:.1}" fill="white" fill-opacity="0.8"/>"#,
            w - lw - 4.0
        );
        for (i, (c, name)) in classes.iter().enumerate() {
            let y = 8.0 + (font + 6.0) * i as f64;
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{y:.1}" width="{font:.1}" height="{font:.1}" fill="{}" stroke="black" stroke-width="0.5"/><text x="{:.1}" y="{:.1}" font-size="{font:.1}">{}</text>"#,
                w - lw + 2.0,
                if *c == usize::MAX { "white".to_string() } else { rgb(*c) },
                w - lw + font + 6.0,
                y + font - 2.0,
                esc(name)
            );
        }
    }
    svg.push_str("</svg>\n");
    Ok(svg)
}

/// The score from which `detnas predict` and the report draw a detection.
pub const SCORE_THRESHOLD: f64 = 0.3;

/// The long side, pixels, to which [`examples`] enlarges smaller images.
const MIN_SIDE: u32 = 384;

/// Pictures of the first `n` images with ground truth in a retraining's kept test detections
/// (`DIR/gt.json`, `DIR/detections.json`: `detnas_train::finetune`'s `test/` folder): each
/// image at most `max_side` pixels on its long side (at least 384), its detections from
/// [`SCORE_THRESHOLD`] on and its ground truth dashed. Returns `(image file name, SVG)`.
///
/// # Errors
/// A message naming the file that cannot be read, parsed or decoded.
pub fn examples(dir: &Path, n: usize, max_side: u32) -> Result<Vec<(String, String)>, String> {
    fn read<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T, String> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
    }
    let gt: serde_json::Value = read(&dir.join("gt.json"))?;
    let detections: Vec<CocoDetection> = read(&dir.join("detections.json"))?;
    let empty = Vec::new();
    let list = |v: &'_ serde_json::Value, key: &str| v[key].as_array().unwrap_or(&empty).clone();
    let names: HashMap<u64, (usize, String)> = list(&gt, "categories")
        .iter()
        .enumerate()
        .filter_map(|(l, c)| Some((c["id"].as_u64()?, (l, c["name"].as_str()?.to_string()))))
        .collect();
    let xyxy = |b: &serde_json::Value| -> Option<[f64; 4]> {
        let v: Vec<f64> = b.as_array()?.iter().filter_map(serde_json::Value::as_f64).collect();
        (v.len() == 4).then(|| [v[0], v[1], v[0] + v[2], v[1] + v[3]])
    };
    let annotations = list(&gt, "annotations");
    let mut out = Vec::new();
    for image in list(&gt, "images") {
        if out.len() == n {
            break;
        }
        let (Some(id), Some(file)) = (image["id"].as_u64(), image["file_name"].as_str()) else { continue };
        let truth: Vec<[f64; 4]> = annotations
            .iter()
            .filter(|a| a["image_id"].as_u64() == Some(id))
            .filter_map(|a| xyxy(&a["bbox"]))
            .collect();
        if truth.is_empty() {
            continue;
        }
        let img = detnas_data::decode_image(Path::new(file)).map_err(|e| e.to_string())?;
        // Small images are enlarged (labels are set at a readable size relative to the image).
        let long = img.width().max(img.height());
        let scale = f64::from(max_side.min(long.max(MIN_SIDE))) / f64::from(long);
        let img = if scale != 1.0 {
            let (w, h) = ((f64::from(img.width()) * scale).round(), (f64::from(img.height()) * scale).round());
            image::imageops::resize(&img, (w as u32).max(1), (h as u32).max(1), image::imageops::FilterType::Triangle)
        } else {
            img
        };
        let scaled = |b: [f64; 4]| b.map(|v| v * scale);
        let drawn: Vec<Drawn> = detections
            .iter()
            .filter(|d| d.image_id == id && d.score >= SCORE_THRESHOLD)
            .filter_map(|d| {
                let (label, class) = names.get(&d.category_id)?.clone();
                let [x, y, w, h] = d.bbox;
                Some(Drawn { bbox: scaled([x, y, x + w, y + h]), class, score: d.score as f32, colour: label })
            })
            .collect();
        let truth: Vec<[f64; 4]> = truth.into_iter().map(scaled).collect();
        let name = Path::new(file).file_name().map_or_else(|| file.to_string(), |f| f.to_string_lossy().into_owned());
        out.push((name, detections_svg(&img, &drawn, &truth).map_err(|e| format!("{file}: {e}"))?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::label_origin;

    /// Every label lies inside the picture, wherever its box is (corners, edges, degenerate).
    #[test]
    fn labels_stay_inside_the_image() {
        let (w, h, size) = (200.0, 100.0, [60.0, 16.0]);
        assert_eq!(label_origin([50.0, 40.0], size, [w, h]), (50.0, 24.0), "above the box");
        assert_eq!(label_origin([50.0, 5.0], size, [w, h]), (50.0, 5.0), "inside, no room above");
        for x1 in [0.0, 10.0, 150.0, 190.0, 200.0] {
            for y1 in [0.0, 8.0, 50.0, 95.0, 100.0] {
                let (x, y) = label_origin([x1, y1], size, [w, h]);
                assert!(x >= 0.0 && x + size[0] <= w && y >= 0.0 && y + size[1] <= h, "({x1}, {y1}) → ({x}, {y})");
            }
        }
        assert_eq!(label_origin([30.0, 50.0], [300.0, 16.0], [w, h]).0, 0.0, "wider than the image");
    }
}
