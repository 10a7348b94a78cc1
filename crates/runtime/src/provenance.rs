//! Where an artifact comes from: the code version recorded in every checkpoint, ledger and
//! report.

use std::sync::OnceLock;

static REVISION: OnceLock<&'static str> = OnceLock::new();

/// Sets the revision [`code_version`] reports, once, from the binary (whose build script sees
/// every source change and marks a modified tree `-dirty`); later calls are ignored.
pub fn set_revision(revision: &'static str) {
    let _ = REVISION.set(revision);
}

/// `detnas <version> (<git revision>)`: the revision given to [`set_revision`] (the
/// `detnas-engine` binary sets it), else "unknown revision".
pub fn code_version() -> String {
    let revision = REVISION.get().copied().unwrap_or("unknown revision");
    format!("detnas {} ({revision})", env!("CARGO_PKG_VERSION"))
}
