//! What scores a candidate: the [`Evaluator`] trait, its [`Evaluation`], and the one guarded
//! call every route of the search ([`crate::workers`], [`crate::remote`]) scores through.

use crate::SearchError;
use detnas_space::Arch;

/// The score of one candidate.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// The search's fitness (AP, AP50 or top-1).
    pub fitness: f64,
    /// Every number the evaluation produced (COCO's 12 stats, or top-1/top-5).
    pub metrics: Vec<f64>,
    /// BN recalibration time, seconds.
    pub recalibration_seconds: f64,
    /// Evaluation time, seconds.
    pub evaluation_seconds: f64,
    /// libtorch's intra-op threads of the evaluating thread on the CPU (`None` on a GPU or
    /// unknown): CPU kernels' reductions, and so scores in their last digits, depend on it.
    pub threads: Option<i32>,
}

/// Scores architectures; lives on one thread.
pub trait Evaluator {
    /// # Errors
    /// A [`SearchError`] when the candidate cannot be scored.
    fn evaluate(&mut self, arch: &Arch) -> Result<Evaluation, SearchError>;
}

/// Scores `arch` on worker `worker`; a libtorch failure the scorer did not turn into an error
/// (a panic) becomes this candidate's error, on every route (inline, threads, ranks), so the
/// search never waits for a result that cannot come.
///
/// # Errors
/// The evaluator's error, or [`SearchError::Evaluation`] naming the worker and the failure.
pub(crate) fn evaluate_guarded(
    eval: &mut dyn Evaluator,
    arch: &Arch,
    worker: usize,
) -> Result<Evaluation, SearchError> {
    detnas_runtime::guard::catch(|| eval.evaluate(arch)).unwrap_or_else(|f| {
        Err(SearchError::Evaluation { arch: arch.to_string(), message: format!("worker {worker} failed: {f}") })
    })
}
