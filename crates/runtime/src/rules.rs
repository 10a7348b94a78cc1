//! The value rules of a configuration document: the range of every numeric key (a table per
//! document) and its cross-field rules, checked together before any work, each broken rule
//! named by its key and by the `--set` that set it.
//!
//! Keys are the document's dotted TOML keys; `*` stands for one key segment
//! (`data.source.*.images`). An array's rule is its elements' (`data.min_size` covers
//! `min_size = [640, 800]`). Every float must be finite.

use std::fmt;
use std::ops::Bound;

/// The values a numeric key accepts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    /// Lower bound.
    pub lo: Bound<f64>,
    /// Upper bound.
    pub hi: Bound<f64>,
}

impl Range {
    /// Any finite number.
    pub const ANY: Range = Range { lo: Bound::Unbounded, hi: Bound::Unbounded };
    /// `> 0`.
    pub const POSITIVE: Range = Range { lo: Bound::Excluded(0.0), hi: Bound::Unbounded };
    /// `≥ 0`.
    pub const NON_NEGATIVE: Range = Range { lo: Bound::Included(0.0), hi: Bound::Unbounded };
    /// `[0, 1]`.
    pub const FRACTION: Range = Range { lo: Bound::Included(0.0), hi: Bound::Included(1.0) };

    /// `≥ lo`.
    pub const fn at_least(lo: f64) -> Range {
        Range { lo: Bound::Included(lo), hi: Bound::Unbounded }
    }

    /// `[lo, hi]`.
    pub const fn within(lo: f64, hi: f64) -> Range {
        Range { lo: Bound::Included(lo), hi: Bound::Included(hi) }
    }

    /// Whether `v` is finite and within the bounds.
    pub fn contains(&self, v: f64) -> bool {
        let lo = match self.lo {
            Bound::Included(l) => v >= l,
            Bound::Excluded(l) => v > l,
            Bound::Unbounded => true,
        };
        let hi = match self.hi {
            Bound::Included(h) => v <= h,
            Bound::Excluded(h) => v < h,
            Bound::Unbounded => true,
        };
        v.is_finite() && lo && hi
    }
}

impl fmt::Display for Range {
    /// `> 0`, `≥ 16`, `in [0, 1]`, `in (0, 0.5]`, `a finite number`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.lo, self.hi) {
            (Bound::Unbounded, Bound::Unbounded) => write!(f, "a finite number"),
            (Bound::Excluded(l), Bound::Unbounded) => write!(f, "> {l}"),
            (Bound::Included(l), Bound::Unbounded) => write!(f, "≥ {l}"),
            (Bound::Unbounded, Bound::Excluded(h)) => write!(f, "< {h}"),
            (Bound::Unbounded, Bound::Included(h)) => write!(f, "≤ {h}"),
            (lo, hi) => {
                let (open, l) = match lo {
                    Bound::Included(l) => ('[', l),
                    Bound::Excluded(l) => ('(', l),
                    Bound::Unbounded => unreachable!("handled above"),
                };
                let (close, h) = match hi {
                    Bound::Included(h) => (']', h),
                    Bound::Excluded(h) => (')', h),
                    Bound::Unbounded => unreachable!("handled above"),
                };
                write!(f, "in {open}{l}, {h}{close}")
            }
        }
    }
}

/// One row of a range table: a key pattern and its range.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// Dotted key; `*` matches one segment.
    pub key: &'static str,
    /// What the key accepts.
    pub range: Range,
}

/// Shorthand for a [`Rule`].
pub const fn rule(key: &'static str, range: Range) -> Rule {
    Rule { key, range }
}

/// A broken rule: the keys involved (the first is the one reported) and what is wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct Broken {
    /// The keys the rule reads, dotted.
    pub keys: Vec<String>,
    /// What the rule says, without the key.
    pub message: String,
}

/// Collects broken rules.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    broken: Vec<Broken>,
    unruled: Vec<String>,
}

impl Rules {
    /// Checks every numeric value of `doc` against the first rule of `tables` whose key
    /// matches (a value no rule matches is listed by [`Rules::unruled`]).
    pub fn ranges(doc: &toml::Value, tables: &[&[Rule]]) -> Rules {
        let mut r = Rules::default();
        walk(doc, &mut Vec::new(), tables, &mut r);
        r
    }

    /// Adds a cross-field rule: broken unless `ok`; `keys` are the keys it reads.
    pub fn require(&mut self, ok: bool, keys: &[&str], message: impl Into<String>) {
        if !ok {
            self.broken.push(Broken { keys: keys.iter().map(|k| k.to_string()).collect(), message: message.into() });
        }
    }

    /// The broken rules, in the order found.
    pub fn broken(&self) -> &[Broken] {
        &self.broken
    }

    /// Numeric keys that no rule covered (a table is incomplete).
    pub fn unruled(&self) -> &[String] {
        &self.unruled
    }

    /// One message for every broken rule: `key = value: must be …`, with ` (--set …)` when an
    /// override in `overrides` set one of its keys; `None` when nothing is broken. `source`
    /// names the document (its file).
    pub fn report(&self, source: &str, overrides: &[String]) -> Option<String> {
        if self.broken.is_empty() {
            return None;
        }
        let lines: Vec<String> = self
            .broken
            .iter()
            .map(|b| {
                let sets: Vec<String> = overrides
                    .iter()
                    .filter(|o| {
                        let k = o.split_once('=').map_or(o.as_str(), |(k, _)| k).trim();
                        b.keys.iter().any(|key| key == k || key.starts_with(&format!("{k}.")))
                    })
                    .map(|o| format!("--set {o}"))
                    .collect();
                let from = if sets.is_empty() { String::new() } else { format!(" (from {})", sets.join(" ")) };
                format!("{}{from}", b.message)
            })
            .collect();
        Some(if lines.len() == 1 {
            format!("{source}: {}", lines[0])
        } else {
            format!("{source}: {} values break their rules:\n  {}", lines.len(), lines.join("\n  "))
        })
    }
}

/// A numeric key of a document (what the table tests and the configuration proptests walk).
#[derive(Clone, Debug, PartialEq)]
pub struct NumericKey {
    /// Dotted key.
    pub key: String,
    /// Elements when the key holds an array of numbers.
    pub array_len: Option<usize>,
    /// Whether its values are integers.
    pub integer: bool,
}

/// Every numeric key of `doc`, in document order.
pub fn numeric_keys(doc: &toml::Value) -> Vec<NumericKey> {
    fn go(v: &toml::Value, key: &mut Vec<String>, out: &mut Vec<NumericKey>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    key.push(k.clone());
                    go(v, key, out);
                    key.pop();
                }
            }
            toml::Value::Array(a) if a.iter().all(|x| x.is_integer() || x.is_float()) && !a.is_empty() => {
                out.push(NumericKey { key: key.join("."), array_len: Some(a.len()), integer: a[0].is_integer() });
            }
            toml::Value::Integer(_) => out.push(NumericKey { key: key.join("."), array_len: None, integer: true }),
            toml::Value::Float(_) => out.push(NumericKey { key: key.join("."), array_len: None, integer: false }),
            _ => {}
        }
    }
    let mut out = Vec::new();
    go(doc, &mut Vec::new(), &mut out);
    out
}

/// The number at dotted `key` of `doc` (the first element of an array).
fn number_at(doc: &toml::Value, key: &str) -> Option<f64> {
    let v = key.split('.').try_fold(doc, |v, k| v.get(k))?;
    let v = match v {
        toml::Value::Array(a) => a.first()?,
        v => v,
    };
    v.as_float().or_else(|| v.as_integer().map(|i| i as f64))
}

/// The range `tables` give `key` (dotted), if any.
pub fn range_of(tables: &[&[Rule]], key: &str) -> Option<Range> {
    let parts: Vec<String> = key.split('.').map(str::to_string).collect();
    tables.iter().flat_map(|t| t.iter()).find(|r| matches(r.key, &parts)).map(|r| r.range)
}

impl Range {
    /// Values just outside the range (for integers: the nearest integers outside), then the
    /// non-finite floats for float keys.
    pub fn outside(&self, integer: bool) -> Vec<f64> {
        let step = |x: f64| if integer { 1.0 } else { x.abs() * 1e-3 + 1e-3 };
        let mut v = Vec::new();
        match self.lo {
            Bound::Included(l) => v.push(l - step(l)),
            Bound::Excluded(l) => v.push(l),
            Bound::Unbounded => {}
        }
        match self.hi {
            Bound::Included(h) => v.push(h + step(h)),
            Bound::Excluded(h) => v.push(h),
            Bound::Unbounded => {}
        }
        if !integer {
            v.extend([f64::NAN, f64::INFINITY, f64::NEG_INFINITY]);
        }
        v
    }
}

/// `v` as a TOML value for `--set` (`nan`, `inf`, `-inf`; integers without a point).
pub fn toml_number(v: f64, integer: bool) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf".into() } else { "-inf".into() }
    } else if integer && v.fract() == 0.0 {
        format!("{}", v as i64)
    } else {
        format!("{v:?}")
    }
}

impl NumericKey {
    /// The `--set` that gives this key `v` (every element, for an array).
    pub fn set(&self, v: f64) -> String {
        let x = toml_number(v, self.integer);
        match self.array_len {
            Some(n) => format!("{}=[{}]", self.key, vec![x; n].join(", ")),
            None => format!("{}={x}", self.key),
        }
    }
}

/// The table cases of a document: for every numeric key of `doc` that `tables` rule, each
/// value just outside its range ([`Range::outside`]), as `(key, --set)`.
pub fn out_of_range_cases(doc: &toml::Value, tables: &[&[Rule]]) -> Vec<(String, String)> {
    numeric_keys(doc)
        .into_iter()
        .filter_map(|k| range_of(tables, &k.key).map(|r| (k, r)))
        .flat_map(|(k, r)| r.outside(k.integer).into_iter().map(move |v| (k.key.clone(), k.set(v))))
        .collect()
}

/// The table test of a document type (test support): `load` applied to `base` plus one
/// `--set` must give a document whose numeric keys all have a range in `C::RANGES`, and each
/// value just outside a range must be refused with exit code 2 (`code`), the message naming
/// the key and the `--set`. Returns the number of refusals checked.
///
/// # Errors
/// The first case that breaks this, described.
pub fn check_every_key<C, E: fmt::Display>(
    load: impl Fn(&[String]) -> Result<C, E>,
    code: impl Fn(&E) -> u8,
    base: &[String],
) -> Result<usize, String>
where
    C: crate::ConfigDocument,
{
    let cfg = load(base).map_err(|e| format!("the base document does not load: {e}"))?;
    let doc = toml::Value::try_from(&cfg).map_err(|e| e.to_string())?;
    let r = Rules::ranges(&doc, C::RANGES);
    if !r.unruled().is_empty() {
        return Err(format!("keys without a range: {:?}", r.unruled()));
    }
    let cases = out_of_range_cases(&doc, C::RANGES);
    for (key, set) in &cases {
        refused_naming(load(&[base, std::slice::from_ref(set)].concat()).map(|_| ()), &code, key, set)?;
    }
    Ok(cases.len())
}

/// [`check_every_key`] over several documents (test support): `load(file, overrides)` for
/// each of `files`, `base` first. Returns the refusals checked, over all of them.
///
/// # Errors
/// The first case that breaks the property, with its file.
pub fn check_every_file<C, E: fmt::Display>(
    files: &[std::path::PathBuf],
    load: impl Fn(&std::path::Path, &[String]) -> Result<C, E>,
    code: impl Fn(&E) -> u8 + Copy,
    base: &[&str],
) -> Result<usize, String>
where
    C: crate::ConfigDocument,
{
    let base: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    let mut cases = 0;
    for f in files {
        cases +=
            check_every_key(|set: &[String]| load(f, set), code, &base).map_err(|e| format!("{}: {e}", f.display()))?;
    }
    Ok(cases)
}

/// [`crate::ConfigDocument::REQUIRED`] over several documents (test support): each required
/// key that `file` gives (and whose condition holds there) is removed in turn from a copy of
/// the file (its folder's other `.toml` files copied beside it, so relative paths resolve);
/// `load` must then refuse it with exit code 2, naming the key. Returns the refusals checked.
///
/// # Errors
/// The first case that breaks the property, with its file and key.
pub fn check_required_files<C, E: fmt::Display>(
    files: &[std::path::PathBuf],
    load: impl Fn(&std::path::Path, &[String]) -> Result<C, E>,
    code: impl Fn(&E) -> u8,
) -> Result<usize, String>
where
    C: crate::ConfigDocument,
{
    let mut cases = 0;
    for (i, f) in files.iter().enumerate() {
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("detnas-required-{}-{call}-{i}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let folder = f.parent().ok_or("a file without a folder")?;
        for entry in std::fs::read_dir(folder).map_err(|e| e.to_string())?.flatten() {
            if entry.path().extension().is_some_and(|x| x == "toml") {
                std::fs::copy(entry.path(), dir.join(entry.file_name())).map_err(|e| e.to_string())?;
            }
        }
        let copy = dir.join(f.file_name().ok_or("a file without a name")?);
        let text = std::fs::read_to_string(f).map_err(|e| e.to_string())?;
        let doc: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        for r in C::REQUIRED {
            let applies = r
                .when
                .is_none_or(|(selector, value)| lookup(&doc, selector).and_then(toml::Value::as_str) == Some(value));
            let key = r.key;
            if !applies || without(&doc, key) == doc {
                continue;
            }
            let stripped = toml::to_string(&without(&doc, key)).map_err(|e| e.to_string())?;
            std::fs::write(&copy, stripped).map_err(|e| e.to_string())?;
            match load(&copy, &[]) {
                Ok(_) => return Err(format!("{}: accepted without {key}", f.display())),
                Err(e) if code(&e) != 2 => {
                    return Err(format!("{}: without {key}: exit {}: {e}", f.display(), code(&e)));
                }
                Err(e) if !e.to_string().contains(key) => {
                    return Err(format!("{}: without {key}: the message does not name it: {e}", f.display()));
                }
                Err(_) => cases += 1,
            }
        }
        std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;
    }
    Ok(cases)
}

/// The value at dotted `key` of `doc`.
pub(crate) fn lookup<'a>(doc: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut value = doc.get(parts.next()?)?;
    for p in parts {
        value = value.as_table()?.get(p)?;
    }
    Some(value)
}

/// `doc` without the value at dotted `key`.
fn without(doc: &toml::Table, key: &str) -> toml::Table {
    let mut doc = doc.clone();
    let parts: Vec<&str> = key.split('.').collect();
    let mut table = &mut doc;
    for p in &parts[..parts.len() - 1] {
        match table.get_mut(*p).and_then(toml::Value::as_table_mut) {
            Some(t) => table = t,
            None => return doc.clone(),
        }
    }
    table.remove(parts[parts.len() - 1]);
    doc
}

/// What one case of the configuration proptests draws ([`crate::range_tests`]): a
/// document, a key, and candidate values (an integer key takes `int` or `small`, a float key
/// `float` or `unit`, by `pick`).
#[derive(Clone, Copy, Debug)]
pub struct Draw {
    /// Index of the document (modulo their number).
    pub file: usize,
    /// Index of the numeric key (modulo their number).
    pub key: usize,
    /// Any integer.
    pub int: i64,
    /// An integer near 0.
    pub small: i64,
    /// Any float (NaN and infinities included).
    pub float: f64,
    /// A float near \[0, 1\].
    pub unit: f64,
    /// Which candidate: 0 the wide one, else the narrow one.
    pub pick: u8,
}

/// One case of the configuration proptests (test support): [`check_random_set`] with the key
/// and value `d` picks from the document `files[d.file]` gives with `base`.
///
/// # Errors
/// What broke the property, with the file.
///
/// # Panics
/// When the base document does not load.
pub fn check_random_draw<C, E: fmt::Display + fmt::Debug>(
    files: &[std::path::PathBuf],
    load: impl Fn(&std::path::Path, &[String]) -> Result<C, E>,
    code: impl Fn(&E) -> u8,
    base: &[&str],
    d: Draw,
) -> Result<(), String>
where
    C: crate::ConfigDocument,
{
    let f = &files[d.file % files.len()];
    let base: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    let doc = toml::Value::try_from(load(f, &base).expect("the base document loads")).map_err(|e| e.to_string())?;
    let keys = numeric_keys(&doc);
    let k = &keys[d.key % keys.len()];
    let v = match (k.integer, d.pick) {
        (true, 0) => d.int as f64,
        (true, _) => d.small as f64,
        (false, 0) => d.float,
        (false, _) => d.unit,
    };
    check_random_set(|set: &[String]| load(f, set), code, &base, k, v).map_err(|e| format!("{}: {e}", f.display()))
}

/// Declares the two range tests of a document type (test support): the table test
/// `every_numeric_key_has_a_range_and_each_bad_value_names_its_key_and_set` ([`check_every_file`],
/// at least `$min` refusals) and the proptest
/// `random_values_on_random_keys_are_refused_or_in_range` (`$cases` [`check_random_draw`]
/// cases), over the documents `$files`, loaded by `$load(file, overrides)` after the overrides
/// `$base`, errors mapped to exit codes by `$code`. The calling crate needs `proptest`.
#[macro_export]
macro_rules! range_tests {
    (files: $files:expr, load: $load:expr, code: $code:expr, base: $base:expr, min: $min:expr, cases: $cases:expr) => {
        #[test]
        fn every_numeric_key_has_a_range_and_each_bad_value_names_its_key_and_set() {
            let n = $crate::rules::check_every_file(&$files, $load, $code, &$base).unwrap();
            assert!(n >= $min, "{n} cases");
        }

        /// Every required key, removed from each document that gives it, is named (exit 2).
        #[test]
        fn a_missing_required_key_is_named() {
            let n = $crate::rules::check_required_files(&$files, $load, $code).unwrap();
            assert!(n >= 1, "{n} cases");
        }

        proptest::proptest! {
            #![proptest_config(proptest::prelude::ProptestConfig { cases: $cases, ..Default::default() })]
            /// Any value on any numeric key: accepted only inside the key's range, refused with
            /// the key named (exit 2), never a panic.
            #[test]
            fn random_values_on_random_keys_are_refused_or_in_range(
                file in 0usize..64,
                key in 0usize..1000,
                int in proptest::prelude::any::<i64>(),
                small in -3i64..3,
                float in proptest::prelude::any::<f64>(),
                unit in -0.5f64..1.5,
                pick in 0u8..4,
            ) {
                let d = $crate::rules::Draw { file, key, int, small, float, unit, pick };
                let r = $crate::rules::check_random_draw(&$files, $load, $code, &$base, d);
                proptest::prop_assert!(r.is_ok(), "{}", r.unwrap_err());
            }
        }
    };
}

/// The property of one random `--set` (test support): `load` with `base` and `key = v`
/// either succeeds with `v` inside the key's range, or is refused with exit code 2 naming
/// the key and the `--set`.
///
/// # Errors
/// What broke the property.
pub fn check_random_set<C, E: fmt::Display>(
    load: impl Fn(&[String]) -> Result<C, E>,
    code: impl Fn(&E) -> u8,
    base: &[String],
    key: &NumericKey,
    v: f64,
) -> Result<(), String>
where
    C: crate::ConfigDocument,
{
    let set = key.set(v);
    match load(&[base, std::slice::from_ref(&set)].concat()) {
        Ok(cfg) => {
            // The value as the field holds it (an f32 field rounds -1e-50 to -0.0); a key the
            // configuration leaves out when it holds its default (0 warm-start steps) holds `v`.
            let doc = toml::Value::try_from(&cfg).map_err(|e| e.to_string())?;
            let held = number_at(&doc, &key.key).unwrap_or(v);
            match range_of(C::RANGES, &key.key) {
                Some(r) if r.contains(held) => Ok(()),
                _ => Err(format!("{set} was accepted (held as {held})")),
            }
        }
        Err(e) => refused_naming(Err(e), &code, &key.key, &set),
    }
}

fn refused_naming<E: fmt::Display>(
    result: Result<(), E>,
    code: &impl Fn(&E) -> u8,
    key: &str,
    set: &str,
) -> Result<(), String> {
    match result {
        Ok(()) => Err(format!("--set {set} was accepted")),
        Err(e) if code(&e) != 2 => Err(format!("--set {set}: exit code {}, not 2: {e}", code(&e))),
        Err(e) => {
            let m = e.to_string();
            if m.contains(key) && m.contains(&format!("--set {set}")) {
                Ok(())
            } else {
                Err(format!("--set {set}: the message does not name {key} and the --set: {m}"))
            }
        }
    }
}

fn matches(pattern: &str, key: &[String]) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    p.len() == key.len() && p.iter().zip(key).all(|(p, k)| *p == "*" || p == k)
}

fn walk(v: &toml::Value, key: &mut Vec<String>, tables: &[&[Rule]], out: &mut Rules) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                key.push(k.clone());
                walk(v, key, tables, out);
                key.pop();
            }
        }
        toml::Value::Array(a) => {
            for v in a {
                walk(v, key, tables, out);
            }
        }
        toml::Value::Integer(_) | toml::Value::Float(_) => {
            let x = match v {
                toml::Value::Integer(i) => *i as f64,
                toml::Value::Float(f) => *f,
                _ => unreachable!("numbers only"),
            };
            let dotted = key.join(".");
            match tables.iter().flat_map(|t| t.iter()).find(|r| matches(r.key, key)) {
                Some(r) if !r.range.contains(x) => {
                    let shown = match v {
                        toml::Value::Integer(i) => i.to_string(),
                        _ => format!("{x:?}"),
                    };
                    out.broken.push(Broken {
                        message: format!("{dotted} = {shown}: must be {}", r.range),
                        keys: vec![dotted],
                    });
                }
                Some(_) => {}
                None => {
                    if !out.unruled.contains(&dotted) {
                        out.unruled.push(dotted);
                    }
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &[Rule] = &[
        rule("a.frac", Range::FRACTION),
        rule("a.*.n", Range::POSITIVE),
        rule("sizes", Range::at_least(16.0)),
        rule("seed", Range::ANY),
    ];

    fn doc(text: &str) -> toml::Value {
        toml::Value::Table(toml::from_str(text).unwrap())
    }

    #[test]
    fn ranges_name_the_key_and_value() {
        let r = Rules::ranges(
            &doc("seed = -3\nsizes = [16, 8]\n[a]\nfrac = 1.5\nother = 2\n[a.x]\nn = 0\n[a.y]\nn = 1\n"),
            &[TABLE],
        );
        let msgs: Vec<&str> = r.broken().iter().map(|b| b.message.as_str()).collect();
        assert_eq!(msgs, ["a.frac = 1.5: must be in [0, 1]", "a.x.n = 0: must be > 0", "sizes = 8: must be ≥ 16"]);
        assert_eq!(r.unruled(), ["a.other"]);
    }

    #[test]
    fn non_finite_floats_are_refused_everywhere() {
        for v in ["nan", "inf", "-inf"] {
            let r = Rules::ranges(&doc(&format!("seed = {v}")), &[TABLE]);
            assert_eq!(r.broken().len(), 1, "{v}");
            assert!(r.broken()[0].message.contains("a finite number"), "{:?}", r.broken());
        }
    }

    #[test]
    fn bounds_are_shown_as_written() {
        let half_open = Range { lo: Bound::Excluded(0.0), hi: Bound::Included(0.5) };
        assert_eq!(half_open.to_string(), "in (0, 0.5]");
        assert!(!half_open.contains(0.0) && half_open.contains(0.5) && !half_open.contains(0.51));
        let top_open = Range { lo: Bound::Included(0.0), hi: Bound::Excluded(1.0) };
        assert_eq!(top_open.to_string(), "in [0, 1)");
        assert!(top_open.contains(0.0) && !top_open.contains(1.0));
        assert_eq!(Range::at_least(16.0).to_string(), "≥ 16");
    }

    #[test]
    fn the_report_names_the_set_that_broke_a_rule() {
        let mut r = Rules::ranges(&doc("[a]\nfrac = 2.0\n"), &[TABLE]);
        r.require(false, &["a.hi", "a.lo"], "a.hi (0.3) must be ≥ a.lo (0.5)");
        let one = r.report("cfg.toml", &["a.frac=2.0".into(), "a.lo=0.5".into(), "b=1".into()]).unwrap();
        assert_eq!(
            one,
            "cfg.toml: 2 values break their rules:\n  a.frac = 2.0: must be in [0, 1] (from --set a.frac=2.0)\n  \
             a.hi (0.3) must be ≥ a.lo (0.5) (from --set a.lo=0.5)"
        );
        assert!(Rules::default().report("x", &[]).is_none());
        let single = Rules::ranges(&doc("[a]\nfrac = -1\n"), &[TABLE]).report("cfg.toml", &[]).unwrap();
        assert_eq!(single, "cfg.toml: a.frac = -1: must be in [0, 1]");
    }
}
