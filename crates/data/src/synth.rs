//! The built-in synthetic classification set: one shape per image (10 classes, see
//! [`Shape`]), random colour, size, rotation and position, lighter than its textured,
//! cluttered background. Sample `i` is a pure function of `(seed, i)`: nothing is stored, nothing is
//! downloaded, and any split can be regenerated or written to disk.

use crate::shapes::{Placement, Shape, background, object_colour, uniform};
use crate::{ClsDataset, DataError, mix_seed};
use detnas_space::rng::{below, seeded};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Parameters of a synthetic classification split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticClsConfig {
    /// Number of images. Required.
    pub images: usize,
    /// Side of the square images, pixels. Default 32.
    pub size: u32,
    /// Number of classes (1..=10; the first `classes` shapes). Default 10.
    pub classes: usize,
    /// Generator seed; use different seeds for train and validation splits. Required.
    pub seed: u64,
    /// Clutter line segments per image. Default 2.
    pub clutter: usize,
    /// Shapes are rotated uniformly within ± this many degrees. Default 180.
    pub max_rotation_deg: f64,
}

/// The defaults; `images` and `seed` are required (0 here).
impl Default for SyntheticClsConfig {
    fn default() -> SyntheticClsConfig {
        SyntheticClsConfig { images: 0, size: 32, classes: 10, seed: 0, clutter: 2, max_rotation_deg: 180.0 }
    }
}

/// A synthetic classification split (generated on demand).
#[derive(Clone, Debug)]
pub struct SyntheticCls {
    config: SyntheticClsConfig,
    names: Vec<String>,
}

impl SyntheticCls {
    /// Checks the parameters.
    ///
    /// # Errors
    /// [`DataError::Invalid`] when `classes` is not in 1..=10 or `size` is below 8.
    pub fn new(config: SyntheticClsConfig) -> Result<SyntheticCls, DataError> {
        if !(1..=Shape::ALL.len()).contains(&config.classes) {
            return Err(DataError::Invalid(format!("synthetic classes must be 1..=10, got {}", config.classes)));
        }
        if config.size < 8 {
            return Err(DataError::Invalid(format!("synthetic image size must be at least 8, got {}", config.size)));
        }
        let names = Shape::ALL[..config.classes].iter().map(|s| s.name().to_string()).collect();
        Ok(SyntheticCls { config, names })
    }

    /// The parameters.
    pub fn config(&self) -> &SyntheticClsConfig {
        &self.config
    }

    /// Renders sample `i` with its label.
    pub fn render(&self, i: usize) -> (RgbImage, usize) {
        let mut rng = seeded(mix_seed(self.config.seed, &[i as u64]));
        let label = below(&mut rng, self.config.classes as u64) as usize;
        let s = self.config.size as f64;
        let (mut img, _) = background(&mut rng, self.config.size, self.config.size, self.config.clutter);
        let radius = uniform(&mut rng, 0.22, 0.42) * s;
        let margin = radius * 0.6;
        let placement = Placement {
            shape: Shape::ALL[label],
            cx: uniform(&mut rng, margin, s - margin),
            cy: uniform(&mut rng, margin, s - margin),
            radius,
            angle: uniform(&mut rng, -1.0, 1.0) * self.config.max_rotation_deg.to_radians(),
            colour: object_colour(&mut rng),
        };
        placement.draw(&mut img);
        (img, label)
    }

    /// Writes the split as an ImageFolder (`dir/<class>/<index>.png`).
    ///
    /// # Errors
    /// [`DataError::Io`] when a class folder cannot be created or an image cannot be encoded or
    /// written.
    pub fn write_image_folder(&self, dir: &Path) -> Result<(), DataError> {
        for name in &self.names {
            let d = dir.join(name);
            std::fs::create_dir_all(&d).map_err(|source| DataError::Io { path: d.clone(), source })?;
        }
        use rayon::prelude::*;
        (0..self.config.images).into_par_iter().try_for_each(|i| {
            let (img, label) = self.render(i);
            let path = dir.join(&self.names[label]).join(format!("{i:06}.png"));
            img.save(&path).map_err(|e| DataError::Io { path: path.clone(), source: std::io::Error::other(e) })
        })
    }
}

impl ClsDataset for SyntheticCls {
    fn len(&self) -> usize {
        self.config.images
    }
    fn classes(&self) -> &[String] {
        &self.names
    }
    fn label(&self, i: usize) -> usize {
        // The label is the first draw of the sample's stream.
        below(&mut seeded(mix_seed(self.config.seed, &[i as u64])), self.config.classes as u64) as usize
    }
    fn load(&self, i: usize) -> Result<RgbImage, DataError> {
        Ok(self.render(i).0)
    }
    fn name(&self, i: usize) -> String {
        format!("synthetic #{i} (seed {})", self.config.seed)
    }
    fn fingerprint(&self) -> String {
        format!("synthetic-cls-v1:{}", serde_json::to_string(&self.config).expect("serialisable"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_balanced_and_label_consistent() {
        let d = SyntheticCls::new(SyntheticClsConfig {
            images: 2000,
            size: 32,
            classes: 10,
            seed: 4,
            clutter: 2,
            max_rotation_deg: 180.0,
        })
        .unwrap();
        let (a, la) = d.render(17);
        let (b, lb) = d.render(17);
        assert_eq!((a.as_raw(), la), (b.as_raw(), lb));
        assert_eq!(d.label(17), la);
        let mut counts = [0usize; 10];
        for i in 0..2000 {
            counts[d.label(i)] += 1;
        }
        assert!(counts.iter().all(|&c| (150..250).contains(&c)), "{counts:?}");
        let other = SyntheticCls::new(SyntheticClsConfig { seed: 5, ..d.config().clone() }).unwrap();
        assert_ne!(other.render(17).0.as_raw(), a.as_raw());
        assert!(SyntheticCls::new(SyntheticClsConfig { classes: 11, ..d.config().clone() }).is_err());
    }
}
