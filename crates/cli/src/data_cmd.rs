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
}

pub fn run(cmd: DataCommand) -> Result<(), Failure> {
    let DataCommand::SynthCls { out, images, size, classes, seed } = cmd;
    let set =
        SyntheticCls::new(SyntheticClsConfig { images, size, classes, seed, clutter: 2, max_rotation_deg: 180.0 })
            .map_err(crate::usage)?;
    set.write_image_folder(&out)?;
    println!("wrote {images} images of {classes} classes to {}", out.display());
    Ok(())
}
