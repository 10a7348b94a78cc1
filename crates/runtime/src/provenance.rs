//! Where an artifact comes from: the code version recorded in every checkpoint, ledger and
//! report.

/// `detnas <version> (<git revision>)`; the revision is set at build time by the engine's
/// build script (`DETNAS_GIT_REV`), else "unknown revision".
pub fn code_version() -> String {
    format!("detnas {} ({})", env!("CARGO_PKG_VERSION"), option_env!("DETNAS_GIT_REV").unwrap_or("unknown revision"))
}
