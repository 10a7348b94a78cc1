//! A stage's wall time over every session that worked on it: each session's time is written
//! beside the stage folder (`RUN/.<stage>.sessions.json`) every few seconds, so a stage
//! resumed after a crash or a stop reports the sum of its sessions, losing at most one
//! interval per interrupted session.

use detnas_runtime::fsx::write_json_atomic;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often the running session's time is written.
const INTERVAL: Duration = Duration::from_secs(10);

/// The sessions file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Sessions {
    /// Seconds of each session, the running one last.
    seconds: Vec<f64>,
}

/// The sessions file of stage folder `dir`.
fn sessions_path(dir: &Path) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.with_file_name(format!(".{name}.sessions.json"))
}

/// Forgets the sessions of the stage in `dir` (its folder was replaced).
pub(crate) fn forget(dir: &Path) {
    let _ = std::fs::remove_file(sessions_path(dir));
}

/// The running session of a stage: its time is written every [`INTERVAL`] while it lives,
/// and once more when it ends (dropped or [`SessionClock::finish`]ed).
#[derive(Debug)]
pub(crate) struct SessionClock {
    path: PathBuf,
    earlier: Vec<f64>,
    started: Instant,
    stop: Option<mpsc::Sender<()>>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl SessionClock {
    /// Starts a session of the stage in `dir`; `write` false (ranks other than 0) only
    /// measures.
    pub(crate) fn start(dir: &Path, write: bool) -> SessionClock {
        let path = sessions_path(dir);
        let earlier = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<Sessions>(&t).ok())
            .unwrap_or_default()
            .seconds;
        let started = Instant::now();
        let (stop, ticker) = if write {
            // At once: a session killed before its first tick still counts as one.
            record(&path, &earlier, 0.0);
            let (tx, rx) = mpsc::channel::<()>();
            let (path, earlier) = (path.clone(), earlier.clone());
            let ticker = std::thread::spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(INTERVAL) {
                    record(&path, &earlier, started.elapsed().as_secs_f64());
                }
            });
            (Some(tx), Some(ticker))
        } else {
            (None, None)
        };
        SessionClock { path, earlier, started, stop, ticker }
    }

    /// Stops the clock: the stage's seconds over all its sessions and the number of sessions.
    pub(crate) fn finish(mut self) -> (f64, usize) {
        let now = self.started.elapsed().as_secs_f64();
        self.stop_ticker(now);
        (self.earlier.iter().sum::<f64>() + now, self.earlier.len() + 1)
    }

    fn stop_ticker(&mut self, now: f64) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
            if let Some(t) = self.ticker.take() {
                let _ = t.join();
            }
            record(&self.path, &self.earlier, now);
        }
    }
}

impl Drop for SessionClock {
    fn drop(&mut self) {
        let now = self.started.elapsed().as_secs_f64();
        self.stop_ticker(now);
    }
}

/// Writes the sessions file (best effort: a failed write loses only this interval).
fn record(path: &Path, earlier: &[f64], now: f64) {
    let mut seconds = earlier.to_vec();
    seconds.push(now);
    if let Err(e) = write_json_atomic(path, &Sessions { seconds }) {
        tracing::debug!("cannot record the stage's time in {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An interrupted session's time counts: a stage resumed after it reports the sum.
    #[test]
    fn a_resumed_stage_counts_every_session() {
        let run = std::env::temp_dir().join(format!("detnas-clock-{}", std::process::id()));
        std::fs::create_dir_all(&run).unwrap();
        let dir = run.join("finetune");
        // A session that was killed after 30 s (its last tick).
        write_json_atomic(&sessions_path(&dir), &Sessions { seconds: vec![30.0] }).unwrap();
        let clock = SessionClock::start(&dir, true);
        std::thread::sleep(Duration::from_millis(50));
        let (seconds, sessions) = clock.finish();
        assert_eq!(sessions, 2);
        assert!((30.05..31.0).contains(&seconds), "{seconds}");
        let text = std::fs::read_to_string(sessions_path(&dir)).unwrap();
        let recorded: Sessions = serde_json::from_str(&text).unwrap();
        assert_eq!(recorded.seconds.len(), 2);
        assert_eq!(recorded.seconds[0], 30.0);
        // A failed session (dropped) is recorded too.
        drop(SessionClock::start(&dir, true));
        let recorded: Sessions = serde_json::from_str(&std::fs::read_to_string(sessions_path(&dir)).unwrap()).unwrap();
        assert_eq!(recorded.seconds.len(), 3);
        assert_eq!(sessions_path(&dir), run.join(".finetune.sessions.json"));
        std::fs::remove_dir_all(&run).unwrap();
    }
}
