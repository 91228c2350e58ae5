//! How a [`Profile`] is shown: `edge-llm profile`'s table and the per-block plot.

use super::profile::{ErrorSource, Profile, FISHER_SPARSITIES, SPARSITIES};
use crate::formats::quant::BITS;

impl Profile {
    /// A plain-text table: one line per block.
    pub fn table(&self) -> String {
        let mut s = String::from("layer");
        for p in &self.sparsities {
            s += &format!(" {:>9}", format!("p{:.0}%", p * 100.0));
        }
        for b in &self.bits {
            s += &format!(" {:>9}", format!("q{b}"));
        }
        s += &format!(" {:>9} {:>9}", "S_prune", "S_quant");
        if self.base_loss.is_some() {
            s += &format!(" {:>9} {:>9}", "dL_p50%", "dL_q4");
        }
        if self.has_fisher() {
            s += &format!(" {:>9} {:>9}", "F_p50%", "F_q4");
        }
        s.push('\n');
        let (ps, qs) = (self.prune_sensitivity(), self.quant_sensitivity());
        let i50 = SPARSITIES.iter().position(|&p| p == 0.5).unwrap_or(0);
        let i4 = BITS.iter().position(|&b| b == 4).unwrap_or(0);
        for (l, lp) in self.layers.iter().enumerate() {
            s += &format!("{l:>5}");
            for v in lp.prune_mse.iter().chain(&lp.quant_mse) {
                s += &format!(" {v:>9.2e}");
            }
            s += &format!(" {:>9.2e} {:>9.2e}", ps[l], qs[l]);
            if let (Some(a), Some(b)) = (lp.prune_dloss.get(i50), lp.quant_dloss.get(i4)) {
                s += &format!(" {a:>+9.4} {b:>+9.4}");
            }
            let f50 = FISHER_SPARSITIES
                .iter()
                .position(|&p| p == 0.5)
                .unwrap_or(0);
            if let (Some(a), Some(b)) = (lp.prune_fisher.get(f50), lp.quant_fisher.get(i4)) {
                s += &format!(" {a:>9.2e} {b:>9.2e}");
            }
            s.push('\n');
        }
        s
    }

    /// A hand-written SVG: per-block error (log scale) at every level, one polyline per
    /// sparsity (left panel) and per width (right panel); the error is what the policies
    /// read ([`Self::error_source`]).
    pub fn to_svg(&self) -> String {
        let (w, h, pad) = (420.0f64, 300.0f64, 50.0f64);
        let nl = self.layers.len().max(1);
        let prune: Vec<Vec<f64>> = self.layers.iter().map(|l| self.prune_levels(l)).collect();
        let quant: Vec<&[f64]> = self.layers.iter().map(|l| self.quant_source(l)).collect();
        let what = match self.error_source() {
            ErrorSource::Fisher => "estimated loss change (Fisher)",
            ErrorSource::Dloss => "measured loss change",
            ErrorSource::Mse => "output MSE",
        };
        let all: Vec<f64> = prune
            .iter()
            .flatten()
            .chain(quant.iter().copied().flatten())
            .copied()
            .filter(|v| *v > 0.0)
            .collect();
        let lo = all
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .log10()
            .floor();
        let hi = all
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
            .log10()
            .ceil();
        let (lo, hi) = if lo.is_finite() && hi > lo {
            (lo, hi)
        } else {
            (-12.0, 0.0)
        };
        let floor = 10f64.powf(lo);
        let x_of = |l: usize, x0: f64| {
            x0 + pad + (w - 2.0 * pad) * l as f64 / (nl.saturating_sub(1).max(1)) as f64
        };
        let y_of = |v: f64| {
            let t = (v.max(floor).log10() - lo) / (hi - lo);
            h - pad - (h - 2.0 * pad) * t
        };
        let color =
            |i: usize, n: usize| format!("hsl({:.0},70%,45%)", 240.0 * i as f64 / n.max(2) as f64);
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{h}\" \
             font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
            2.0 * w
        );
        let panels: [(String, f64, Series); 2] = [
            (
                format!("pruning: {what}"),
                0.0,
                self.sparsities
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        (
                            format!("{:.0}%", p * 100.0),
                            prune
                                .iter()
                                .map(|l| l.get(i).copied().unwrap_or(0.0))
                                .collect(),
                        )
                    })
                    .collect(),
            ),
            (
                format!("quantization: {what}"),
                w,
                self.bits
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        (
                            format!("{b}-bit"),
                            quant
                                .iter()
                                .map(|l| l.get(i).copied().unwrap_or(0.0))
                                .collect(),
                        )
                    })
                    .collect(),
            ),
        ];
        for (title, x0, series) in &panels {
            let x0 = *x0;
            s += &format!(
                "<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"13\">{title}</text>\n",
                x0 + w / 2.0
            );
            s += &format!(
                "<line x1=\"{a}\" y1=\"{b}\" x2=\"{c}\" y2=\"{b}\" stroke=\"black\"/>\
                 <line x1=\"{a}\" y1=\"{pad}\" x2=\"{a}\" y2=\"{b}\" stroke=\"black\"/>\n",
                a = x0 + pad,
                b = h - pad,
                c = x0 + w - pad
            );
            let mut e = lo;
            while e <= hi {
                let y = y_of(10f64.powf(e));
                s += &format!(
                    "<line x1=\"{}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
                     <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">1e{e}</text>\n",
                    x0 + pad,
                    x0 + w - pad,
                    x0 + pad - 4.0,
                    y + 4.0
                );
                e += ((hi - lo) / 6.0).ceil().max(1.0);
            }
            for l in [0, nl - 1] {
                s += &format!(
                    "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{l}</text>\n",
                    x_of(l, x0),
                    h - pad + 14.0
                );
            }
            s += &format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">layer</text>\n",
                x0 + w / 2.0,
                h - pad + 28.0
            );
            for (i, (name, ys)) in series.iter().enumerate() {
                let pts: Vec<String> = ys
                    .iter()
                    .enumerate()
                    .map(|(l, &v)| format!("{:.1},{:.1}", x_of(l, x0), y_of(v)))
                    .collect();
                let col = color(i, series.len());
                s += &format!(
                    "<polyline fill=\"none\" stroke=\"{col}\" stroke-width=\"1.5\" points=\"{}\"/>\n\
                     <text x=\"{}\" y=\"{}\" fill=\"{col}\">{name}</text>\n",
                    pts.join(" "),
                    x0 + w - pad + 4.0,
                    pad + 12.0 * i as f64
                );
            }
        }
        s += "</svg>\n";
        s
    }
}

/// Named polylines of a plot panel.
type Series = Vec<(String, Vec<f64>)>;
