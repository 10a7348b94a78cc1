//! ImageFolder: `root/<class>/<image>` (ImageNet layout). Classes are the sorted folder
//! names; images are `.jpg`, `.jpeg` or `.png` (case-insensitive), sorted by path.

use crate::{ClsDataset, DataError, decode_image};
use image::RgbImage;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// An ImageFolder dataset; listing happens at construction, decoding on [`ClsDataset::load`].
#[derive(Clone, Debug)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    samples: Vec<(PathBuf, usize)>,
    fingerprint: String,
}

fn is_image(p: &Path) -> bool {
    crate::decode::is_image_file(p)
}

impl ImageFolder {
    /// Lists `root`. Errors before any training starts: unreadable root, no class folders, a
    /// class folder without images. With `classes = Some(list)` the class mapping is imposed
    /// (e.g. the one saved in a checkpoint) and every folder must be in it.
    ///
    /// # Errors
    /// [`DataError::BadRoot`] when `root` cannot be listed, [`DataError::NoClasses`] without class
    /// folders, [`DataError::EmptyClass`] for a class without images, [`DataError::Invalid`] for a
    /// folder outside `classes`, [`DataError::Io`] when listing `root` or a class folder fails.
    ///
    /// # Panics
    /// Never: every class folder is checked against `classes` first.
    pub fn open(root: &Path, classes: Option<&[String]>) -> Result<ImageFolder, DataError> {
        let entries = std::fs::read_dir(root).map_err(|_| DataError::BadRoot(root.to_path_buf()))?;
        let mut found: Vec<String> = Vec::new();
        for e in entries {
            let e = e.map_err(|source| DataError::Io { path: root.to_path_buf(), source })?;
            if e.path().is_dir() {
                found.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        found.sort();
        if found.is_empty() {
            return Err(DataError::NoClasses(root.to_path_buf()));
        }
        let classes: Vec<String> = match classes {
            Some(list) => {
                if let Some(extra) = found.iter().find(|f| !list.contains(f)) {
                    return Err(DataError::Invalid(format!(
                        "{}: class folder '{extra}' is not one of the {} classes the model was trained on",
                        root.display(),
                        list.len()
                    )));
                }
                list.to_vec()
            }
            None => found.clone(),
        };
        let mut samples = Vec::new();
        let mut hasher = Sha256::new();
        for name in &found {
            let label = classes.iter().position(|c| c == name).expect("checked above");
            let dir = root.join(name);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|source| DataError::Io { path: dir.clone(), source })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            if files.is_empty() {
                return Err(DataError::EmptyClass(dir));
            }
            files.sort();
            for f in files {
                let len = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
                hasher.update(f.strip_prefix(root).unwrap_or(&f).to_string_lossy().as_bytes());
                hasher.update(len.to_le_bytes());
                samples.push((f, label));
            }
        }
        let fingerprint = format!("image-folder-v1:{}:{:x}", samples.len(), hasher.finalize());
        Ok(ImageFolder { root: root.to_path_buf(), classes, samples, fingerprint })
    }

    /// The dataset root.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl ClsDataset for ImageFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn label(&self, i: usize) -> usize {
        self.samples[i].1
    }
    fn load(&self, i: usize) -> Result<RgbImage, DataError> {
        decode_image(&self.samples[i].0)
    }
    fn name(&self, i: usize) -> String {
        self.samples[i].0.display().to_string()
    }
    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
}
