//! Compute failures as errors. tch turns a failed libtorch call (CUDA out of memory, a
//! kernel's shape check, a device-side assertion) into a Rust panic. [`catch`] is the one
//! boundary where such a panic becomes an error: each training step, the scoring of one path
//! and each search candidate run inside it, so every route (training, `eval`, the inline and
//! the threaded search workers) reports the same [`ComputeFailure`] and exits through the
//! usual error path instead of aborting with a panic.
//!
//! While a [`catch`] is active on a thread, the panic hook records the panic's location
//! instead of printing it, so that the user sees one error message, not a panic report
//! followed by the error.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A panic caught by [`catch`]: libtorch's message (its first line) and what it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComputeFailure {
    /// The panic's message, first line (libtorch's error without its C++ backtrace).
    pub message: String,
    /// Where the panic was raised (`file:line`), for a panic outside libtorch.
    pub location: Option<String>,
    /// The allocator could not allocate: CUDA out of memory, or the CPU allocator's refusal.
    pub out_of_memory: bool,
}

impl ComputeFailure {
    fn from_payload(payload: &(dyn std::any::Any + Send), location: Option<String>) -> ComputeFailure {
        let text = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("a panic without a message");
        let message = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or(text).to_string();
        let lower = text.to_lowercase();
        let out_of_memory = lower.contains("out of memory") || lower.contains("can't allocate memory");
        ComputeFailure { message, location, out_of_memory }
    }
}

impl fmt::Display for ComputeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        match &self.location {
            Some(l) if !self.message.starts_with("Torch(") && !self.message.contains("Exception") => {
                write!(f, " (at {l})")
            }
            _ => Ok(()),
        }
    }
}

/// Runs `f`; a panic inside it (on this thread) is returned as a [`ComputeFailure`] instead of
/// unwinding further. Nested calls are allowed.
///
/// # Errors
/// The caught panic.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, ComputeFailure> {
    install_hook();
    DEPTH.with(|d| d.set(d.get() + 1));
    let r = catch_unwind(AssertUnwindSafe(f));
    DEPTH.with(|d| d.set(d.get() - 1));
    r.map_err(|p| ComputeFailure::from_payload(p.as_ref(), LOCATION.with(|l| l.borrow_mut().take())))
}

/// Inside [`catch`], records the location instead of printing the panic; elsewhere, the hook
/// that was installed before.
fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if DEPTH.with(Cell::get) > 0 {
                let at = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
                LOCATION.with(|l| *l.borrow_mut() = at);
                tracing::debug!("caught: {info}");
            } else {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_failure_with_its_first_line_and_kind() {
        let f =
            catch(|| -> u32 { panic!("CUDA out of memory. Tried to allocate 2.00 GiB\nException raised from ...") })
                .unwrap_err();
        assert_eq!(f.message, "CUDA out of memory. Tried to allocate 2.00 GiB");
        assert!(f.out_of_memory);
        let f =
            catch(|| -> u32 { panic!("{}", String::from("mat1 and mat2 shapes cannot be multiplied")) }).unwrap_err();
        assert!(!f.out_of_memory && f.message.starts_with("mat1"));
        assert!(f.location.as_deref().is_some_and(|l| l.contains("guard.rs")), "{f:?}");
        assert!(f.to_string().contains("(at "), "{f}");
        assert_eq!(catch(|| 7).unwrap(), 7);
    }

    #[test]
    fn nested_catches_and_the_depth_unwind_cleanly() {
        let outer = catch(|| {
            let inner = catch(|| -> () { panic!("inner") });
            assert_eq!(inner.unwrap_err().message, "inner");
            panic!("outer")
        });
        assert_eq!(outer.unwrap_err().message, "outer");
        assert_eq!(DEPTH.with(Cell::get), 0);
        // Outside a catch the previous hook is in place: a panic still unwinds to the caller.
        assert!(std::panic::catch_unwind(|| panic!("plain")).is_err());
    }
}
