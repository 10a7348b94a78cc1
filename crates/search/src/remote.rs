//! Candidates evaluated by the ranks of a multi-process job, handed out through the job's
//! store (c10d's TCPStore queue): rank 0 runs the evolution and alone writes the ledger; every
//! rank, rank 0 included, evaluates candidates with its own evaluator on its own device.
//!
//! Protocol (keys under a per-search prefix):
//! * rank 0 pushes `{"id", "arch"}` jobs onto `jobs`; a worker pops one, sets `claim/{id}` to
//!   its rank, evaluates, and sets `result/{id}` (the evaluation, or `{"error"}`);
//! * rank 0 takes each result once (later duplicates are dropped), and pushes a job again when
//!   no result came within the lease (a rank died or hangs): each candidate is scored once in
//!   the ledger, the score does not depend on who computed it;
//! * at the end rank 0 pushes one `{"stop"}` per worker.
//!
//! Like DetNAS's official fan-out (a RabbitMQ queue whose jobs are acknowledged only after
//! their result is published), a dead worker's job is handed out again; unlike it, nothing but
//! the job's own store is needed.

use crate::SearchError;
use crate::evaluator::{Evaluation, Evaluator, evaluate_guarded};
use detnas_dist::ProcessGroup;
use detnas_space::{Arch, SearchSpace};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Message {
    Job { id: u64, arch: String },
    Stop { stop: bool },
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Reply {
    Done {
        rank: usize,
        fitness: f64,
        metrics: Vec<f64>,
        recalibration_seconds: f64,
        evaluation_seconds: f64,
        #[serde(default)]
        threads: Option<i32>,
    },
    Failed {
        rank: usize,
        error: String,
    },
}

fn dist(e: detnas_dist::DistError) -> SearchError {
    SearchError::Train(e.into())
}

/// Rank 0's side: hands out candidates and collects their scores.
pub struct Remote {
    pg: Arc<ProcessGroup>,
    local: Box<dyn Evaluator>,
    prefix: String,
    lease: Duration,
    next_id: u64,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({} ranks)", self.pg.world())
    }
}

impl Remote {
    /// Rank 0's side of the search `prefix` (distinct per search), evaluating with `local`
    /// between results; a job without a result after `lease` is handed out again.
    pub fn new(pg: Arc<ProcessGroup>, local: Box<dyn Evaluator>, prefix: &str, lease: Duration) -> Remote {
        Remote { pg, local, prefix: prefix.to_string(), lease, next_id: 0 }
    }

    /// Ranks evaluating.
    pub fn count(&self) -> usize {
        self.pg.world()
    }

    fn key(&self, what: &str) -> String {
        format!("{}/{what}", self.prefix)
    }

    fn push(&self, id: u64, arch: &Arch) -> Result<(), SearchError> {
        let m = serde_json::to_vec(&Message::Job { id, arch: arch.to_string() }).expect("serialisable");
        self.pg.queue_push(&self.key("jobs"), &m).map_err(dist)
    }

    /// Evaluates `jobs` over the ranks, calling `on_done(index, arch, rank, evaluation)` once
    /// per job as results arrive.
    ///
    /// # Errors
    /// A worker's evaluation error, an error of `on_done`, or a store failure.
    ///
    /// # Panics
    /// Never: a result is only taken for a candidate still open.
    pub fn run(
        &mut self,
        jobs: Vec<(usize, Arch)>,
        on_done: &mut dyn FnMut(usize, Arch, usize, Evaluation) -> Result<(), SearchError>,
    ) -> Result<(), SearchError> {
        // id → (index, arch, handed out at)
        let mut open: BTreeMap<u64, (usize, Arch, Instant)> = BTreeMap::new();
        for (i, arch) in jobs {
            let id = self.next_id;
            self.next_id += 1;
            self.push(id, &arch)?;
            open.insert(id, (i, arch, Instant::now()));
        }
        while !open.is_empty() {
            let mut progressed = false;
            let ids: Vec<u64> = open.keys().copied().collect();
            for id in ids {
                let rk = self.key(&format!("result/{id}"));
                if !self.pg.store_check(&[&rk]).map_err(dist)? {
                    continue;
                }
                let bytes = self.pg.store_get(&rk).map_err(dist)?;
                let _ = self.pg.store_delete(&rk);
                let (i, arch, _) = open.remove(&id).expect("open");
                progressed = true;
                match serde_json::from_slice::<Reply>(&bytes) {
                    Ok(Reply::Done { rank, fitness, metrics, recalibration_seconds, evaluation_seconds, threads }) => {
                        let ev = Evaluation { fitness, metrics, recalibration_seconds, evaluation_seconds, threads };
                        on_done(i, arch, rank, ev)?;
                    }
                    Ok(Reply::Failed { rank, error }) => {
                        return Err(SearchError::Evaluation {
                            arch: arch.to_string(),
                            message: format!("on rank {rank}: {error}"),
                        });
                    }
                    Err(e) => return Err(SearchError::Config(format!("a malformed result for {arch}: {e}"))),
                }
            }
            if progressed {
                continue;
            }
            // Nothing arrived: evaluate a candidate here, or wait a little.
            if let Some(bytes) = self.pg.queue_pop(&self.key("jobs"), false).map_err(dist)? {
                match serde_json::from_slice::<Message>(&bytes) {
                    Ok(Message::Job { id, .. }) => {
                        // None: a duplicate of a job already scored.
                        if let Some((i, arch, _)) = open.remove(&id) {
                            let ev = evaluate_guarded(self.local.as_mut(), &arch, 0)?;
                            on_done(i, arch, 0, ev)?;
                        }
                    }
                    _ => return Err(SearchError::Config("an unexpected message in the job queue".into())),
                }
                continue;
            }
            std::thread::sleep(Duration::from_millis(20));
            let now = Instant::now();
            for (id, (_, arch, at)) in open.iter_mut() {
                if now.duration_since(*at) > self.lease {
                    let who = self
                        .pg
                        .store_check(&[&self.key(&format!("claim/{id}"))])
                        .ok()
                        .filter(|&c| c)
                        .and_then(|_| self.pg.store_get(&self.key(&format!("claim/{id}"))).ok())
                        .map(|b| String::from_utf8_lossy(&b).into_owned());
                    tracing::warn!(
                        "candidate {arch}: no result after {:.0} s (claimed by rank {}); handing it out again",
                        self.lease.as_secs_f64(),
                        who.as_deref().unwrap_or("none")
                    );
                    *at = now;
                    let m =
                        serde_json::to_vec(&Message::Job { id: *id, arch: arch.to_string() }).expect("serialisable");
                    self.pg.queue_push(&self.key("jobs"), &m).map_err(dist)?;
                }
            }
        }
        Ok(())
    }

    /// Tells every worker rank to stop serving.
    ///
    /// # Errors
    /// A store failure.
    pub fn stop(&self) -> Result<(), SearchError> {
        stop_all(&self.pg, &self.prefix)
    }
}

/// Tells every worker rank of the search `prefix` to stop serving (one stop each).
///
/// # Errors
/// A store failure.
///
/// # Panics
/// Never: the message always serialises.
pub fn stop_all(pg: &ProcessGroup, prefix: &str) -> Result<(), SearchError> {
    for _ in 1..pg.world() {
        let m = serde_json::to_vec(&Message::Stop { stop: true }).expect("serialisable");
        pg.queue_push(&format!("{prefix}/jobs"), &m).map_err(dist)?;
    }
    Ok(())
}

/// Rank 0's last step: waits until every worker rank has taken its stop (it then no longer
/// needs the store, which rank 0 serves and takes down when it exits), at most `wait`: a rank
/// that died never answers.
pub fn await_stopped(pg: &ProcessGroup, prefix: &str, wait: Duration) {
    let keys: Vec<String> = (1..pg.world()).map(|r| format!("{prefix}/stopped/{r}")).collect();
    let started = Instant::now();
    while started.elapsed() < wait {
        match pg.store_check(&keys.iter().map(String::as_str).collect::<Vec<_>>()) {
            Ok(true) => return,
            Ok(false) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return,
        }
    }
    tracing::warn!("not every rank confirmed the end of the search within {:.0} s", wait.as_secs_f64());
}

/// A worker rank's side: evaluates the candidates it pops until rank 0 says stop. Waiting
/// longer than `idle` for a job is an error (rank 0 is gone).
///
/// # Errors
/// A store failure or the idle timeout; an evaluation error is reported to rank 0, which
/// fails the search, and ends this rank's loop too.
///
/// # Panics
/// Never: a reply always serialises.
pub fn serve(
    pg: &ProcessGroup,
    space: &SearchSpace,
    eval: &mut dyn Evaluator,
    prefix: &str,
    idle: Duration,
) -> Result<usize, SearchError> {
    let key = |what: &str| format!("{prefix}/{what}");
    let mut served = 0;
    let mut since = Instant::now();
    loop {
        let Some(bytes) = pg.queue_pop(&key("jobs"), false).map_err(dist)? else {
            if since.elapsed() > idle {
                return Err(SearchError::Config(format!(
                    "rank {}: no candidate from rank 0 for {:.0} s",
                    pg.rank(),
                    idle.as_secs_f64()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        since = Instant::now();
        let msg: Message = serde_json::from_slice(&bytes)
            .map_err(|e| SearchError::Config(format!("a malformed message in the job queue: {e}")))?;
        let (id, arch) = match msg {
            Message::Stop { .. } => {
                pg.store_set(&key(&format!("stopped/{}", pg.rank())), b"1").map_err(dist)?;
                return Ok(served);
            }
            Message::Job { id, arch } => (id, arch),
        };
        pg.store_set(&key(&format!("claim/{id}")), pg.rank().to_string().as_bytes()).map_err(dist)?;
        served += 1;
        // Crash tests: die holding the claimed candidate.
        detnas_runtime::fault::after_candidate(served as u64);
        let reply = match space
            .parse_arch(&arch)
            .map_err(SearchError::from)
            .and_then(|a| evaluate_guarded(eval, &a, pg.rank()))
        {
            Ok(ev) => Reply::Done {
                rank: pg.rank(),
                fitness: ev.fitness,
                metrics: ev.metrics,
                recalibration_seconds: ev.recalibration_seconds,
                evaluation_seconds: ev.evaluation_seconds,
                threads: ev.threads,
            },
            Err(e) => Reply::Failed { rank: pg.rank(), error: e.to_string() },
        };
        let failed = matches!(reply, Reply::Failed { .. });
        pg.store_set(&key(&format!("result/{id}")), &serde_json::to_vec(&reply).expect("serialisable"))
            .map_err(dist)?;
        if failed {
            return Err(SearchError::Evaluation { arch, message: "failed on this rank (reported to rank 0)".into() });
        }
    }
}
