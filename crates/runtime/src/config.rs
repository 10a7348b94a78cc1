//! Configuration documents: one path from a TOML file and `--set key=value` overrides to a
//! checked, typed configuration with a result hash.
//!
//! [`ConfigDocument::load`] reads the file (or an empty document), applies the overrides,
//! deserialises (unknown keys are refused by the types), makes relative paths relative to
//! the file's folder, and runs the cross-field checks. The *result hash* covers only what
//! determines a run's result ([`ConfigDocument::result_parts`]), so changing the device or the
//! checkpoint interval does not make a run folder refuse its own configuration.

use crate::RuntimeError;
use crate::fsx::sha256_hex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// A typed configuration read from TOML.
pub trait ConfigDocument: Serialize + DeserializeOwned + Sized {
    /// The error of [`ConfigDocument::check`] (and of loading, through `From`).
    type Error: From<RuntimeError>;

    /// Keys whose `--set` values are paths: relative ones are taken from the working folder
    /// (paths written in the file are relative to the file).
    const PATH_KEYS: &'static [&'static str] = &[];

    /// Makes relative paths in the document relative to `base` (the file's folder).
    fn resolve_paths(&mut self, base: &Path);

    /// Cross-field rules, checked before any work.
    ///
    /// # Errors
    /// The first rule broken, naming the field.
    fn check(&self) -> Result<(), Self::Error>;

    /// The parts of the configuration that determine the result (hashed).
    fn result_parts(&self) -> serde_json::Value;

    /// SHA-256 (hex) of [`ConfigDocument::result_parts`].
    fn result_hash(&self) -> String {
        sha256_hex(self.result_parts().to_string().as_bytes())
    }

    /// The configuration as TOML text (what a run folder records).
    fn to_toml(&self) -> String {
        toml::to_string(self).expect("a configuration always serialises to TOML")
    }

    /// Claims run folder `out` for this configuration ([`crate::checkpoint::claim_run_dir`]):
    /// a folder holding a configuration with another result hash is refused unless
    /// `allow_mismatch`.
    ///
    /// # Errors
    /// As [`crate::checkpoint::claim_run_dir`].
    fn claim_run_dir(&self, out: &Path, allow_mismatch: bool) -> Result<(), RuntimeError> {
        let hash_of = |text: &str| toml::from_str::<Self>(text).ok().map(|o| o.result_hash());
        crate::checkpoint::claim_run_dir(out, &self.to_toml(), &self.result_hash(), hash_of, allow_mismatch)
    }

    /// Reads `path` (none: an empty document), applies `overrides`, resolves paths, checks.
    ///
    /// # Errors
    /// [`RuntimeError::Config`] naming the file and field for unreadable or invalid TOML,
    /// unknown keys and wrong types; the type's own error for a broken rule.
    fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self, Self::Error> {
        let overrides = absolutize_path_overrides(overrides, Self::PATH_KEYS);
        let mut cfg: Self = read_document(path, &overrides)?;
        if let Some(base) = path.and_then(Path::parent) {
            cfg.resolve_paths(base);
        }
        cfg.check()?;
        Ok(cfg)
    }
}

/// Makes `p` relative to `base` when it is relative and not empty.
pub fn resolve_path(p: &mut PathBuf, base: &Path) {
    if p.is_relative() && !p.as_os_str().is_empty() {
        *p = base.join(&*p);
    }
}

/// Applies `key.path=value` overrides to a TOML document. Values are parsed as TOML
/// (`0.1`, `true`, `[1, 2]`, `"x"`), bare words as strings.
///
/// # Errors
/// [`RuntimeError::Config`] for an override without `=` or through a key that is not a
/// table.
pub fn apply_overrides(doc: &mut toml::Table, overrides: &[String]) -> Result<(), RuntimeError> {
    for o in overrides {
        let (key, raw) =
            o.split_once('=').ok_or_else(|| RuntimeError::Config(format!("--set '{o}': expected key=value")))?;
        let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        let parts: Vec<&str> = key.trim().split('.').collect();
        let mut table = &mut *doc;
        for p in &parts[..parts.len() - 1] {
            table = table
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| RuntimeError::Config(format!("--set '{o}': '{p}' is not a section")))?;
        }
        table.insert(parts[parts.len() - 1].to_string(), value);
    }
    Ok(())
}

/// Makes the values of path-valued `--set` overrides (`keys`) absolute against the current
/// folder: paths written in a configuration file are relative to the file, paths given on
/// the command line to where the command runs.
pub fn absolutize_path_overrides(overrides: &[String], keys: &[&str]) -> Vec<String> {
    let cwd = std::env::current_dir().unwrap_or_default();
    overrides
        .iter()
        .map(|o| {
            let Some((k, v)) = o.split_once('=') else { return o.clone() };
            if !keys.contains(&k.trim()) {
                return o.clone();
            }
            let raw = v.trim().trim_matches('"');
            let p = Path::new(raw);
            if p.is_relative() && !raw.is_empty() {
                let abs = cwd.join(p).to_string_lossy().replace('\\', "\\\\").replace('"', "\\\"");
                format!("{}=\"{abs}\"", k.trim())
            } else {
                o.clone()
            }
        })
        .collect()
}

/// Reads a TOML configuration document from `path` (none: empty), applies `--set`
/// overrides, and deserialises it.
///
/// # Errors
/// [`RuntimeError::Config`] naming the file and the field.
pub fn read_document<T: DeserializeOwned>(path: Option<&Path>, overrides: &[String]) -> Result<T, RuntimeError> {
    let mut doc: toml::Table = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| RuntimeError::Config(format!("cannot read {}: {e}", p.display())))?;
            toml::from_str(&text).map_err(|e| RuntimeError::Config(format!("{}: {}", p.display(), e.message())))?
        }
        None => toml::Table::new(),
    };
    apply_overrides(&mut doc, overrides)?;
    toml::Value::Table(doc).try_into().map_err(|e: toml::de::Error| match path {
        Some(p) => RuntimeError::Config(format!("{}: {}", p.display(), e.message())),
        None => RuntimeError::Config(e.message().to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_overrides_are_made_absolute_against_the_working_folder() {
        let cwd = std::env::current_dir().unwrap();
        let o = absolutize_path_overrides(
            &["model.pretrained=runs/x".into(), "model.pretrained=\"/abs/y\"".into(), "seed=3".into()],
            &["model.pretrained"],
        );
        assert_eq!(o[0], format!("model.pretrained=\"{}\"", cwd.join("runs/x").display()));
        assert_eq!(o[1], "model.pretrained=\"/abs/y\"");
        assert_eq!(o[2], "seed=3");
    }

    #[test]
    fn overrides_parse_toml_values_and_create_sections() {
        let mut doc: toml::Table = toml::from_str("[a]\nx = 1\n").unwrap();
        apply_overrides(&mut doc, &["a.x=2.5".into(), "b.c.d=[1, 2]".into(), "e=word".into()]).unwrap();
        assert_eq!(doc["a"]["x"].as_float(), Some(2.5));
        assert_eq!(doc["b"]["c"]["d"].as_array().unwrap().len(), 2);
        assert_eq!(doc["e"].as_str(), Some("word"));
        let e = apply_overrides(&mut doc, &["a.x.y=1".into()]).unwrap_err().to_string();
        assert!(e.contains("'x' is not a section"), "{e}");
        assert!(apply_overrides(&mut doc, &["novalue".into()]).unwrap_err().to_string().contains("key=value"));
    }
}
