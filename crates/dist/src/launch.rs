//! Who this process is in a multi-process job: read from the launcher's environment.
//!
//! * **torchrun** (torch.distributed.run's environment contract): `RANK`, `WORLD_SIZE`,
//!   `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`; with
//!   `TORCHELASTIC_USE_AGENT_STORE=True` the agent already serves the store at
//!   `MASTER_ADDR:MASTER_PORT`, so every rank connects as a client, under the prefix
//!   `/worker/attempt_{TORCHELASTIC_RESTART_COUNT}` as torch.distributed uses it.
//! * **Slurm** `srun` (a job step: `SLURM_STEP_ID` is set): `SLURM_PROCID`, `SLURM_NTASKS`,
//!   `SLURM_LOCALID`, the tasks on this node from `SLURM_TASKS_PER_NODE`/`SLURM_NODEID`, and
//!   the first host of `SLURM_NODELIST` as the address unless `MASTER_ADDR` is set.
//! * **Open MPI** `mpirun`: `OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,LOCAL_SIZE}`; `MASTER_ADDR`
//!   (passed with `mpirun -x MASTER_ADDR`) or, when every rank is on this node, 127.0.0.1.
//!
//! Without any of them, or with a world of one, the process runs alone ([`Launch::from_env`]
//! returns `None`); `DETNAS_DIST=0` forces that, and `DETNAS_DIST=1` joins even a job of one
//! (to check a backend with one device). Outside torchrun, rank 0 hosts the store.

use crate::DistError;

/// The default rendezvous port (torch.distributed's).
pub const DEFAULT_PORT: u16 = 29500;

/// Which launcher started the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// torchrun (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, … and its store).
    Torchrun,
    /// Slurm's `srun` (`SLURM_PROCID`, `SLURM_NTASKS`, …).
    Slurm,
    /// Open MPI's `mpirun` (`OMPI_COMM_WORLD_RANK`, …).
    OpenMpi,
}

/// This process's place in a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// The launcher whose environment was read.
    pub launcher: Launcher,
    /// Global rank, `0..world`.
    pub rank: usize,
    /// Processes in the job.
    pub world: usize,
    /// Rank on this node (the GPU it uses).
    pub local_rank: usize,
    /// Processes on this node.
    pub local_world: usize,
    /// Where the store is served.
    pub master_addr: String,
    /// The store's TCP port.
    pub master_port: u16,
    /// This process serves the store (rank 0 outside torchrun).
    pub hosts_store: bool,
    /// Key prefix of the store (torchrun's per-restart prefix).
    pub store_prefix: String,
}

fn var(env: &dyn Fn(&str) -> Option<String>, k: &str) -> Option<String> {
    env(k).filter(|v| !v.trim().is_empty())
}

fn num(env: &dyn Fn(&str) -> Option<String>, k: &str) -> Result<Option<usize>, DistError> {
    var(env, k)
        .map(|v| v.trim().parse::<usize>().map_err(|_| DistError::Launch(format!("{k}={v} is not a number"))))
        .transpose()
}

fn need(env: &dyn Fn(&str) -> Option<String>, k: &str, launcher: &str) -> Result<usize, DistError> {
    num(env, k)?.ok_or_else(|| DistError::Launch(format!("{launcher}: {k} is not set")))
}

fn port(env: &dyn Fn(&str) -> Option<String>) -> Result<u16, DistError> {
    match var(env, "MASTER_PORT") {
        Some(p) => p.trim().parse().map_err(|_| DistError::Launch(format!("MASTER_PORT={p} is not a port"))),
        None => Ok(DEFAULT_PORT),
    }
}

/// The first host of a Slurm node list: `node[01-04,07]` → `node01`, `a,b` → `a`,
/// `gpu-[3,5]` → `gpu-3`.
pub fn first_slurm_host(list: &str) -> Option<String> {
    let list = list.trim();
    let first_item_end = {
        let mut depth = 0;
        list.char_indices().find(|&(_, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ => {}
            }
            c == ',' && depth == 0
        })
    }
    .map_or(list.len(), |(i, _)| i);
    let item = &list[..first_item_end];
    match item.split_once('[') {
        None => (!item.is_empty()).then(|| item.to_string()),
        Some((prefix, rest)) => {
            let inside = rest.strip_suffix(']').unwrap_or(rest);
            let first = inside.split(',').next()?;
            let start = first.split('-').next()?;
            (!start.is_empty()).then(|| format!("{prefix}{start}"))
        }
    }
}

/// Tasks on node `node` from `SLURM_TASKS_PER_NODE` (`2(x3),1` → 2, 2, 2, 1).
fn slurm_tasks_on_node(spec: &str, node: usize) -> Option<usize> {
    let mut counts = Vec::new();
    for part in spec.split(',') {
        match part.split_once("(x") {
            Some((n, rep)) => {
                let n: usize = n.parse().ok()?;
                let rep: usize = rep.trim_end_matches(')').parse().ok()?;
                counts.extend(std::iter::repeat_n(n, rep));
            }
            None => counts.push(part.trim().parse().ok()?),
        }
    }
    counts.get(node).copied()
}

impl Launch {
    /// This process's place, from the environment; `None` when it runs alone.
    ///
    /// # Errors
    /// [`DistError::Launch`] for a launcher's variable that is missing or malformed.
    pub fn from_env() -> Result<Option<Launch>, DistError> {
        Launch::from_vars(&|k| std::env::var(k).ok())
    }

    /// As [`Launch::from_env`], from any variable lookup (tests).
    ///
    /// # Errors
    /// As [`Launch::from_env`].
    pub fn from_vars(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Launch>, DistError> {
        if var(env, "DETNAS_DIST").as_deref() == Some("0") {
            return Ok(None);
        }
        let launch = if var(env, "RANK").is_some() && var(env, "WORLD_SIZE").is_some() {
            let world = need(env, "WORLD_SIZE", "torchrun")?;
            let agent = var(env, "TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
            let rank = need(env, "RANK", "torchrun")?;
            let restart = num(env, "TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0);
            Launch {
                launcher: Launcher::Torchrun,
                rank,
                world,
                local_rank: num(env, "LOCAL_RANK")?.unwrap_or(0),
                local_world: num(env, "LOCAL_WORLD_SIZE")?.unwrap_or(1),
                master_addr: var(env, "MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
                master_port: port(env)?,
                hosts_store: !agent && rank == 0,
                store_prefix: if agent { format!("/worker/attempt_{restart}") } else { String::new() },
            }
        } else if var(env, "SLURM_STEP_ID").is_some() && var(env, "SLURM_PROCID").is_some() {
            let rank = need(env, "SLURM_PROCID", "srun")?;
            let world = need(env, "SLURM_NTASKS", "srun")?;
            let node = num(env, "SLURM_NODEID")?.unwrap_or(0);
            let local_world = var(env, "SLURM_TASKS_PER_NODE")
                .and_then(|s| slurm_tasks_on_node(&s, node))
                .or(num(env, "SLURM_NTASKS_PER_NODE")?)
                .unwrap_or(1);
            let addr = match var(env, "MASTER_ADDR") {
                Some(a) => a,
                None => var(env, "SLURM_NODELIST")
                    .or_else(|| var(env, "SLURM_JOB_NODELIST"))
                    .and_then(|l| first_slurm_host(&l))
                    .ok_or_else(|| DistError::Launch("srun: neither MASTER_ADDR nor SLURM_NODELIST is set".into()))?,
            };
            Launch {
                launcher: Launcher::Slurm,
                rank,
                world,
                local_rank: num(env, "SLURM_LOCALID")?.unwrap_or(0),
                local_world,
                master_addr: addr,
                master_port: port(env)?,
                hosts_store: rank == 0,
                store_prefix: String::new(),
            }
        } else if var(env, "OMPI_COMM_WORLD_RANK").is_some() {
            let rank = need(env, "OMPI_COMM_WORLD_RANK", "mpirun")?;
            let world = need(env, "OMPI_COMM_WORLD_SIZE", "mpirun")?;
            let local_world = num(env, "OMPI_COMM_WORLD_LOCAL_SIZE")?.unwrap_or(1);
            let addr = match var(env, "MASTER_ADDR") {
                Some(a) => a,
                None if local_world == world => "127.0.0.1".into(),
                None => {
                    return Err(DistError::Launch(
                        "mpirun across nodes: set MASTER_ADDR to rank 0's host and pass it with -x MASTER_ADDR".into(),
                    ));
                }
            };
            Launch {
                launcher: Launcher::OpenMpi,
                rank,
                world,
                local_rank: num(env, "OMPI_COMM_WORLD_LOCAL_RANK")?.unwrap_or(0),
                local_world,
                master_addr: addr,
                master_port: port(env)?,
                hosts_store: rank == 0,
                store_prefix: String::new(),
            }
        } else {
            return Ok(None);
        };
        if launch.world == 0 || launch.rank >= launch.world || launch.local_rank >= launch.local_world.max(1) {
            return Err(DistError::Launch(format!(
                "rank {} (local {}) does not fit a world of {} ({} on this node)",
                launch.rank, launch.local_rank, launch.world, launch.local_world
            )));
        }
        // A world of one runs alone, unless DETNAS_DIST=1 asks to join it anyway (checks of
        // a backend on a machine with one device).
        let force = var(env, "DETNAS_DIST").as_deref() == Some("1");
        Ok((launch.world > 1 || force).then_some(launch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>, DistError> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Launch::from_vars(&|k| m.get(k).cloned())
    }

    #[test]
    fn torchrun_with_and_without_the_agent_store() {
        let base = [
            ("RANK", "1"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "10.0.0.5"),
            ("MASTER_PORT", "29600"),
        ];
        let l = launch(&base).unwrap().unwrap();
        assert_eq!((l.rank, l.world, l.local_rank, l.local_world, l.master_port), (1, 4, 1, 2, 29600));
        assert!(!l.hosts_store && l.store_prefix.is_empty());
        let mut agent = base.to_vec();
        agent.extend([("TORCHELASTIC_USE_AGENT_STORE", "True"), ("TORCHELASTIC_RESTART_COUNT", "2")]);
        let l = launch(&agent).unwrap().unwrap();
        assert_eq!(l.store_prefix, "/worker/attempt_2");
        let mut zero = base.to_vec();
        zero[0] = ("RANK", "0");
        assert!(launch(&zero).unwrap().unwrap().hosts_store, "without the agent, rank 0 serves the store");
        assert_eq!(launch(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap(), None, "a world of one runs alone");
        assert!(launch(&[("RANK", "4"), ("WORLD_SIZE", "4")]).is_err());
        assert!(launch(&[("RANK", "x"), ("WORLD_SIZE", "4")]).unwrap_err().to_string().contains("RANK=x"));
        assert_eq!(launch(&[("DETNAS_DIST", "0"), ("RANK", "1"), ("WORLD_SIZE", "2")]).unwrap(), None);
        assert_eq!(launch(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap(), None);
        assert_eq!(
            launch(&[("DETNAS_DIST", "1"), ("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap().map(|l| l.world),
            Some(1)
        );
    }

    #[test]
    fn slurm_steps_and_node_lists() {
        let l = launch(&[
            ("SLURM_STEP_ID", "0"),
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NODEID", "1"),
            ("SLURM_TASKS_PER_NODE", "2(x2)"),
            ("SLURM_NODELIST", "gpu[07-08]"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world, l.local_rank, l.local_world), (3, 4, 1, 2));
        assert_eq!((l.master_addr.as_str(), l.master_port, l.hosts_store), ("gpu07", DEFAULT_PORT, false));
        // A batch script (no job step) runs alone whatever the allocation.
        assert_eq!(launch(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "8")]).unwrap(), None);
        assert_eq!(first_slurm_host("node[01-04,07],login"), Some("node01".into()));
        assert_eq!(first_slurm_host("a,b"), Some("a".into()));
        assert_eq!(first_slurm_host("gpu-[3,5]"), Some("gpu-3".into()));
        assert_eq!(slurm_tasks_on_node("2(x3),1", 3), Some(1));
    }

    #[test]
    fn open_mpi_needs_an_address_across_nodes() {
        let local = [
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ];
        let l = launch(&local).unwrap().unwrap();
        assert_eq!((l.master_addr.as_str(), l.hosts_store), ("127.0.0.1", true));
        let mut remote = local.to_vec();
        remote[3] = ("OMPI_COMM_WORLD_LOCAL_SIZE", "1");
        assert!(launch(&remote).unwrap_err().to_string().contains("MASTER_ADDR"));
    }
}
