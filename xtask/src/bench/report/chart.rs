//! The PNG chart: operation rate and CPU per operation against the same round's bare run, per
//! round, one line per workload, configuration and tool.

use std::path::Path;

use super::{RATE_RATIO_MIN, model::Report};
use anyhow::{Context as _, anyhow};

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// The chart draws text with a TTF file (no fontconfig): install DejaVu if there is none.
pub fn ensure_font() -> anyhow::Result<()> {
    if FONT_PATHS.iter().any(|p| Path::new(p).exists()) {
        return Ok(());
    }
    crate::bench::system::apt_install(&["fonts-dejavu-core"])
}

fn register_font() -> anyhow::Result<()> {
    let path = FONT_PATHS
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| anyhow!("no TTF font found"))?;
    let bytes: &'static [u8] = Box::leak(
        std::fs::read(path)
            .with_context(|| format!("reading {path}"))?
            .into_boxed_slice(),
    );
    plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{path} is not a usable font"))
}

/// Two panels, one line per configuration and mode: rate ratio and CPU-per-operation ratio per round.
pub fn chart(results: &Report, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;

    register_font()?;
    struct Series {
        label: String,
        rate: Vec<(f64, f64)>,
        cpu: Vec<(f64, f64)>,
    }
    let mut series = Vec::new();
    let mut rounds = 1.0f64;
    for c in &results.configs {
        let measured = || c.samples.iter().filter(|s| !s.profile);
        let bare = |round: u32| measured().find(|s| s.mode == "bare" && s.round == round);
        for mode in c.summary.modes.keys().filter(|m| *m != "bare") {
            let mut s = Series {
                label: format!(
                    "{} {}t/{}p {}",
                    short(c.workload.as_deref()),
                    c.threads,
                    c.ports,
                    mode
                ),
                rate: vec![],
                cpu: vec![],
            };
            for sample in measured().filter(|s| s.mode == *mode) {
                let Some(b) = bare(sample.round) else { continue };
                let round = f64::from(sample.round);
                rounds = rounds.max(round);
                s.rate.push((round, sample.rate_per_s / b.rate_per_s));
                s.cpu.push((round, sample.cpu_ns_per_op / b.cpu_ns_per_op));
            }
            series.push(s);
        }
    }
    let bounds = |pick: fn(&Series) -> &Vec<(f64, f64)>, with: f64| {
        let values: Vec<f64> = series
            .iter()
            .flat_map(|s| pick(s).iter().map(|p| p.1))
            .filter(|v| v.is_finite())
            .collect();
        let lo = values.iter().copied().fold(with, f64::min);
        let hi = values.iter().copied().fold(with, f64::max);
        let pad = ((hi - lo) * 0.08).max(0.01);
        (lo - pad)..(hi + pad)
    };
    let rate_range = bounds(|s| &s.rate, 1.0);
    let cpu_range = bounds(|s| &s.cpu, 1.0);
    let x_range = 0.8..(rounds + 0.2);

    let root = BitMapBackend::new(path, (1500, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let title = format!(
        "rstwatch benchmark: ratios to the same round's bare run — {}",
        results.meta.date
    );
    let root = root
        .titled(&title, ("sans-serif", 24))
        .map_err(|e| anyhow!("{e}"))?;
    let panels = root.split_evenly((1, 2));
    // Warm colours for rstwatch, cool ones for bpftrace, greys and others for variants.
    let warm = [
        RGBColor(214, 39, 40),
        RGBColor(255, 127, 14),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
    ];
    let cool = [
        RGBColor(31, 119, 180),
        RGBColor(23, 190, 207),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
    ];
    let other = [
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(60, 60, 60),
        RGBColor(170, 170, 170),
    ];
    let (mut w, mut c, mut o) = (0, 0, 0);
    let colors: Vec<RGBColor> = series
        .iter()
        .map(|s| {
            let mode = s.label.rsplit_once(' ').map_or("", |(_, m)| m);
            let (set, n) = match mode {
                "rstwatch" => (&warm, &mut w),
                "bpftrace" => (&cool, &mut c),
                _ => (&other, &mut o),
            };
            *n += 1;
            set[(*n - 1) % set.len()]
        })
        .collect();
    for (panel, (caption, y_range, pick, target)) in panels.iter().zip([
        (
            "operations/s vs bare — higher is better",
            rate_range,
            (|s: &Series| &s.rate) as fn(&Series) -> &Vec<(f64, f64)>,
            Some(RATE_RATIO_MIN),
        ),
        (
            "generator CPU per operation vs bare — lower is better",
            cpu_range,
            (|s: &Series| &s.cpu) as fn(&Series) -> &Vec<(f64, f64)>,
            None,
        ),
    ]) {
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x_range.clone(), y_range.clone())
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc("ratio")
            .x_labels(rounds as usize + 1)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.3}"))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        let one = [(x_range.start, 1.0), (x_range.end, 1.0)];
        chart
            .draw_series(LineSeries::new(one, BLACK.stroke_width(1)))
            .map_err(|e| anyhow!("{e}"))?;
        if let Some(target) = target {
            chart
                .draw_series(LineSeries::new(
                    [(x_range.start, target), (x_range.end, target)],
                    RED.mix(0.5).stroke_width(2),
                ))
                .map_err(|e| anyhow!("{e}"))?
                .label(format!("target {target}"))
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.mix(0.5).stroke_width(2)));
        }
        for (i, s) in series.iter().enumerate() {
            let color = colors[i];
            let points: Vec<(f64, f64)> = pick(s).iter().copied().filter(|p| p.1.is_finite()).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
                .map_err(|e| anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Results written before there were workloads hold the reset storm.
fn short(workload: Option<&str>) -> &'static str {
    match workload {
        Some("connections") => "conn",
        _ => "refused",
    }
}
