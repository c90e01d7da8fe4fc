//! Plots, as SVG (for people and docs) and PNG (for chat tools and dashboards):
//! fleet progress over time, backhaul bytes per site, origin egress over time.
//!
//! Text is drawn with plotters' pure-Rust `ab_glyph` renderer from a TrueType font found on
//! the system (DejaVu, Liberation, Noto…), so no fontconfig or freetype library is needed.
//! Without any font file both formats are drawn without text rather than failing the run.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::Report;

const W: u32 = 1000;
const H: u32 = 600;
const MESH: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const MESH_LIGHT: RGBColor = RGBColor(0x9e, 0xc9, 0xe8);
const DIRECT: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const CACHE: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const BOUND: RGBColor = RGBColor(0x55, 0x55, 0x55);

/// A labelled line: (legend, points, colour, stroke width).
type Line = (String, Vec<(f64, f64)>, RGBColor, u32);

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers a system font with plotters once; false if none was found.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let from_env = std::env::var_os("SIMNET_FONT").map(PathBuf::from);
        for path in from_env.into_iter().chain(FONT_CANDIDATES.iter().map(PathBuf::from)) {
            let Ok(bytes) = std::fs::read(&path) else { continue };
            if bytes.len() > 32 << 20 {
                continue;
            }
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
        false
    })
}

/// Which files were written and whether they have text.
#[derive(Debug, Clone)]
pub struct Written {
    /// Paths.
    pub files: Vec<PathBuf>,
    /// Labels drawn (a font was found).
    pub with_text: bool,
}

/// Writes progress, backhaul and origin plots as SVG and PNG into `dir`.
pub fn write_all(report: &Report, dir: &Path) -> Result<Written, String> {
    let text = font_ready();
    let mut files = Vec::new();
    // One macro expansion per plot: each drawing function is generic over the backend.
    macro_rules! both {
        ($name:expr, $draw:ident) => {{
            let svg_path = dir.join(format!("{}.svg", $name));
            {
                let area = SVGBackend::new(&svg_path, (W, H)).into_drawing_area();
                $draw(report, text, &area)?;
                area.present().map_err(|e| format!("{}: {e}", svg_path.display()))?;
            }
            files.push(svg_path);
            let png_path = dir.join(format!("{}.png", $name));
            {
                let area = BitMapBackend::new(&png_path, (W, H)).into_drawing_area();
                $draw(report, text, &area)?;
                area.present().map_err(|e| format!("{}: {e}", png_path.display()))?;
            }
            files.push(png_path);
        }};
    }
    both!("progress", progress);
    both!("backhaul", backhaul);
    both!("origin-egress", origin);
    Ok(Written { files, with_text: text })
}

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("plot: {e}")
}

/// Draws `lines`, each with a legend entry when `text` is on.
fn draw_lines<'a, DB: DrawingBackend + 'a, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<'a, DB, CT>,
    lines: impl IntoIterator<Item = Line>,
    text: bool,
) -> Result<(), String> {
    for (label, pts, color, width) in lines {
        let series = chart.draw_series(LineSeries::new(pts, color.stroke_width(width))).map_err(err)?;
        if text {
            series.label(label).legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3)));
        }
    }
    Ok(())
}

/// The legend box every chart uses, at `position`.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(err)
}

fn log_time_range(report: &Report) -> (f64, f64) {
    let last = report.series.t_s.last().copied().unwrap_or(1.0).max(0.01);
    let first = report.series.t_s.first().copied().unwrap_or(0.001).clamp(0.001, last / 10.0);
    (first, last * 1.05)
}

fn progress<DB: DrawingBackend>(r: &Report, text: bool, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
    area.fill(&WHITE).map_err(err)?;
    let (lo, hi) = log_time_range(r);
    let mut b = ChartBuilder::on(area);
    b.margin(20);
    if text {
        b.caption(format!("{}: devices holding the verified release", r.scenario), ("sans-serif", 24))
            .x_label_area_size(45)
            .y_label_area_size(60);
    }
    let mut chart = b.build_cartesian_2d((lo..hi).log_scale(), 0f64..100f64).map_err(err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("virtual time, s (log scale)")
            .y_desc("% of devices")
            .label_style(("sans-serif", 15))
            .x_label_formatter(&|v| format!("{v}"))
            .y_label_formatter(&|v| format!("{v:.0}"));
    } else {
        mesh.disable_x_mesh().disable_y_mesh();
    }
    mesh.draw().map_err(err)?;
    let s = &r.series;
    let curve = |v: &[f64]| -> Vec<(f64, f64)> {
        s.t_s.iter().zip(v).filter(|(t, _)| **t >= lo).map(|(t, f)| (*t, f * 100.0)).collect()
    };
    let lines: [Line; 5] = [
        ("mesh: downloaded".into(), curve(&s.mesh_downloaded), MESH, 3),
        ("mesh: committed, rolled back or refused".into(), curve(&s.mesh_finished), MESH_LIGHT, 2),
        ("one plain cache per site".into(), curve(&s.plain_cache_downloaded), CACHE, 2),
        ("every device from the origin".into(), curve(&s.direct_origin_downloaded), DIRECT, 2),
        (
            "Kumar-Ross lower bound".into(),
            s.lower_bound.iter().filter(|(t, _)| *t >= lo).map(|(t, f)| (*t, f * 100.0)).collect(),
            BOUND,
            1,
        ),
    ];
    draw_lines(&mut chart, lines, text)?;
    if text {
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    }
    Ok(())
}

fn backhaul<DB: DrawingBackend>(r: &Report, text: bool, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
    area.fill(&WHITE).map_err(err)?;
    let [mesh_v, direct_v, cache_v] = &r.series.backhaul_mib_by_site;
    let release_mib = r.release_bytes as f64 / 1048576.0;
    let max = mesh_v.iter().chain(direct_v).chain(cache_v).copied().fold(release_mib, f64::max) * 2.0;
    let lo = release_mib / 4.0;
    let sites = r.sites as f64;
    let mut b = ChartBuilder::on(area);
    b.margin(20);
    if text {
        b.caption(format!("{}: inbound backhaul per site", r.scenario), ("sans-serif", 24))
            .x_label_area_size(45)
            .y_label_area_size(70);
    }
    let mut chart = b.build_cartesian_2d(-0.5f64..(sites - 0.5).max(0.5), (lo..max).log_scale()).map_err(err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("site")
            .y_desc("MiB (log scale)")
            .label_style(("sans-serif", 15))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"));
    } else {
        mesh.disable_x_mesh().disable_y_mesh();
    }
    mesh.draw().map_err(err)?;
    let points = |v: &[f64]| -> Vec<(f64, f64)> { v.iter().enumerate().map(|(i, m)| (i as f64, m.max(lo))).collect() };
    let size = if r.sites > 200 { 1 } else { 4 };
    let sets: [(&str, &Vec<f64>, RGBColor); 3] = [
        ("every device from the origin", direct_v, DIRECT),
        ("one plain cache per site", cache_v, CACHE),
        ("mesh", mesh_v, MESH),
    ];
    for (label, v, color) in sets {
        let series =
            chart.draw_series(points(v).into_iter().map(|p| Circle::new(p, size, color.filled()))).map_err(err)?;
        if text {
            series.label(label).legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
        }
    }
    let line = chart
        .draw_series(LineSeries::new([(-0.5, release_mib), (sites - 0.5, release_mib)], BOUND.stroke_width(1)))
        .map_err(err)?;
    if text {
        line.label("release size (amplification 1.00)")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], BOUND.stroke_width(2)));
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    }
    Ok(())
}

/// A legend label with the run's origin egress in copies of the release.
fn copies(name: &str, run: &crate::report::RunSummary) -> String {
    format!("{name}: {} copies", crate::report::copies(run.origin_egress_copies))
}

fn origin<DB: DrawingBackend>(r: &Report, text: bool, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
    area.fill(&WHITE).map_err(err)?;
    let (lo, hi) = log_time_range(r);
    let s = &r.series;
    let max = s
        .mesh_origin_gbps
        .iter()
        .chain(&s.direct_origin_origin_gbps)
        .chain(&s.plain_cache_origin_gbps)
        .copied()
        .fold(0.001, f64::max)
        * 1.1;
    let mut b = ChartBuilder::on(area);
    b.margin(20);
    if text {
        b.caption(
            format!(
                "{}: origin egress ({:.2} copies of the release from the mesh)",
                r.scenario, r.mesh.origin_egress_copies
            ),
            ("sans-serif", 24),
        )
        .x_label_area_size(45)
        .y_label_area_size(60);
    }
    let mut chart = b.build_cartesian_2d((lo..hi).log_scale(), 0f64..max).map_err(err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("virtual time, s (log scale)")
            .y_desc("Gbit/s")
            .label_style(("sans-serif", 15))
            .x_label_formatter(&|v| format!("{v}"));
    } else {
        mesh.disable_x_mesh().disable_y_mesh();
    }
    mesh.draw().map_err(err)?;
    let curve = |v: &[f64]| -> Vec<(f64, f64)> {
        s.t_s.iter().zip(v).filter(|(t, _)| **t >= lo).map(|(t, g)| (*t, *g)).collect()
    };
    let lines: [Line; 3] = [
        (copies("every device from the origin", &r.direct_origin), curve(&s.direct_origin_origin_gbps), DIRECT, 2),
        (copies("one plain cache per site", &r.plain_cache), curve(&s.plain_cache_origin_gbps), CACHE, 2),
        (copies("mesh", &r.mesh), curve(&s.mesh_origin_gbps), MESH, 2),
    ];
    draw_lines(&mut chart, lines, text)?;
    if text {
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    }
    Ok(())
}
