//! Cancellation: the binary owns the signal handlers and hands a [`Cancel`] token to the
//! loops, which finish their unit of work (a training step, a candidate), save, and stop.
//! Libraries never install handlers; a token nobody signals never cancels.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Why a run was asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C): exit code 130.
    Interrupt,
    /// SIGTERM (a scheduler's stop): exit code 143.
    Terminate,
}

impl Signal {
    /// `SIGINT` or `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }

    /// The shell's exit code for a process stopped by this signal (128 + number).
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }
}

const SIGINT: usize = 2;
const SIGTERM: usize = 15;

/// A shared stop request. Clones share the request.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicUsize>);

impl Cancel {
    /// A token that nothing has signalled.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Registers SIGINT and SIGTERM to signal this token (instead of ending the process).
    /// Only the binary calls this, once.
    ///
    /// # Errors
    /// The operating system's refusal to register a handler.
    pub fn install_signal_handlers(&self) -> std::io::Result<()> {
        signal_hook::flag::register_usize(signal_hook::consts::SIGINT, self.0.clone(), SIGINT)?;
        signal_hook::flag::register_usize(signal_hook::consts::SIGTERM, self.0.clone(), SIGTERM)?;
        Ok(())
    }

    /// Asks every holder of the token to stop.
    pub fn request(&self, signal: Signal) {
        let v = match signal {
            Signal::Interrupt => SIGINT,
            Signal::Terminate => SIGTERM,
        };
        self.0.store(v, Ordering::SeqCst);
    }

    /// The stop request, if any.
    pub fn requested(&self) -> Option<Signal> {
        match self.0.load(Ordering::SeqCst) {
            SIGINT => Some(Signal::Interrupt),
            SIGTERM => Some(Signal::Terminate),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_request() {
        let c = Cancel::new();
        let d = c.clone();
        assert_eq!(d.requested(), None);
        c.request(Signal::Terminate);
        assert_eq!(d.requested(), Some(Signal::Terminate));
        assert_eq!(d.requested().unwrap().exit_code(), 143);
        assert_eq!(Cancel::new().requested(), None, "a fresh token is independent");
    }
}
