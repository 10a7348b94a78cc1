//! The run report: `RUN/report/report.md`, a self-contained `report.html` (SVG inline, no
//! server needed) and `RUN/report/plots/*.svg`, built only from the files of the run folder,
//! so `detnas report RUN` regenerates it at any time (sections of unfinished stages say so).

use crate::PipelineError;
use crate::layout::{self as dirs, GridRecord, RETRAINED, Retrained, finished, stage_record};
use crate::plots;
use detnas_detect::metrics::ClassScore;
use detnas_runtime::fsx::write_atomic;
use detnas_search::engine::{SearchState, read_state};
use detnas_search::ledger::LedgerEntry;
use detnas_search::run::{BestArch, read_best};
use detnas_space::{CostModel, LatencyTable, format_count};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const STAT_NAMES: [&str; 6] = ["AP", "AP50", "AP75", "APs", "APm", "APl"];

/// One row of the final table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FinalRow {
    /// `found`, `random` or `clsnas`.
    pub label: String,
    /// The architecture.
    pub arch: String,
    /// The 12 COCO stats on the test split.
    pub stats: Vec<f64>,
    /// Backbone MACs.
    pub backbone_macs: u64,
    /// Backbone parameters.
    pub backbone_params: u64,
    /// Latency from the search's per-op table, ms.
    pub latency_ms: Option<f64>,
    /// AP and AR100 of every class on the test split.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_class: Vec<ClassScore>,
}

fn curve(path: &Path, key: &str) -> Vec<(f64, f64)> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    text.lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some((v.get("step")?.as_f64()?, v.get(key)?.as_f64()?))
        })
        .collect()
}

struct Search {
    state: Option<SearchState>,
    entries: Vec<LedgerEntry>,
    best: Option<BestArch>,
}

fn search(dir: &Path) -> Search {
    Search {
        state: read_state(dir).ok().flatten(),
        entries: detnas_search::ledger::read(&dir.join("ledger.jsonl")).unwrap_or_default(),
        best: read_best(dir).ok(),
    }
}

struct Section {
    title: String,
    md: String,
    html: String,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A table as Markdown and HTML.
fn table(head: &[&str], rows: &[Vec<String>]) -> (String, String) {
    let mut md = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    let mut html = String::from("<table><tr>");
    for h in head {
        let _ = write!(html, "<th>{}</th>", esc(h));
    }
    html.push_str("</tr>");
    for r in rows {
        let _ = writeln!(md, "| {} |", r.join(" | "));
        html.push_str("<tr>");
        for c in r {
            // Markdown code spans (`…`) become <code> in HTML.
            match c.strip_prefix('`').and_then(|c| c.strip_suffix('`')) {
                Some(code) => {
                    let _ = write!(html, "<td><code>{}</code></td>", esc(code));
                }
                None => {
                    let _ = write!(html, "<td>{}</td>", esc(c));
                }
            }
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    (md, html)
}

fn f4(v: f64) -> String {
    if v < 0.0 { "—".into() } else { format!("{v:.3}") }
}

/// Writes the report of `run` (`report.md`, `report.html`, `final.json`, `plots/`): one
/// section per part of the run that exists; returns the report folder.
///
/// # Errors
/// [`PipelineError::Io`] or [`PipelineError::Train`] (atomic writes) when a report file cannot
/// be written; [`PipelineError::Config`] when a plot cannot be drawn; [`PipelineError::Space`]
/// when a retrained architecture does not fit the space.
pub fn write(run: &Path) -> Result<PathBuf, PipelineError> {
    let out = dirs::report(run);
    let figures = Figures { dir: out.join("plots") };
    std::fs::create_dir_all(&figures.dir).map_err(|e| PipelineError::io(&figures.dir, e))?;
    let rank_check = crate::rank_check::read_result(run);
    let found = search(&dirs::search(run));
    let cls = search(&dirs::search_cls(run));
    let mut sections = vec![run_section(run), final_section(run, (&found, &cls), rank_check.as_ref(), &figures)?];
    let zero = search(&dirs::search_zero_cost(run));
    for (title, name, s, metric) in [
        ("DetNAS search", "search", &found, "AP (search-val)"),
        ("ClsNAS search", "search_cls", &cls, "top-1"),
        ("Zero-cost search", "search_zero_cost", &zero, "entropy score"),
    ] {
        sections.extend(search_section((title, name), s, metric, &figures)?);
    }
    if let Some(r) = &rank_check {
        sections.push(rank_check_section(r, &figures)?);
    }
    sections.push(curves_section(run, &figures)?);
    let (md, html) = render(&sections);
    write_atomic(&out.join("report.md"), md.as_bytes())?;
    write_atomic(&out.join("report.html"), html.as_bytes())?;
    Ok(out)
}

/// The report's `plots/` folder: each figure is written there and shown in its section.
struct Figures {
    dir: PathBuf,
}

impl Figures {
    fn add(&self, name: &str, svg: Result<String, String>, sec: &mut Section) -> Result<(), PipelineError> {
        let svg = svg.map_err(|e| PipelineError::Config(format!("plot {name}: {e}")))?;
        let p = self.dir.join(format!("{name}.svg"));
        std::fs::write(&p, &svg).map_err(|e| PipelineError::io(&p, e))?;
        let _ = writeln!(sec.md, "\n![{name}](plots/{name}.svg)\n");
        let _ = write!(sec.html, "<div class=\"plot\">{svg}</div>");
        Ok(())
    }
}

/// "Run": the run folder, the stages' time and peak memory, the configuration.
fn run_section(run: &Path) -> Section {
    let cfg_text = std::fs::read_to_string(run.join("pipeline.toml")).unwrap_or_else(|_| "(no pipeline.toml)".into());
    let stage_dirs = dirs::stages(run);
    let mut rows = Vec::new();
    let (mut total, mut peak) = (0.0, 0.0f64);
    for (name, d) in &stage_dirs {
        if let Some(r) = stage_record::<serde_json::Value>(d) {
            total += r.seconds;
            let mib = |m: Option<f64>| m.map_or("—".into(), |m| format!("{m:.0}"));
            peak = peak.max(r.memory.peak_rss_mib.unwrap_or(0.0));
            rows.push(vec![
                name.clone(),
                format!("{:.1}", r.seconds),
                mib(r.memory.peak_rss_mib),
                mib(r.memory.gpu_peak_mib),
                if r.sessions > 1 { format!("done ({} sessions)", r.sessions) } else { "done".into() },
            ]);
        } else if d.exists() {
            rows.push(vec![name.clone(), "—".into(), "—".into(), "—".into(), "unfinished".into()]);
        }
    }
    rows.push(vec!["total".into(), format!("{total:.1}"), format!("{peak:.0}"), String::new(), String::new()]);
    let (md, html) = table(&["stage", "seconds", "peak RSS (MiB)", "GPU peak (MiB)", "status"], &rows);
    let mut sec = Section { title: "Run".into(), md: String::new(), html: String::new() };
    let memory = format!(
        "Peak resident memory of the run: {peak:.0} MiB (the largest stage peak; each stage's peak is measured \
         from its own start)."
    );
    // The machines the stages ran on, as recorded (a run may move between machines).
    let mut machines: Vec<String> = Vec::new();
    for (_, d) in &stage_dirs {
        if let Some(r) = stage_record::<serde_json::Value>(d)
            && !r.machine.cpu.is_empty()
            && !machines.contains(&r.machine.describe())
        {
            machines.push(r.machine.describe());
        }
    }
    let machine = if machines.is_empty() {
        "Machine: not recorded.".to_string()
    } else {
        format!("Machine{}: {}.", if machines.len() > 1 { "s" } else { "" }, machines.join("; "))
    };
    let _ = writeln!(
        sec.md,
        "Run folder `{}`; code {}.\n\n{machine}\n\n{md}\n{memory}\n",
        run.display(),
        detnas_runtime::code_version()
    );
    let _ = write!(
        sec.html,
        "<p>Run folder <code>{}</code>; code {}.</p><p>{}</p>{html}<p>{}</p><details><summary>configuration (pipeline.toml)</summary><pre>{}</pre></details>",
        esc(&run.display().to_string()),
        esc(&detnas_runtime::code_version()),
        esc(&machine),
        esc(&memory),
        esc(&cfg_text)
    );
    let _ = writeln!(
        sec.md,
        "<details><summary>configuration (pipeline.toml)</summary>\n\n```toml\n{cfg_text}\n```\n</details>\n"
    );
    // The resolved configuration of every stage, as it recorded it (folded).
    for (name, d) in &stage_dirs {
        for (part, file) in
            [("", d.join("config.toml")), (" cls", d.join("cls/config.toml")), (" det", d.join("det/config.toml"))]
        {
            let Ok(text) = std::fs::read_to_string(&file) else { continue };
            let _ = writeln!(
                sec.md,
                "<details><summary>stage {name}{part}: resolved configuration</summary>\n\n```toml\n{text}\n```\n</details>\n"
            );
            let _ = write!(
                sec.html,
                "<details><summary>stage {}{part}: resolved configuration</summary><pre>{}</pre></details>",
                esc(name),
                esc(&text)
            );
        }
    }
    sec
}

/// The smallest difference of AP between two models that a split of `boxes` boxes resolves:
/// twice the standard deviation of a difference, each AP's taken as that of a proportion on
/// the box count, √(AP (1 − AP) / boxes) (AP clamped to [0.05, 0.95]). An estimate from the
/// split's size, not a measurement (`detnas rank-check` measures the seed noise).
pub fn resolvable_ap_difference(ap: f64, boxes: usize) -> f64 {
    let ap = if ap.is_finite() { ap.clamp(0.05, 0.95) } else { 0.5 };
    2.0 * std::f64::consts::SQRT_2 * (ap * (1.0 - ap) / boxes.max(1) as f64).sqrt()
}

/// A split whose resolvable AP difference ([`resolvable_ap_difference`]) exceeds this is
/// called too small to separate models.
pub const SMALL_SPLIT_AP: f64 = 0.02;

/// What the run's numbers cannot support, computed from the run folder: splits too small to
/// separate models, search candidates within the search-validation split's noise, and
/// retrained models not above the trivial grid baseline by more than the test split's noise.
/// Empty before the `baseline-grid` stage has run.
pub fn warnings(run: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Some((_, grid)) = finished::<GridRecord>(&dirs::baseline_grid(run)) else { return out };
    let retrained: Vec<(String, f64)> = RETRAINED
        .iter()
        .filter_map(|l| finished::<Retrained>(&dirs::retrain(run, l)))
        .filter_map(|(_, r)| Some((r.label.clone(), r.det.paths.first()?.stats.ap())))
        .collect();
    let typical = retrained.first().map_or(0.3, |r| r.1);
    let t = grid.test_counts;
    let d_test = resolvable_ap_difference(typical, t.boxes);
    if d_test > SMALL_SPLIT_AP {
        out.push(format!(
            "the test split ({} images, {} boxes) is too small to separate models: test AP differences below about {d_test:.3} are within its noise (estimated from the box count)",
            t.images, t.boxes
        ));
    }
    let entries = detnas_search::ledger::read(&dirs::search(run).join("ledger.jsonl")).unwrap_or_default();
    let fitness: Vec<f64> = entries.iter().map(|e| e.fitness).filter(|f| f.is_finite()).collect();
    if let Some(sv) = grid.search_val_counts {
        let mean = if fitness.is_empty() { typical } else { fitness.iter().sum::<f64>() / fitness.len() as f64 };
        let d_sv = resolvable_ap_difference(mean, sv.boxes);
        if d_sv > SMALL_SPLIT_AP {
            out.push(format!(
                "the search-validation split ({} images, {} boxes) is too small to rank architectures: fitness differences below about {d_sv:.3} are within its noise (estimated from the box count)",
                sv.images, sv.boxes
            ));
        }
        if fitness.len() >= 2 {
            let (lo, hi) = fitness.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &f| (a.min(f), b.max(f)));
            if hi - lo < d_sv {
                out.push(format!(
                    "all {} search candidates lie within {:.3} AP of each other, less than the search-validation split's noise (about {d_sv:.3}): the search could not tell them apart, and the found architecture is no better supported than a random one under the same limit",
                    fitness.len(),
                    hi - lo
                ));
            }
        }
    }
    if let Some(g) = grid.test.map(|s| s.ap()) {
        for (label, ap) in &retrained {
            if ap - g <= d_test {
                out.push(format!(
                    "the {label} model's test AP ({ap:.3}) is not above the trivial grid baseline's ({g:.3}) by more than the test split's noise (about {d_test:.3}): it has not shown that it learnt to detect"
                ));
            }
        }
    }
    out
}

/// "Result": the retrained architectures on the test split (also `final.json`), the noise
/// of single runs, and the architectures figure.
fn final_section(
    run: &Path,
    (found, cls): (&Search, &Search),
    rank_check: Option<&crate::rank_check::RankCheckResult>,
    figures: &Figures,
) -> Result<Section, PipelineError> {
    let latency = LatencyTable::read(&dirs::search(run).join("latency-table.json")).ok();
    let mut final_rows = Vec::new();
    for l in RETRAINED {
        let Some((_, r)) = finished::<Retrained>(&dirs::retrain(run, l)) else { continue };
        let Some(b) = &found.best else { continue };
        let arch = b.space.parse_arch(&r.arch)?;
        let c = detnas_space::cost(&b.space, &arch, &CostModel { input: b.input, classes: 1000 });
        let test = r.det.paths.first();
        final_rows.push(FinalRow {
            label: r.label.clone(),
            arch: r.arch.clone(),
            stats: test.map(|p| p.stats.0.to_vec()).unwrap_or_default(),
            per_class: test.map(|p| p.per_class.clone()).unwrap_or_default(),
            backbone_macs: c.backbone_macs,
            backbone_params: c.backbone_params,
            latency_ms: latency.as_ref().and_then(|t| t.latency_ms(&arch).ok()),
        });
    }
    let mut sec = Section {
        title: "Result: retrained architectures on the test split".into(),
        md: String::new(),
        html: String::new(),
    };
    if final_rows.is_empty() {
        sec.md.push_str("No architecture retrained yet.\n");
        sec.html.push_str("<p>No architecture retrained yet.</p>");
    } else {
        let mut head: Vec<&str> = vec!["model", "architecture"];
        head.extend(STAT_NAMES);
        head.extend(["backbone MACs", "params", "latency (ms)"]);
        let rows: Vec<Vec<String>> = final_rows
            .iter()
            .map(|r| {
                let mut v = vec![r.label.clone(), format!("`{}`", r.arch)];
                v.extend(r.stats.iter().take(6).map(|&s| f4(s)));
                v.push(format_count(r.backbone_macs));
                v.push(format_count(r.backbone_params));
                v.push(r.latency_ms.map(|l| format!("{l:.2}")).unwrap_or_else(|| "—".into()));
                v
            })
            .collect();
        let mut rows = rows;
        let grid = finished::<GridRecord>(&dirs::baseline_grid(run)).map(|(_, g)| g);
        if let Some((g, stats)) = grid.as_ref().and_then(|g| Some((g.grid?, g.test?))) {
            let mut v = vec!["grid".to_string(), format!("{:.0}×{:.0} px boxes, no training", g.width, g.height)];
            v.extend(stats.0.iter().take(6).map(|&s| f4(s)));
            v.extend(["—".to_string(), "—".to_string(), "—".to_string()]);
            rows.push(v);
        }
        let (md, html) = table(&head, &rows);
        let note = "grid = the trivial baseline: boxes of the training set's median size on a fixed grid, every class, one score; it looks at no pixel. found = DetNAS search (AP on the search-validation split); random = a random architecture under the same limit; clsnas = search by classification top-1 on the pre-trained supernet. All retrained with the same protocol and evaluated on the test split, which no earlier stage saw.";
        let noise = match rank_check.as_ref().filter(|r| r.complete).and_then(|r| Some((r.seed_sd?, r.n, r.seeds, &r.protocol))) {
            Some((sd, n, s, protocol)) => format!(
                "Each model was trained once (one seed). The seed-to-seed standard deviation of test AP is {sd:.4} (rank-check: {n} architectures × {s} seeds{}), so a difference between two of these single runs smaller than about {:.3} (twice the standard deviation of a difference) is not evidence.",
                if protocol.is_empty() { ", this protocol".to_string() } else { format!(", protocol changed by {}", protocol.join(", ")) },
                2.0 * sd * std::f64::consts::SQRT_2
            ),
            None => "Each model was trained once (one seed); the seed-to-seed noise of this protocol is not measured here (`detnas rank-check RUN` measures it), so small differences are not evidence.".into(),
        };
        let _ = write!(sec.md, "{md}\n{note}\n\n{noise}\n");
        let _ = write!(sec.html, "{html}<p>{note}</p><p>{}</p>", esc(&noise));
        let warned = warnings(run);
        if !warned.is_empty() {
            sec.md.push_str("\n**Warnings** (computed from this run):\n\n");
            sec.html.push_str("<p><strong>Warnings</strong> (computed from this run):</p><ul>");
            for w in &warned {
                let _ = writeln!(sec.md, "- ⚠ {w}");
                let _ = write!(sec.html, "<li>⚠ {}</li>", esc(w));
            }
            sec.html.push_str("</ul>");
        }
        class_table(&final_rows, &mut sec);
        examples(run, figures, &mut sec)?;
        detnas_runtime::fsx::write_json_atomic(&dirs::report(run).join("final.json"), &final_rows)?;
    }
    // Architecture figure.
    if let Some(b) = &found.best {
        let mut rows: Vec<(String, Vec<u8>)> = vec![(format!("DetNAS {}", b.arch), b.space.parse_arch(&b.arch)?.ids())];
        if let Some(c) = &cls.best {
            rows.push((format!("ClsNAS {}", c.arch), b.space.parse_arch(&c.arch)?.ids()));
        }
        for (label, name) in [("random", "random"), ("zero-cost", "zero-cost")] {
            if let Some(r) = final_rows.iter().find(|r| r.label == label) {
                rows.push((format!("{name} {}", r.arch), b.space.parse_arch(&r.arch)?.ids()));
            }
        }
        let starts: Vec<usize> = b
            .space
            .depths
            .iter()
            .scan(0usize, |acc, &d| {
                *acc += d as usize;
                Some(*acc)
            })
            .collect();
        figures.add("architectures", plots::architectures(&rows, &starts), &mut sec)?;
    }
    Ok(sec)
}

/// Each class's AP and AR100 for every retrained model, with the dataset's class names.
fn class_table(rows: &[FinalRow], sec: &mut Section) {
    let Some(first) = rows.iter().find(|r| !r.per_class.is_empty()) else { return };
    let labels: Vec<String> =
        rows.iter().flat_map(|r| [format!("AP {}", r.label), format!("AR100 {}", r.label)]).collect();
    let mut head = vec!["class"];
    head.extend(labels.iter().map(String::as_str));
    let value = |v: f64| if v < 0.0 { "—".to_string() } else { f4(v) };
    let body: Vec<Vec<String>> = first
        .per_class
        .iter()
        .map(|c| {
            let mut v = vec![c.name.clone()];
            for r in rows {
                let s = r.per_class.iter().find(|s| s.category_id == c.category_id);
                v.push(s.map_or_else(|| "—".into(), |s| value(s.ap)));
                v.push(s.map_or_else(|| "—".into(), |s| value(s.ar100)));
            }
            v
        })
        .collect();
    let (md, html) = table(&head, &body);
    let note = "Per class on the test split: AP over IoU 0.50:0.95 and AR with up to 100 detections per image, all areas (— : no ground truth of that class).";
    let _ = write!(sec.md, "\n### Per class\n\n{md}\n{note}\n");
    let _ = write!(sec.html, "<h3>Per class</h3>{html}<p>{note}</p>");
}

/// Four test images with the found model's detections drawn and the ground truth dashed,
/// from the retraining's kept test detections.
fn examples(run: &Path, figures: &Figures, sec: &mut Section) -> Result<(), PipelineError> {
    let dir = dirs::retrain(run, "found").join("det").join("test");
    let intro = format!(
        "The found model on the first four test images with ground truth: detections from score {} on, ground truth dashed.",
        crate::pictures::SCORE_THRESHOLD
    );
    let _ = write!(sec.md, "\n### Example predictions\n\n{intro}\n");
    let _ = write!(sec.html, "<h3>Example predictions</h3><p>{}</p>", esc(&intro));
    match crate::pictures::examples(&dir, 4, 640) {
        Ok(pictures) => {
            for (i, (name, svg)) in pictures.into_iter().enumerate() {
                let _ = write!(sec.md, "\n{name}:\n");
                let _ = write!(sec.html, "<p>{}:</p>", esc(&name));
                figures.add(&format!("predictions-{}", i + 1), Ok(svg), sec)?;
            }
        }
        Err(e) => {
            let why = format!("No pictures: {e}.");
            let _ = writeln!(sec.md, "\n{why}");
            let _ = write!(sec.html, "<p>{}</p>", esc(&why));
        }
    }
    Ok(())
}

/// A search's progress and Pareto figures and its top-k; none when it has not started.
fn search_section(
    (title, name): (&str, &str),
    s: &Search,
    metric: &str,
    figures: &Figures,
) -> Result<Option<Section>, PipelineError> {
    let Some(state) = &s.state else { return Ok(None) };
    let mut sec = Section { title: title.into(), md: String::new(), html: String::new() };
    let best: Vec<(f64, f64)> = state.history.iter().map(|h| (h.generation as f64, h.elite_best)).collect();
    let mean: Vec<(f64, f64)> = state.history.iter().map(|h| (h.generation as f64, h.mean)).collect();
    let topk: Vec<(f64, f64)> = state.history.iter().map(|h| (h.generation as f64, h.elite_mean)).collect();
    if !best.is_empty() {
        figures.add(
            &format!("{name}_progress"),
            plots::lines(
                &format!("{title}: fitness per generation"),
                "generation",
                metric,
                &[("best so far".into(), best), ("top-k mean".into(), topk), ("generation mean".into(), mean)],
            ),
            &mut sec,
        )?;
    }
    if let Some(b) = &s.best {
        let limit = b.provenance.config.lines().find_map(|l| {
            l.strip_prefix("max_backbone_macs = ").and_then(|v| v.trim().trim_matches('"').parse::<f64>().ok())
        });
        let pts: Vec<(f64, f64, bool)> =
            s.entries.iter().map(|e| (e.backbone_macs as f64 / 1e6, e.fitness, e.arch == b.arch)).collect();
        figures.add(
            &format!("{name}_pareto"),
            plots::pareto(&format!("{title}: every candidate"), metric, &pts, limit.map(|l| l / 1e6)),
            &mut sec,
        )?;
        let rows: Vec<Vec<String>> = b
            .top_k
            .iter()
            .enumerate()
            .map(|(i, e)| {
                vec![
                    (i + 1).to_string(),
                    format!("`{}`", e.arch),
                    format!("{:.4}", e.fitness),
                    format_count(e.backbone_macs),
                    format_count(e.backbone_params),
                    e.generation.to_string(),
                ]
            })
            .collect();
        let (md, html) = table(&["rank", "arch", "fitness", "MACs", "params", "generation"], &rows);
        let n = s.entries.len().max(1) as f64;
        let recal = s.entries.iter().map(|e| e.recalibration_seconds).sum::<f64>() / n;
        let eval = s.entries.iter().map(|e| e.evaluation_seconds).sum::<f64>() / n;
        let text = format!(
            "{} candidates under {}; {:.2} s BN recalibration + {:.2} s evaluation per candidate. Top-{}:",
            s.entries.len(),
            b.constraint,
            recal,
            eval,
            b.top_k.len()
        );
        let _ = write!(sec.md, "{text}\n\n{md}\n");
        let _ = write!(sec.html, "<p>{}</p>{html}", esc(&text));
    }
    Ok(Some(sec))
}

/// "Ranking check": each proxy's agreement with the architectures retrained on their own.
fn rank_check_section(r: &crate::rank_check::RankCheckResult, figures: &Figures) -> Result<Section, PipelineError> {
    let mut sec = Section {
        title: "Ranking check: supernet scores against each architecture retrained on its own".into(),
        md: String::new(),
        html: String::new(),
    };
    let f = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.3}"));
    let text = format!(
        "{} architectures ({} drawn from the search ledger, stratified over {} and MACs{}) trained on their own with the retraining protocol ({}{}), {} seed(s) each{}. Ground truth = mean test AP over the seeds: spread (best − worst) {}, pooled seed-to-seed standard deviation {}, τ between the seeds' rankings {}. τ between unrelated rankings of {} architectures has a standard deviation of {}.",
        r.n,
        r.archs.iter().filter(|a| a.roles.iter().any(|x| x == "sampled")).count(),
        r.metric,
        {
            let added: Vec<&str> = ["found", "clsnas"]
                .into_iter()
                .filter(|role| r.archs.iter().any(|a| a.roles.len() == 1 && a.roles[0] == *role))
                .collect();
            let names: Vec<&str> = added.iter().map(|r| if *r == "found" { "found" } else { "ClsNAS" }).collect();
            if names.is_empty() { String::new() } else { format!(", plus the {}", names.join(" and ")) }
        },
        if r.retrain_mode == "inherit" {
            "inherit: from the pre-trained supernet's weights"
        } else {
            "scratch: classification first"
        },
        if r.protocol.is_empty() { String::new() } else { format!("; {}", r.protocol.join(", ")) },
        r.seeds,
        if r.complete { "" } else { "; unfinished: the figures cover the trained ones" },
        f(r.spread),
        f(r.seed_sd),
        f(r.seed_tau),
        r.n,
        f(r.tau_chance_sd)
    );
    let sup_names: Vec<String> = (1..r.supernets.len())
        .map(|k| format!("DetNAS: supernet fine-tuned again, seed + {k}"))
        .chain(r.supernet_mean.iter().map(|_| format!("DetNAS: mean of the {} supernets' scores", r.supernets.len())))
        .collect();
    let rows: Vec<Vec<String>> = [
        ("DetNAS: fine-tuned supernet", Some(&r.detnas)),
        ("ClsNAS: pre-trained supernet top-1", r.clsnas.as_ref()),
        ("control: detector at initialisation", r.init_control.as_ref()),
    ]
    .into_iter()
    .chain(sup_names.iter().map(String::as_str).zip(r.supernets.iter().skip(1).chain(&r.supernet_mean).map(Some)))
    .filter_map(|(name, a)| {
        let a = a?;
        Some(vec![
            name.to_string(),
            a.n.to_string(),
            f(a.kendall_tau),
            a.tau_ci95.map_or("—".into(), |[lo, hi]| format!("[{lo:.3}, {hi:.3}]")),
            f(a.spearman),
            a.chosen.as_ref().map_or("—".into(), |c| format!("`{c}`")),
            a.chosen_percentile.map_or("—".into(), |p| format!("{:.0} %", 100.0 * p)),
        ])
    })
    .collect();
    let (md, html) = table(&["proxy", "n", "Kendall τ", "95 % CI", "Spearman", "its choice", "beats"], &rows);
    let _ = write!(sec.md, "{text}\n\n{md}\n");
    // Every proxy, the free baselines included, and the verdict.
    let ci = |v: Option<[f64; 2]>| v.map_or("—".into(), |[lo, hi]| format!("[{lo:.3}, {hi:.3}]"));
    let proxy_rows: Vec<Vec<String>> = r
        .proxies
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.n.to_string(),
                f(p.kendall_tau),
                ci(p.tau_ci95),
                f(p.spearman),
                p.precision_top_quartile.map_or("—".into(), |v| format!("{:.0} %", 100.0 * v)),
                f(p.regret),
                p.regret_in_seed_sd.map_or("—".into(), |v| format!("{v:.1}")),
                ci(p.delta_tau_vs_oneshot_ci95),
            ]
        })
        .collect();
    let head = [
        "proxy",
        "n",
        "Kendall τ",
        "95 % CI",
        "Spearman",
        "precision@top ¼",
        "regret (AP)",
        "regret (seed sd)",
        "Δτ vs one-shot, 95 % CI",
    ];
    let (pmd, phtml) = table(&head, &proxy_rows);
    let note = "Free baselines (backbone MACs, params, latency) and training-free proxies (entropy: MAE-DET's entropy score; naswot: NASWOT's, on the first training images; synflow: ln SynFlow) are read as \"more is better\". Δτ = τ(one-shot) − τ(proxy), a paired bootstrap over architectures; regret = best ground truth − that of the proxy's pick.";
    let _ = write!(sec.md, "\n{pmd}\n{note}\n\n**Verdict**: {}\n", r.verdict);
    let _ = write!(sec.html, "<p>{}</p>{html}", esc(&text));
    let _ = write!(sec.html, "{phtml}<p>{}</p><p><strong>Verdict</strong>: {}</p>", esc(note), esc(&r.verdict));
    if let (Some(m), Some(sd)) = (r.supernet_tau_mean, r.supernet_tau_sd) {
        let text = format!(
            "The {} supernets (the search's own and {} fine-tuned again from the same pre-trained supernet with other seeds) rank the architectures with τ = {m:.3} on average (standard deviation {sd:.3}): a single search's ranking is one draw from that spread. \"Its choice\" of those rows is the best-scored of these architectures.",
            r.supernets.len(),
            r.supernets.len() - 1
        );
        let _ = writeln!(sec.md, "{text}");
        let _ = write!(sec.html, "<p>{}</p>", esc(&text));
    }
    let ci = |a: &crate::rank_check::Agreement| match (a.kendall_tau, a.tau_ci95) {
        (Some(t), Some([lo, hi])) => format!("τ = {t:.2} [{lo:.2}, {hi:.2}]"),
        (Some(t), None) => format!("τ = {t:.2}"),
        _ => "τ undefined".into(),
    };
    for (name, a, proxy, x_desc) in [
        (
            "rank_check_detnas",
            Some(&r.detnas),
            (|a: &crate::rank_check::ArchResult| a.det_proxy) as fn(&_) -> _,
            format!("supernet {} (search-val)", r.metric),
        ),
        (
            "rank_check_clsnas",
            r.clsnas.as_ref(),
            |a: &crate::rank_check::ArchResult| a.cls_proxy,
            "supernet top-1".to_string(),
        ),
    ] {
        let Some(a) = a else { continue };
        let pts: Vec<(f64, f64, f64, f64, bool)> = r
            .archs
            .iter()
            .filter_map(|x| {
                let m = x.ground_truth_mean?;
                let lo = x.ground_truth.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = x.ground_truth.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                Some((proxy(x)?, m, lo, hi, a.chosen.as_deref() == Some(x.arch.as_str())))
            })
            .collect();
        if pts.len() >= 2 {
            let title =
                format!("{}: {}", if name.ends_with("detnas") { "DetNAS proxy" } else { "ClsNAS proxy" }, ci(a));
            figures.add(name, plots::rank_scatter(&title, &x_desc, "test AP trained on its own", &pts), &mut sec)?;
        }
    }
    // What costs nothing, each against the ground truth; its pick (the largest) marked.
    type Free = fn(&crate::rank_check::ArchResult) -> Option<f64>;
    let free: [(&str, &str, Free); 6] = [
        ("backbone MACs", "rank_check_macs", |a| Some(a.backbone_macs as f64)),
        ("params", "rank_check_params", |a| a.backbone_params.map(|p| p as f64)),
        ("latency", "rank_check_latency", |a| a.latency_ms),
        ("entropy", "rank_check_entropy", |a| a.entropy_proxy),
        ("naswot", "rank_check_naswot", |a| a.naswot_proxy),
        ("synflow", "rank_check_synflow", |a| a.synflow_proxy),
    ];
    for (proxy_name, file, value) in free {
        let Some(p) = r.proxies.iter().find(|p| p.name == proxy_name) else { continue };
        let scored: Vec<(&crate::rank_check::ArchResult, f64, f64)> =
            r.archs.iter().filter_map(|x| Some((x, value(x)?, x.ground_truth_mean?))).collect();
        let pick = scored.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
        let mut picked = false;
        let pts: Vec<(f64, f64, f64, f64, bool)> = scored
            .iter()
            .map(|&(x, v, m)| {
                let lo = x.ground_truth.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = x.ground_truth.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mark = !picked && v == pick;
                picked |= mark;
                (v, m, lo, hi, mark)
            })
            .collect();
        if pts.len() >= 2 {
            let title = match (p.kendall_tau, p.tau_ci95) {
                (Some(t), Some([lo, hi])) => format!("{proxy_name}: τ = {t:.2} [{lo:.2}, {hi:.2}]"),
                _ => format!("{proxy_name}: τ undefined"),
            };
            figures.add(file, plots::rank_scatter(&title, proxy_name, "test AP trained on its own", &pts), &mut sec)?;
        }
    }
    Ok(sec)
}

/// "Training curves": the loss of every training stage.
fn curves_section(run: &Path, figures: &Figures) -> Result<Section, PipelineError> {
    let mut sec = Section { title: "Training curves".into(), md: String::new(), html: String::new() };
    let pre = curve(&dirs::pretrain(run).join("metrics.jsonl"), "loss");
    if !pre.is_empty() {
        figures.add(
            "pretrain_loss",
            plots::lines("supernet pre-training", "step", "loss", &[("loss".into(), pre)]),
            &mut sec,
        )?;
    }
    let ft = curve(&dirs::finetune(run).join("metrics.jsonl"), "loss");
    if !ft.is_empty() {
        figures.add(
            "finetune_loss",
            plots::lines("supernet fine-tuning (detection)", "step", "loss", &[("loss".into(), ft)]),
            &mut sec,
        )?;
    }
    let mut cls_curves = Vec::new();
    let mut det_curves = Vec::new();
    for l in RETRAINED {
        let d = dirs::retrain(run, l);
        let c = curve(&d.join("cls/metrics.jsonl"), "loss");
        if !c.is_empty() {
            cls_curves.push((l.to_string(), c));
        }
        let c = curve(&d.join("det/metrics.jsonl"), "loss");
        if !c.is_empty() {
            det_curves.push((l.to_string(), c));
        }
    }
    if !cls_curves.is_empty() {
        figures.add(
            "retrain_cls_loss",
            plots::lines("retraining: classification", "step", "loss", &cls_curves),
            &mut sec,
        )?;
    }
    if !det_curves.is_empty() {
        figures.add(
            "retrain_det_loss",
            plots::lines("retraining: detection", "step", "loss", &det_curves),
            &mut sec,
        )?;
    }
    Ok(sec)
}

/// The sections as one Markdown and one HTML document.
fn render(sections: &[Section]) -> (String, String) {
    let mut md = String::from("# DetNAS run report\n\n");
    let mut html = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>DetNAS run report</title><style>\
         body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}\
         table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}\
         th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.plot{margin:1em 0}\
         pre{background:#f7f7f7;padding:1em;overflow:auto}</style></head><body><h1>DetNAS run report</h1>",
    );
    for s in sections {
        let _ = write!(md, "## {}\n\n{}\n", s.title, s.md);
        let _ = write!(html, "<h2>{}</h2>{}", esc(&s.title), s.html);
    }
    html.push_str("</body></html>\n");
    (md, html)
}
