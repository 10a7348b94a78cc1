//! SVG charts of the report (plotters' SVG backend: text as SVG `<text>`, no font files).

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// Colours of the four choices (0 = 3×3, 1 = 5×5, 2 = 7×7, 3 = Xception) and of series.
pub const CHOICE_COLOURS: [RGBColor; 4] =
    [RGBColor(78, 121, 167), RGBColor(242, 142, 43), RGBColor(225, 87, 89), RGBColor(89, 161, 79)];
const SERIES: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

type Res = Result<String, String>;

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A titled chart with labelled axes over `x` × `y`.
fn axes<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    x: (f64, f64),
    y: (f64, f64),
) -> Result<Chart<'a, 'b>, String> {
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(|e| e.to_string())?;
    // Counted axes (generations, steps) get integer ticks only.
    let counted = ["generation", "step", "iteration"].iter().any(|w| x_desc.contains(w));
    let span = (x.1 - x.0).max(1.0);
    let integer_ticks = |v: &f64| if v.fract().abs() < 1e-9 { format!("{v:.0}") } else { String::new() };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_desc).y_desc(y_desc).light_line_style(WHITE.mix(0.0));
    if counted {
        mesh.x_labels((span as usize + 1).min(11)).x_label_formatter(&integer_ticks);
    }
    mesh.draw().map_err(|e| e.to_string())?;
    Ok(chart)
}

/// The series legend at `position`.
fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, position: SeriesLabelPosition) -> Result<(), String> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(position)
        .draw()
        .map_err(|e| e.to_string())
}

/// Line chart of named series `(name, [(x, y)])`.
///
/// # Errors
/// The drawing backend's error, as text.
pub fn lines(title: &str, x_desc: &str, y_desc: &str, series: &[(String, Vec<(f64, f64)>)]) -> Res {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (x0, x1) = range(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)));
        let (y0, y1) = range(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)));
        let mut chart = axes(&root, title, x_desc, y_desc, (x0, x1), (y0, y1))?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let c = SERIES[i % SERIES.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        }
        if series.len() > 1 {
            legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Fitness vs backbone MACs of every candidate (`(macs, fitness, highlighted)`), the Pareto
/// front (best fitness at most that many MACs) and the constraint line.
///
/// # Errors
/// The drawing backend's error, as text.
pub fn pareto(title: &str, y_desc: &str, points: &[(f64, f64, bool)], limit: Option<f64>) -> Res {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (x0, x1) = range(points.iter().map(|p| p.0).chain(limit));
        let (y0, y1) = range(points.iter().map(|p| p.1));
        let mut chart = axes(&root, title, "backbone MACs (M)", y_desc, (x0, x1), (y0, y1))?;
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(points.iter().map(|&(x, y, _)| Circle::new((x, y), 3, grey.mix(0.6).filled())))
            .map_err(|e| e.to_string())?
            .label("candidate")
            .legend(move |(x, y)| Circle::new((x + 9, y), 3, grey.filled()));
        let mut sorted: Vec<(f64, f64)> = points.iter().map(|p| (p.0, p.1)).collect();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut front: Vec<(f64, f64)> = Vec::new();
        for (x, y) in sorted {
            if front.last().is_none_or(|l| y > l.1) {
                front.push((x, y));
            }
        }
        let c = SERIES[0];
        chart
            .draw_series(LineSeries::new(front.iter().copied(), c.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("Pareto front")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        let red = SERIES[3];
        chart
            .draw_series(points.iter().filter(|p| p.2).map(|&(x, y, _)| Circle::new((x, y), 6, red.stroke_width(2))))
            .map_err(|e| e.to_string())?
            .label("best")
            .legend(move |(x, y)| Circle::new((x + 9, y), 5, red.stroke_width(2)));
        if let Some(l) = limit {
            let k = BLACK.mix(0.7);
            chart
                .draw_series(LineSeries::new(vec![(l, y0), (l, y1)], k.stroke_width(1)))
                .map_err(|e| e.to_string())?
                .label("constraint")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], k));
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The architectures as rows of blocks coloured by choice, grouped by stage (the paper's
/// Figure 2 layout): `rows = [(label, choice ids)]`, `stage_ends` = index after each stage.
///
/// # Errors
/// The drawing backend's error, as text.
pub fn architectures(rows: &[(String, Vec<u8>)], stage_ends: &[usize]) -> Res {
    let blocks = rows.iter().map(|r| r.1.len()).max().unwrap_or(1);
    let (cell, gap, left, top) = (26i32, 10i32, 130i32, 40i32);
    let width = (left + blocks as i32 * cell + stage_ends.len() as i32 * gap + 20).max(520) as u32;
    let height = (top + rows.len() as i32 * (cell + 16) + 60) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let font = ("sans-serif", 14).into_font();
        root.draw(&Text::new("architectures (blocks by stage, coloured by choice)", (10, 10), font.clone()))
            .map_err(|e| e.to_string())?;
        for (r, (label, ids)) in rows.iter().enumerate() {
            let y = top + r as i32 * (cell + 16);
            root.draw(&Text::new(label.clone(), (10, y + 6), font.clone())).map_err(|e| e.to_string())?;
            for (b, &c) in ids.iter().enumerate() {
                let stage = stage_ends.iter().filter(|&&e| b >= e).count() as i32;
                let x = left + b as i32 * cell + stage * gap;
                root.draw(&Rectangle::new([(x, y), (x + cell - 3, y + cell)], CHOICE_COLOURS[c as usize % 4].filled()))
                    .map_err(|e| e.to_string())?;
            }
        }
        let ly = top + rows.len() as i32 * (cell + 16) + 10;
        for (i, name) in ["3x3", "5x5", "7x7", "Xception"].iter().enumerate() {
            let x = 10 + i as i32 * 110;
            root.draw(&Rectangle::new([(x, ly), (x + 16, ly + 16)], CHOICE_COLOURS[i].filled()))
                .map_err(|e| e.to_string())?;
            root.draw(&Text::new(name.to_string(), (x + 22, ly + 2), font.clone())).map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Proxy score against ground truth, one point per architecture: `(proxy, mean, min, max,
/// highlighted)` with a vertical bar from the seeds' min to max; the highlighted one (the
/// search's choice) ringed.
///
/// # Errors
/// The drawing backend's error, as text.
pub fn rank_scatter(title: &str, x_desc: &str, y_desc: &str, points: &[(f64, f64, f64, f64, bool)]) -> Res {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (x0, x1) = range(points.iter().map(|p| p.0));
        let (y0, y1) = range(points.iter().flat_map(|p| [p.2, p.3]));
        let mut chart = axes(&root, title, x_desc, y_desc, (x0, x1), (y0, y1))?;
        let c = SERIES[0];
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&(x, _, lo, hi, _)| PathElement::new(vec![(x, lo), (x, hi)], c.mix(0.5).stroke_width(1))),
            )
            .map_err(|e| e.to_string())?
            .label("seed range")
            .legend(move |(x, y)| PathElement::new(vec![(x + 9, y - 6), (x + 9, y + 6)], c.mix(0.5)));
        chart
            .draw_series(points.iter().map(|&(x, y, _, _, _)| Circle::new((x, y), 4, c.filled())))
            .map_err(|e| e.to_string())?
            .label("architecture (seed mean)")
            .legend(move |(x, y)| Circle::new((x + 9, y), 4, c.filled()));
        let red = SERIES[3];
        if points.iter().any(|p| p.4) {
            chart
                .draw_series(
                    points.iter().filter(|p| p.4).map(|&(x, y, ..)| Circle::new((x, y), 8, red.stroke_width(2))),
                )
                .map_err(|e| e.to_string())?
                .label("the search's choice")
                .legend(move |(x, y)| Circle::new((x + 9, y), 6, red.stroke_width(2)));
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}
