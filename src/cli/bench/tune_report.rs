//! What `edge-llm bench tune` writes: the markdown table with edge mode against its
//! targets, and the loss plot.

use crate::cli::tune::Mode;
use serde::Serialize;
use std::path::PathBuf;

/// One mode's measurements.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ModeResult {
    pub mode: &'static str,
    pub model: PathBuf,
    pub steps: u64,
    pub tokens: usize,
    pub step_ms: f64,
    pub tokens_per_s: f64,
    /// The GPU engine's memory plan for this mode (browser default limits).
    pub peak_gpu_bytes: u64,
    pub val_loss: Option<f64>,
    /// Voted (edge: max rule) or plain accuracy; None without evaluation.
    pub accuracy: Option<f64>,
    /// Edge: the deepest exit alone, and every exit.
    pub last_exit_accuracy: Option<f64>,
    pub exit_accuracies: Vec<(usize, f64)>,
    pub speedup_vs_vanilla: Option<f64>,
    pub memory_ratio_vs_vanilla: Option<f64>,
    /// Accuracy minus vanilla's, in percentage points (voted for edge).
    pub accuracy_vs_vanilla_points: Option<f64>,
    /// Prefix cache (windowed modes): rows served from it and rows computed.
    pub prefix_hits: u64,
    pub prefix_misses: u64,
    pub losses: Vec<f64>,
}

/// The report: `settings` (what was run, from [`super::tune`]) and the table.
pub(super) fn markdown(settings: &str, rs: &[ModeResult]) -> String {
    let opt = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map_or("–".into(), f);
    let mut s = settings.to_string();
    s += "| mode | ms/step | tokens/s | GPU MiB (plan) | val loss | accuracy | last exit | Δ accuracy | speedup | memory ratio |\n";
    s += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for r in rs {
        s += &format!(
            "| {} | {:.0} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |\n",
            r.mode,
            r.step_ms,
            r.tokens_per_s,
            r.peak_gpu_bytes as f64 / 1048576.0,
            opt(r.val_loss, &|v| format!("{v:.4}")),
            opt(r.accuracy, &|v| format!("{:.2} %", 100.0 * v)),
            opt(r.last_exit_accuracy, &|v| format!("{:.2} %", 100.0 * v)),
            opt(r.accuracy_vs_vanilla_points, &|v| format!("{v:+.2} pts")),
            opt(r.speedup_vs_vanilla, &|v| format!("{v:.2}×")),
            opt(r.memory_ratio_vs_vanilla, &|v| format!("{v:.2}×")),
        );
    }
    if let Some(edge) = rs.iter().find(|r| r.mode == Mode::Edge.name()) {
        s += &targets(edge);
    }
    for r in rs.iter().filter(|r| !r.exit_accuracies.is_empty()) {
        let per: Vec<String> = r
            .exit_accuracies
            .iter()
            .map(|(l, acc)| format!("after {l}: {:.2} %", 100.0 * acc))
            .collect();
        s += &format!("\n{} per exit: {}\n", r.mode, per.join(", "));
    }
    s
}

/// The project's goals for edge mode against vanilla tuning (issue 6, docs/bench-tune.md): at least
/// 4× faster per step, at least 5× less peak GPU memory, voted accuracy within 1 point.
const TARGET_SPEEDUP: f64 = 4.0;
const TARGET_MEMORY_RATIO: f64 = 5.0;
const TARGET_ACCURACY_POINTS: f64 = -1.0;

/// Edge mode against the goals: each measured figure, met or missed and by how much (nothing
/// without a vanilla run to compare with).
fn targets(edge: &ModeResult) -> String {
    let verdict = |measured: f64, goal: f64, show: &dyn Fn(f64) -> String| {
        if measured >= goal {
            format!("{} (met)", show(measured))
        } else {
            format!("{} (missed by {})", show(measured), show(goal - measured))
        }
    };
    let times = |v: f64| format!("{v:.2}×");
    let mut lines = Vec::new();
    if let Some(v) = edge.speedup_vs_vanilla {
        let met = verdict(v, TARGET_SPEEDUP, &times);
        lines.push(format!("speed ≥ {TARGET_SPEEDUP}× vanilla's: {met}"));
    }
    if let Some(v) = edge.memory_ratio_vs_vanilla {
        let met = verdict(v, TARGET_MEMORY_RATIO, &times);
        lines.push(format!(
            "peak GPU memory ≥ {TARGET_MEMORY_RATIO}× lower: {met}"
        ));
    }
    if let Some(v) = edge.accuracy_vs_vanilla_points {
        let met = verdict(v, TARGET_ACCURACY_POINTS, &|p| format!("{p:.2} points"));
        lines.push(format!("voted accuracy within 1 point of vanilla's: {met}"));
    }
    if lines.is_empty() {
        return String::new();
    }
    format!("\nTargets for edge: {}.\n", lines.join("; "))
}

/// Training loss per step (mean over 10-step windows) of every mode, one line each.
pub(super) fn loss_svg(rs: &[ModeResult]) -> String {
    const W: f64 = 720.0;
    const H: f64 = 400.0;
    const PAD: f64 = 50.0;
    const COLORS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
    let smooth = |v: &[f64]| -> Vec<f64> {
        v.chunks(10)
            .map(|c| c.iter().sum::<f64>() / c.len() as f64)
            .collect()
    };
    let series: Vec<Vec<f64>> = rs.iter().map(|r| smooth(&r.losses)).collect();
    let all = series.iter().flatten().copied().filter(|x| x.is_finite());
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let (lo, hi) = if lo < hi { (lo, hi) } else { (0.0, 1.0) };
    let n = series.iter().map(Vec::len).max().unwrap_or(1).max(2);
    let x = |i: usize| PAD + (W - 2.0 * PAD) * i as f64 / (n - 1) as f64;
    let y = |v: f64| H - PAD - (H - 2.0 * PAD) * (v - lo) / (hi - lo);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"{PAD}\" y=\"20\">training loss (mean of 10 steps) by \
         step: {lo:.3} … {hi:.3}</text>\n<line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" \
         stroke=\"black\"/>\n",
        H - PAD,
        W - PAD,
        H - PAD
    );
    for (k, (r, v)) in rs.iter().zip(&series).enumerate() {
        let c = COLORS[k % COLORS.len()];
        let pts: Vec<String> = v
            .iter()
            .enumerate()
            .map(|(i, &l)| format!("{:.1},{:.1}", x(i), y(l)))
            .collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>\n\
             <text x=\"{}\" y=\"{}\" fill=\"{c}\">{}</text>\n",
            pts.join(" "),
            W - PAD - 140.0,
            40.0 + 16.0 * k as f64,
            r.mode
        );
    }
    s += &format!(
        "<text x=\"{PAD}\" y=\"{}\">step 1</text><text x=\"{}\" y=\"{}\">step {}</text>\n</svg>\n",
        H - PAD + 16.0,
        W - PAD - 40.0,
        H - PAD + 16.0,
        rs.iter().map(|r| r.losses.len()).max().unwrap_or(0)
    );
    s
}
