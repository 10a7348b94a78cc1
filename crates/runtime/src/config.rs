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
use crate::rules::{Rule, Rules};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// A typed configuration read from TOML.
pub trait ConfigDocument: Serialize + DeserializeOwned + Sized {
    /// The error of [`ConfigDocument::check`] (and of loading, through `From`).
    type Error: From<RuntimeError>;

    /// The keys a document must give. Every other key takes its section's `Default` (each
    /// section is `#[serde(default)]` with one `Default`: the one statement of its defaults),
    /// so a missing required key is found here, in the merged document, before deserialising.
    const REQUIRED: &'static [Required] = &[];

    /// Keys whose `--set` values are paths: relative ones are taken from the working folder
    /// (paths written in the file are relative to the file).
    const PATH_KEYS: &'static [&'static str] = &[];

    /// Makes relative paths in the document relative to `base` (the file's folder).
    fn resolve_paths(&mut self, base: &Path);

    /// The range of every numeric key ([`crate::rules`]): tables searched in order, the first
    /// matching row applies.
    const RANGES: &'static [&'static [Rule]] = &[];

    /// Cross-field rules (`fg_iou ≥ bg_iou`, increasing milestones, …), checked once every
    /// value is within its range.
    fn rules(&self, _rules: &mut Rules) {}

    /// What the value rules cannot say: references to outside the document (a space name, an
    /// architecture string, a file).
    ///
    /// # Errors
    /// The first reference that does not resolve, naming the field.
    fn check_references(&self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Checks [`ConfigDocument::RANGES`], [`ConfigDocument::rules`], then
    /// [`ConfigDocument::check_references`] (before any work).
    ///
    /// # Errors
    /// [`RuntimeError::Config`] listing every broken value rule; else the first reference
    /// that does not resolve.
    fn check(&self) -> Result<(), Self::Error> {
        self.check_with("the configuration", &[])
    }

    /// [`ConfigDocument::check`], naming `source` (the file) and the `--set` among `overrides`
    /// that set a key of a broken rule.
    ///
    /// # Errors
    /// As [`ConfigDocument::check`].
    fn check_with(&self, source: &str, overrides: &[String]) -> Result<(), Self::Error> {
        let doc = toml::Value::try_from(self).map_err(|e| RuntimeError::Config(format!("{source}: {e}")))?;
        let mut rules = Rules::ranges(&doc, Self::RANGES);
        // The cross-field rules may compute with the values: only within their ranges.
        if rules.broken().is_empty() {
            self.rules(&mut rules);
        }
        if let Some(message) = rules.report(source, overrides) {
            return Err(RuntimeError::Config(message).into());
        }
        self.check_references()
    }

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
    fn claim_run_dir(&self, out: &Path, allow: crate::checkpoint::MismatchOverride) -> Result<(), RuntimeError> {
        let hash_of = |text: &str| toml::from_str::<Self>(text).ok().map(|o| o.result_hash());
        let new = self.result_parts();
        let changes = |text: &str| match toml::from_str::<Self>(text) {
            Ok(old) => diff_keys(&old.result_parts(), &new),
            Err(_) => vec!["the recorded config.toml no longer parses".into()],
        };
        crate::checkpoint::claim_run_dir(out, &self.to_toml(), &self.result_hash(), hash_of, changes, allow)
    }

    /// Reads `path` (none: an empty document), applies `overrides`, resolves paths, checks.
    ///
    /// # Errors
    /// [`RuntimeError::Config`] naming the file and field for unreadable or invalid TOML,
    /// unknown keys and wrong types; the type's own error for a broken rule.
    fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self, Self::Error> {
        let overrides = absolutize_path_overrides(overrides, Self::PATH_KEYS);
        let mut cfg: Self = read_document(path, &overrides, Self::REQUIRED)?;
        if let Some(base) = path.and_then(Path::parent) {
            // Absolute, so the resolved configuration a run records works from any folder.
            let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
            cfg.resolve_paths(&base);
        }
        let name = path.map_or_else(|| "the default configuration".to_string(), |p| p.display().to_string());
        cfg.check_with(&name, &overrides)?;
        Ok(cfg)
    }
}

/// A key a configuration document must give ([`ConfigDocument::REQUIRED`]).
#[derive(Clone, Copy, Debug)]
pub struct Required {
    /// The dotted key (`schedule.lr`).
    pub key: &'static str,
    /// Required only when this key holds this string (a source's `kind`).
    pub when: Option<(&'static str, &'static str)>,
}

impl Required {
    /// `key` is always required.
    pub const fn key(key: &'static str) -> Required {
        Required { key, when: None }
    }

    /// `key` is required when `selector` (a dotted key) holds `value`.
    pub const fn when(selector: &'static str, value: &'static str, key: &'static str) -> Required {
        Required { key, when: Some((selector, value)) }
    }
}

/// The keys of `required` that `doc` lacks (in the order listed).
pub fn missing_keys(doc: &toml::Table, required: &[Required]) -> Vec<&'static str> {
    required
        .iter()
        .filter(|r| {
            r.when
                .is_none_or(|(sel, value)| crate::rules::lookup(doc, sel).and_then(toml::Value::as_str) == Some(value))
        })
        .filter(|r| crate::rules::lookup(doc, r.key).is_none())
        .map(|r| r.key)
        .collect()
}

/// The keys whose values differ between two JSON documents, `key: old → new` (dotted paths;
/// a missing key shows as `—`), at most 12.
pub fn diff_keys(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    fn walk(prefix: &str, a: Option<&serde_json::Value>, b: Option<&serde_json::Value>, out: &mut Vec<String>) {
        use serde_json::Value;
        match (a, b) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&p, x.get(k), y.get(k), out);
                }
            }
            (a, b) if a != b => {
                let show = |v: Option<&Value>| v.map_or("—".to_string(), Value::to_string);
                out.push(format!("{prefix}: {} → {}", show(a), show(b)));
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", Some(old), Some(new), &mut out);
    out.truncate(12);
    out
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
/// overrides, checks that it gives every `required` key, and deserialises it.
///
/// # Errors
/// [`RuntimeError::Config`] naming the file and the field; for missing required keys, every
/// one of them.
///
/// # Panics
/// Never: a TOML table always serialises.
pub fn read_document<T: DeserializeOwned>(
    path: Option<&Path>,
    overrides: &[String],
    required: &[Required],
) -> Result<T, RuntimeError> {
    let name = path.map_or_else(|| "the default configuration".to_string(), |p| p.display().to_string());
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| RuntimeError::Config(format!("cannot read {name}: {e}")))?,
        None => String::new(),
    };
    // The file's own errors carry its line, column and the offending text.
    let mut doc: toml::Table = toml::from_str(&text).map_err(|e| RuntimeError::Config(format!("{name}: {e}")))?;
    apply_overrides(&mut doc, overrides)?;
    let missing = missing_keys(&doc, required);
    if !missing.is_empty() {
        let keys = missing.join(", ");
        return Err(RuntimeError::Config(format!(
            "{name}: required key{} not given: {keys} (write {} in the file or give --set KEY=VALUE)",
            if missing.len() == 1 { "" } else { "s" },
            if missing.len() == 1 { "it" } else { "them" }
        )));
    }
    if overrides.is_empty() {
        return toml::from_str(&text).map_err(|e| RuntimeError::Config(format!("{name}: {e}")));
    }
    let merged = toml::to_string(&doc).expect("a TOML table serialises");
    match toml::from_str::<T>(&merged) {
        Ok(v) => Ok(v),
        Err(e) => {
            // Blame the file when it fails the same way alone; else the overrides, by key.
            if let Err(alone) = toml::from_str::<T>(&text)
                && alone.message() == e.message()
            {
                return Err(RuntimeError::Config(format!("{name}: {alone}")));
            }
            let key = e.span().map(|s| key_at(&merged, s.start)).unwrap_or_default();
            let culprit: Vec<&String> =
                overrides.iter().filter(|o| !key.is_empty() && o.trim_start().starts_with(&key)).collect();
            let shown = if culprit.is_empty() {
                overrides.iter().map(|o| format!("--set {o}")).collect::<Vec<_>>().join(" ")
            } else {
                culprit.iter().map(|o| format!("--set {o}")).collect::<Vec<_>>().join(" ")
            };
            Err(RuntimeError::Config(format!(
                "{shown}: {}{}",
                if key.is_empty() { String::new() } else { format!("{key}: ") },
                e.message()
            )))
        }
    }
}

/// The dotted key of the value at byte `at` of a TOML text written by `toml::to_string`
/// (`[section]` headers and `key = value` lines).
fn key_at(text: &str, at: usize) -> String {
    let mut section = String::new();
    let mut key = String::new();
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            section = h.trim_matches(['[', ']']).to_string();
            key.clear();
        } else if let Some((k, _)) = t.split_once('=') {
            key = k.trim().trim_matches('"').to_string();
        }
        pos += line.len();
        if pos > at {
            break;
        }
    }
    match (section.is_empty(), key.is_empty()) {
        (_, true) => section,
        (true, false) => key,
        (false, false) => format!("{section}.{key}"),
    }
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

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        seed: u64,
        schedule: Sched,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sched {
        lr: f64,
    }

    #[test]
    fn errors_point_at_the_file_line_or_the_override() {
        let d = std::env::temp_dir().join(format!("detnas-cfg-errors-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("c.toml");
        std::fs::write(&f, "seed = 1\n[schedule]\nlr = \"0.02\"\n").unwrap();
        let e = read_document::<Doc>(Some(&f), &[], &[]).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("line 3") && e.contains("lr = \"0.02\""), "{e}");
        std::fs::write(&f, "seed = 1\n[schedule]\nlr = 0.02\nlrr = 1\n").unwrap();
        let e = read_document::<Doc>(Some(&f), &[], &[]).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("unknown field `lrr`"), "{e}");
        std::fs::write(&f, "seed = 1\n[schedule]\nlr = 0.02\n").unwrap();
        let e =
            read_document::<Doc>(Some(&f), &["seed=2".into(), "schedule.lr=fast".into()], &[]).unwrap_err().to_string();
        assert!(e.starts_with("configuration: --set schedule.lr=fast: schedule.lr:") && !e.contains("c.toml"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_required_keys_are_all_named_and_conditions_apply() {
        let doc: toml::Table = toml::from_str("seed = 1\n[data.source]\nkind = \"yolo\"\n").unwrap();
        let required = [
            Required::key("seed"),
            Required::key("schedule.lr"),
            Required::key("schedule.batch"),
            Required::when("data.source.kind", "yolo", "data.source.yaml"),
            Required::when("data.source.kind", "synthetic", "data.source.train.images"),
        ];
        assert_eq!(missing_keys(&doc, &required), ["schedule.lr", "schedule.batch", "data.source.yaml"]);
        let d = std::env::temp_dir().join(format!("detnas-cfg-required-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("c.toml");
        std::fs::write(&f, "seed = 1\n").unwrap();
        let need = [Required::key("seed"), Required::key("schedule.lr")];
        let e = read_document::<Doc>(Some(&f), &[], &need).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("required key not given: schedule.lr"), "{e}");
        // An override gives it.
        let doc = read_document::<Doc>(Some(&f), &["schedule.lr=0.5".into()], &need).unwrap();
        assert_eq!(doc.schedule.lr, 0.5);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn diffs_name_the_changed_keys() {
        let a = serde_json::json!({"schedule": {"iterations": 2400, "lr": 0.02}, "seed": 0});
        let b = serde_json::json!({"schedule": {"iterations": 300, "lr": 0.02}, "seed": 0, "x": true});
        assert_eq!(diff_keys(&a, &b), ["schedule.iterations: 2400 → 300", "x: — → true"]);
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
