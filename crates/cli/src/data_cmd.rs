//! `detnas data …`: built-in synthetic data written to disk, and the check of a fine-tuning
//! configuration's data.

use crate::Failure;
use clap::Subcommand;
use detnas_data::synth::{SyntheticCls, SyntheticClsConfig};
use detnas_runtime::ConfigDocument;
use detnas_train::FinetuneConfig;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Check the data of a fine-tuning configuration: load every split as fine-tuning would
    /// and decode every image (in parallel). Prints per split the images, boxes, boxes per
    /// class, images without boxes, dropped and clipped boxes with reasons, the image sizes,
    /// and every error with its file. Exit status 0 when the data is usable, 3 on errors.
    Check {
        /// Fine-tuning configuration (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Override a configuration key, e.g. `--set data.size_mismatch=use-image` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the synthetic classification set as an ImageFolder (`OUT/<class>/<n>.png`).
    SynthCls {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Number of images.
        #[arg(long, default_value_t = 1000)]
        images: usize,
        /// Image side (square), pixels.
        #[arg(long, default_value_t = 32)]
        size: u32,
        /// Number of classes (shapes).
        #[arg(long, default_value_t = 10)]
        classes: usize,
        /// Seed of the images.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Write the synthetic detection set: `OUT/images/*.png` + `OUT/annotations.json` (COCO).
    Synth {
        /// Output folder: new or empty (a finished set with the same parameters is kept).
        #[arg(long)]
        out: PathBuf,
        /// Number of images.
        #[arg(long, default_value_t = 1000)]
        images: usize,
        /// Seed of the images.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Image side (square), pixels.
        #[arg(long, default_value_t = 128)]
        size: u32,
        /// Number of classes (shapes).
        #[arg(long, default_value_t = 6)]
        classes: usize,
        /// Write Pascal VOC instead: `OUT` becomes a VOC root and the images image set SET
        /// (`JPEGImages/`, `Annotations/`, `ImageSets/Main/SET.txt`); run again with another
        /// SET and seed for another split (e.g. `trainval`, then `test`).
        #[arg(long, value_name = "SET")]
        voc_set: Option<String>,
    },
}

/// `detnas data check`.
fn check(config: &std::path::Path, overrides: &[String], json: bool) -> Result<(), Failure> {
    let cfg = FinetuneConfig::load(config, overrides)?;
    cfg.check()?;
    // A synthetic source is generated into a scratch folder, as a run would into its own.
    let scratch = std::env::temp_dir().join(format!("detnas-data-check-{}", std::process::id()));
    let opened = detnas_train::finetune::open_splits(&cfg, &scratch);
    let result = opened.map(|splits| {
        let mut summaries = splits.summaries.clone();
        for (s, d) in summaries.iter_mut().zip([&splits.train, &splits.search_val, &splits.test]) {
            if !json {
                eprintln!("decoding the {} images of {} …", d.len(), s.split);
            }
            s.errors = detnas_data::det::check::decode_all(d);
        }
        summaries
    });
    let _ = std::fs::remove_dir_all(&scratch);
    let summaries = match result {
        Ok(s) => s,
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({"ok": false, "error": e.to_string(), "splits": []}));
            }
            return Err(Failure::from(e));
        }
    };
    let errors: usize = summaries.iter().map(|s| s.errors.len()).sum();
    if json {
        println!("{}", serde_json::json!({"ok": errors == 0, "config": config, "splits": summaries}));
    } else {
        for s in &summaries {
            println!("{s}");
        }
        if errors == 0 {
            println!("data check: usable ({} splits, no errors)", summaries.len());
        } else {
            println!("data check: {errors} images cannot be read (listed above); training skips them as they come");
        }
    }
    if errors > 0 {
        return Err(Failure { code: 3, error: anyhow::anyhow!("{errors} images cannot be read") });
    }
    Ok(())
}

pub fn run(cmd: DataCommand) -> Result<(), Failure> {
    let (out, images, size, classes, seed) = match cmd {
        DataCommand::Check { config, overrides, json } => return check(&config, &overrides, json),
        DataCommand::SynthCls { out, images, size, classes, seed } => (out, images, size, classes, seed),
        DataCommand::Synth { out, images, seed, size, classes, voc_set } => {
            let cfg = detnas_data::det::synth::SyntheticDetConfig {
                images,
                width: size,
                height: size,
                classes,
                seed,
                objects: (1, 5),
                radius: (0.05, 0.3),
                max_overlap: 0.3,
                clutter: 6,
            };
            cfg.check().map_err(crate::usage)?;
            if let Some(set) = voc_set {
                // Drawn into a scratch folder, then written as VOC; the scratch goes either way
                // (the image set's list is written last, so a failed write lists nothing new).
                let scratch = out.join(format!(".synthetic-{set}"));
                let written =
                    cfg.write(&scratch).and_then(|ds| detnas_data::det::voc::write(&ds, &out, &set).map(|()| ds));
                let removed = std::fs::remove_dir_all(&scratch);
                let ds = written?;
                removed.map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", scratch.display()))?;
                let objects: usize = ds.images.iter().map(|i| i.objects.len()).sum();
                println!(
                    "wrote {images} images ({objects} objects, {classes} classes) as VOC image set {set} under {}",
                    out.display()
                );
                return Ok(());
            }
            let ds = cfg.write(&out)?;
            let objects: usize = ds.images.iter().map(|i| i.objects.len()).sum();
            println!(
                "wrote {images} images ({objects} objects, {classes} classes) to {}/images and {}/annotations.json",
                out.display(),
                out.display()
            );
            return Ok(());
        }
    };
    let set =
        SyntheticCls::new(SyntheticClsConfig { images, size, classes, seed, clutter: 2, max_rotation_deg: 180.0 })
            .map_err(crate::usage)?;
    set.write_image_folder(&out)?;
    println!("wrote {images} images of {classes} classes to {}", out.display());
    Ok(())
}
