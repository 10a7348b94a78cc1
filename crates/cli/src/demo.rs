//! `detnas demo`: a short tour of the parts built so far. It will grow into the embedded
//! end-to-end pipeline (`detnas run`).

use crate::Failure;
use crate::args::{CostArgs, SpaceArgs};
use crate::net_cmd::{CheckArgs, check};
use crate::runtime::RuntimeArgs;
use crate::space_cmd::{SpaceCommand, run as space};
use clap::Args;
use detnas_space::InputSize;

#[derive(Args)]
pub struct DemoArgs {
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(a: DemoArgs) -> Result<(), Failure> {
    let small = SpaceArgs { space: "small".into(), width_mult: 1.0 };
    let at224 = CostArgs { input: InputSize::square(224), classes: 1000 };
    println!("== The Small search space of DetNAS");
    space(SpaceCommand::Show { space: small.clone(), cost: at224.clone(), json: false })?;
    println!("\n== DetNAS-FPN-300M, the architecture found on COCO");
    space(SpaceCommand::Stats {
        space: small.clone(),
        arch: "21202112331300313132".into(),
        cost: at224.clone(),
        json: false,
    })?;
    println!("\n== Five random architectures under the 300M backbone limit");
    space(SpaceCommand::Sample {
        space: small.clone(),
        max_backbone_macs: Some(300_000_000),
        max_backbone_params: None,
        count: 5,
        seed: 0,
        max_attempts: 100_000,
        cost: at224.clone(),
        json: false,
    })?;
    println!("\n== One path of the Small supernet: forward + backward at 224x224, batch 2");
    check(&CheckArgs {
        space: small,
        arch: None,
        seed: 0,
        cost: at224,
        batch: 2,
        backward: true,
        repeat: 3,
        runtime: a.runtime,
        json: false,
    })
}
