//! Candidate evaluation on one or several workers.
//!
//! An [`Evaluator`] scores architectures on one thread (it owns its own copy of the network,
//! since BN recalibration writes the statistics). With one worker the evaluator runs on the
//! calling thread; with N, each worker thread builds its own evaluator through the factory
//! and takes candidates from a shared queue. Every candidate's score depends only on the
//! architecture, so the results equal the sequential run's whatever the order of completion.

use crate::SearchError;
use crate::evaluator::evaluate_guarded;
pub use crate::evaluator::{Evaluation, Evaluator};
use detnas_space::Arch;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Builds worker `i`'s evaluator, on that worker's thread.
pub type EvaluatorFactory = Arc<dyn Fn(usize) -> Result<Box<dyn Evaluator>, SearchError> + Send + Sync>;

type Job = (usize, Arch);
type Done = (usize, Arch, usize, Result<Evaluation, SearchError>);

/// Worker threads and their queues.
pub struct Pool {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    abort: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

/// One or several evaluators: on this thread, on worker threads, or on the ranks of a job.
/// Every variant scores through [`crate::evaluator`]'s guarded call: the same error for a failed
/// evaluation or a libtorch panic, whichever route ran it.
pub enum Workers {
    /// One evaluator on the calling thread.
    Inline(Box<dyn Evaluator>),
    /// One evaluator per worker thread, taking candidates from a shared queue.
    Threads(Pool),
    /// The ranks of a multi-process job (rank 0's side; see [`crate::remote`]).
    Ranks(crate::remote::Remote),
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Workers({})", self.count())
    }
}

impl Workers {
    /// Starts `n` workers; returns once every evaluator is built (or the first error).
    ///
    /// # Errors
    /// Whatever `factory` returns first; [`SearchError::Config`] when a worker thread cannot be
    /// started or stops while starting.
    ///
    /// # Panics
    /// Not on this thread; a worker thread panics only when the job queue's lock is poisoned.
    pub fn new(factory: EvaluatorFactory, n: usize) -> Result<Workers, SearchError> {
        if n <= 1 {
            return Ok(Workers::Inline(factory(0)?));
        }
        let (job_tx, job_rx) = channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = channel::<Done>();
        let (ready_tx, ready_rx) = channel::<Result<(), SearchError>>();
        let abort = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for w in 0..n {
            let (factory, job_rx, done_tx, ready_tx, abort) =
                (factory.clone(), job_rx.clone(), done_tx.clone(), ready_tx.clone(), abort.clone());
            let h = std::thread::Builder::new()
                .name(format!("search-worker-{w}"))
                .spawn(move || {
                    let mut eval = match factory(w) {
                        Ok(e) => {
                            let _ = ready_tx.send(Ok(()));
                            e
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    loop {
                        let job = job_rx.lock().expect("queue lock").recv();
                        let Ok((i, arch)) = job else { return };
                        if abort.load(Ordering::SeqCst) {
                            return;
                        }
                        let r = evaluate_guarded(eval.as_mut(), &arch, w);
                        if done_tx.send((i, arch, w, r)).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|e| SearchError::Config(format!("cannot start worker thread: {e}")))?;
            handles.push(h);
        }
        drop(ready_tx);
        let mut pool = Pool { jobs: Some(job_tx), done: done_rx, abort, handles };
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    pool.shutdown();
                    return Err(e);
                }
                Err(_) => {
                    pool.shutdown();
                    return Err(SearchError::Config("a worker thread stopped while starting".into()));
                }
            }
        }
        Ok(Workers::Threads(pool))
    }

    /// The ranks of a job as the workers (rank 0's side; see [`crate::remote`]).
    pub fn remote(remote: crate::remote::Remote) -> Workers {
        Workers::Ranks(remote)
    }

    /// Tells the ranks of a job that the search is over (no-op otherwise).
    ///
    /// # Errors
    /// A store failure.
    pub fn stop_remote(&self) -> Result<(), SearchError> {
        match self {
            Workers::Ranks(r) => r.stop(),
            Workers::Inline(_) | Workers::Threads(_) => Ok(()),
        }
    }

    /// Number of workers.
    pub fn count(&self) -> usize {
        match self {
            Workers::Inline(_) => 1,
            Workers::Threads(p) => p.handles.len(),
            Workers::Ranks(r) => r.count(),
        }
    }

    /// Evaluates `jobs` (`(index, arch)`), calling `on_done(index, arch, worker, evaluation)`
    /// as each finishes; stops at the first error (of an evaluation or of `on_done`).
    ///
    /// # Errors
    /// The first error of an evaluation or of `on_done`; [`SearchError::Config`] when the worker
    /// threads have stopped; a store failure with remote workers.
    ///
    /// # Panics
    /// Never: the job queue stays open until the workers are dropped.
    pub fn run(
        &mut self,
        jobs: Vec<(usize, Arch)>,
        on_done: &mut dyn FnMut(usize, Arch, usize, Evaluation) -> Result<(), SearchError>,
    ) -> Result<(), SearchError> {
        let pool = match self {
            Workers::Inline(e) => {
                for (i, arch) in jobs {
                    let r = evaluate_guarded(e.as_mut(), &arch, 0)?;
                    on_done(i, arch, 0, r)?;
                }
                return Ok(());
            }
            Workers::Ranks(r) => return r.run(jobs, on_done),
            Workers::Threads(pool) => pool,
        };
        let n = jobs.len();
        for j in jobs {
            pool.jobs
                .as_ref()
                .expect("open queue")
                .send(j)
                .map_err(|_| SearchError::Config("workers stopped".into()))?;
        }
        for _ in 0..n {
            let (i, arch, w, r) =
                pool.done.recv().map_err(|_| SearchError::Config("a worker thread stopped unexpectedly".into()))?;
            let outcome = r.and_then(|ev| on_done(i, arch, w, ev));
            if let Err(e) = outcome {
                pool.abort.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Pool {
    fn shutdown(&mut self) {
        self.abort.store(true, Ordering::SeqCst);
        self.jobs = None;
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        if let Workers::Threads(p) = self {
            p.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Panics like a failed libtorch call on its second candidate.
    struct Failing(usize);

    impl Evaluator for Failing {
        fn evaluate(&mut self, _: &Arch) -> Result<Evaluation, SearchError> {
            self.0 += 1;
            if self.0 == 2 {
                panic!("CUDA out of memory. Tried to allocate 20.00 MiB\nException raised from malloc");
            }
            Ok(Evaluation {
                fitness: 0.5,
                metrics: vec![0.5],
                recalibration_seconds: 0.0,
                evaluation_seconds: 0.0,
                threads: None,
            })
        }
    }

    #[test]
    fn a_libtorch_panic_is_the_candidates_error_on_the_inline_and_threaded_routes() {
        for n in [1, 2] {
            let factory: EvaluatorFactory = Arc::new(|_| Ok(Box::new(Failing(0)) as Box<dyn Evaluator>));
            let mut w = Workers::new(factory, n).unwrap();
            let jobs: Vec<(usize, Arch)> = (0..4).map(|i| (i, format!("{i}{i}{i}").parse().unwrap())).collect();
            let mut done = 0;
            let e = w.run(jobs, &mut |_, _, _, _| {
                done += 1;
                Ok(())
            });
            let m = e.unwrap_err().to_string();
            assert!(m.contains("failed: CUDA out of memory. Tried to allocate 20.00 MiB"), "{n} workers: {m}");
            assert!(!m.contains("Exception raised"), "{m}");
            assert!(done >= 1, "{n} workers: the first candidate was scored");
        }
    }
}
