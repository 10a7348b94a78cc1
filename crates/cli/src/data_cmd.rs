//! `detnas data …`: built-in synthetic data written to disk.

use crate::Failure;
use clap::Subcommand;
use detnas_data::synth::{SyntheticCls, SyntheticClsConfig};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Write the synthetic classification set as an ImageFolder (`OUT/<class>/<n>.png`).
    SynthCls {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1000)]
        images: usize,
        #[arg(long, default_value_t = 32)]
        size: u32,
        #[arg(long, default_value_t = 10)]
        classes: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Write the synthetic detection set: `OUT/images/*.png` + `OUT/annotations.json` (COCO).
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1000)]
        images: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Image side (square), pixels.
        #[arg(long, default_value_t = 128)]
        size: u32,
        #[arg(long, default_value_t = 6)]
        classes: usize,
    },
}

pub fn run(cmd: DataCommand) -> Result<(), Failure> {
    let (out, images, size, classes, seed) = match cmd {
        DataCommand::SynthCls { out, images, size, classes, seed } => (out, images, size, classes, seed),
        DataCommand::Synth { out, images, seed, size, classes } => {
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
