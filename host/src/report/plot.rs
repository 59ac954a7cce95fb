//! `robust_curve.svg`: robust accuracy against ε, one line per attack, clean accuracy at
//! ε = 0; and the overlay of several runs' curves (`sat-host compare --svg`). Plain SVG
//! so any browser shows it and nothing needs a plotting library.
use super::RobustAccuracy;
use std::collections::BTreeMap;
use std::fmt::Write;

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];
/// Dash patterns of the attacks in [`compare_svg`] (the first is a solid line).
const DASHES: [&str; 5] = ["", "6 3", "2 3", "8 3 2 3", "12 4"];
/// Vertical spacing of legend entries.
const LEGEND_STEP: f64 = 16.0;

/// Plot coordinates of ε (×1/255) and accuracy, for ε up to `max_eps`.
#[derive(Clone, Copy)]
struct Scale {
    max_eps: f64,
}

impl Scale {
    fn x(self, eps255: f64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * eps255 / self.max_eps
    }
    fn y(self, acc: f64) -> f64 {
        TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - acc.clamp(0.0, 1.0))
    }
}

/// The SVG text of the plot.
pub fn robust_curve_svg(title: &str, clean: Option<f64>, robust: &[RobustAccuracy]) -> String {
    let scale = Scale {
        max_eps: max_eps255(robust),
    };
    let mut svg = header(title, HEIGHT);
    axes(&mut svg, scale);
    for (i, (label, points)) in attack_lines(clean, robust).into_iter().enumerate() {
        line(&mut svg, scale, i, &label, &points);
    }
    svg.push_str("</svg>\n");
    svg
}

/// One run's curves in [`compare_svg`].
#[derive(Debug, Clone, Copy)]
pub struct RunCurve<'a> {
    /// The run's name in the legend.
    pub name: &'a str,
    /// Its clean accuracy (the point at ε = 0 of each of its lines), if known.
    pub clean: Option<f64>,
    /// Its robust accuracies.
    pub robust: &'a [RobustAccuracy],
}

/// The SVG text of several runs' robust-accuracy curves on one plot: a colour per run
/// (in the order given), a dash pattern per attack and norm (sorted by name), one
/// `<polyline>` per run and attack it was evaluated with, and a legend of both.
pub fn compare_svg(title: &str, runs: &[RunCurve<'_>]) -> String {
    let all: Vec<RobustAccuracy> = runs.iter().flat_map(|r| r.robust.iter().cloned()).collect();
    let scale = Scale {
        max_eps: max_eps255(&all),
    };
    let styles: Vec<String> = attack_lines(None, &all).into_keys().collect();
    let entries = runs.len() + styles.len();
    let height = HEIGHT.max(TOP + LEGEND_STEP * entries as f64 + BOTTOM);
    let mut svg = header(title, height);
    axes(&mut svg, scale);
    for (i, run) in runs.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        for (label, points) in attack_lines(run.clean, run.robust) {
            let style = styles.iter().position(|s| *s == label).unwrap_or(0);
            curve(
                &mut svg,
                scale,
                colour,
                DASHES[style % DASHES.len()],
                &points,
            );
        }
        legend_entry(&mut svg, i, colour, "", run.name);
    }
    for (j, label) in styles.iter().enumerate() {
        let dash = DASHES[j % DASHES.len()];
        legend_entry(&mut svg, runs.len() + j, "#555", dash, label);
    }
    svg.push_str("</svg>\n");
    svg
}

/// The largest finite ε of `robust`, ×255, and at least 1.
fn max_eps255(robust: &[RobustAccuracy]) -> f64 {
    robust
        .iter()
        .map(|r| r.epsilon * 255.0)
        .filter(|e| e.is_finite())
        .fold(1.0f64, f64::max)
}

/// The opening of an SVG of `height` with a white background and `title`.
fn header(title: &str, height: f64) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="18" font-size="14">{}</text>"#,
        escape(title)
    );
    svg
}

/// One line per attack and norm (`"pgd (linf)"`, sorted), through (ε ×1/255, accuracy)
/// sorted by ε, starting at the clean accuracy at ε = 0 when given.
fn attack_lines(
    clean: Option<f64>,
    robust: &[RobustAccuracy],
) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut lines: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in robust {
        lines
            .entry(format!("{} ({})", r.attack, r.norm))
            .or_default()
            .push((r.epsilon * 255.0, r.accuracy));
    }
    for points in lines.values_mut() {
        if let Some(c) = clean {
            points.push((0.0, c));
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    lines
}

/// Grid, ticks and axis labels.
fn axes(svg: &mut String, scale: Scale) {
    for i in 0..=5 {
        let acc = i as f64 / 5.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{acc:.1}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            scale.y(acc) + 4.0,
            y = scale.y(acc)
        );
    }
    // At most 11 ticks whatever the budgets: a step of 1, 2 or 5 times a power of ten.
    let step = tick_step(scale.max_eps);
    let ticks = (scale.max_eps / step).floor().clamp(0.0, 10.0) as u32;
    for i in 0..=ticks {
        let t = i as f64 * step;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{t}</text>"#,
            scale.x(t),
            HEIGHT - BOTTOM + 16.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">ε (×1/255)</text><text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">accuracy</text>"#,
        scale.x(scale.max_eps / 2.0),
        HEIGHT - 10.0,
        scale.y(0.5)
    );
}

/// The spacing of at most 10 ticks up to `max` (1, 2 or 5 times a power of ten).
fn tick_step(max: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let raw = max / 10.0;
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * power)
        .max(1.0)
}

/// The `i`-th line, through `points` (ε ×1/255, accuracy), with its legend entry.
fn line(svg: &mut String, scale: Scale, i: usize, label: &str, points: &[(f64, f64)]) {
    let colour = COLOURS[i % COLOURS.len()];
    curve(svg, scale, colour, "", points);
    legend_entry(svg, i, colour, "", label);
}

/// A polyline through `points` (ε ×1/255, accuracy) in `colour` and `dash` (an SVG
/// `stroke-dasharray`, empty for a solid line), with a dot at each point.
fn curve(svg: &mut String, scale: Scale, colour: &str, dash: &str, points: &[(f64, f64)]) {
    let coords: Vec<String> = points
        .iter()
        .map(|&(e, a)| format!("{:.1},{:.1}", scale.x(e), scale.y(a)))
        .collect();
    let _ = writeln!(
        svg,
        r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{} points="{}"/>"#,
        dash_attr(dash),
        coords.join(" ")
    );
    for &(e, a) in points {
        let _ = writeln!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
            scale.x(e),
            scale.y(a)
        );
    }
}

/// The `i`-th legend entry: a short line in `colour` and `dash`, and `label`.
fn legend_entry(svg: &mut String, i: usize, colour: &str, dash: &str, label: &str) {
    let ly = TOP + LEGEND_STEP * i as f64;
    let _ = writeln!(
        svg,
        r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2"{}/><text x="{}" y="{}">{}</text>"#,
        WIDTH - RIGHT + 10.0,
        WIDTH - RIGHT + 30.0,
        dash_attr(dash),
        WIDTH - RIGHT + 35.0,
        ly + 4.0,
        escape(label)
    );
}

/// The ` stroke-dasharray` attribute of `dash`, or nothing for a solid line.
fn dash_attr(dash: &str) -> String {
    if dash.is_empty() {
        String::new()
    } else {
        format!(r#" stroke-dasharray="{dash}""#)
    }
}

/// `text` as XML character data or an attribute value.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_polyline_per_attack_with_the_clean_point() {
        let r = |attack: &str, eps: f64, acc: f64| RobustAccuracy {
            attack: attack.into(),
            norm: "linf".into(),
            epsilon: eps / 255.0,
            steps: 10,
            accuracy: acc,
            ..Default::default()
        };
        let svg = robust_curve_svg(
            "run <a>",
            Some(0.9),
            &[r("pgd", 2.0, 0.5), r("pgd", 8.0, 0.1), r("fgsm", 8.0, 0.3)],
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(
            svg.matches("<circle").count(),
            5,
            "2 + 1 points and the clean point per line"
        );
        assert!(svg.contains("run &lt;a&gt;"));
        // Accuracy 1.0 maps to the top, 0.0 to the bottom of the plot area.
        let x0 = LEFT;
        assert!(
            svg.contains(&format!(
                "{x0:.1},{:.1}",
                TOP + (HEIGHT - TOP - BOTTOM) * 0.1
            )),
            "{svg}"
        );
    }

    #[test]
    fn compare_draws_a_polyline_per_run_and_attack_with_a_colour_per_run() {
        let r = |attack: &str, eps: f64, acc: f64| RobustAccuracy {
            attack: attack.into(),
            norm: "linf".into(),
            epsilon: eps / 255.0,
            steps: 10,
            accuracy: acc,
            ..Default::default()
        };
        let a = [r("pgd", 2.0, 0.5), r("pgd", 8.0, 0.1), r("fgsm", 8.0, 0.3)];
        let b = [r("pgd", 4.0, 0.7)];
        let svg = compare_svg(
            "t",
            &[
                RunCurve {
                    name: "run \"a\" & co",
                    clean: Some(0.9),
                    robust: &a,
                },
                RunCurve {
                    name: "b",
                    clean: None,
                    robust: &b,
                },
            ],
        );
        assert_eq!(svg.matches("<polyline").count(), 3, "{svg}");
        assert!(svg.contains("run &quot;a&quot; &amp; co") && svg.contains(">b</text>"));
        assert!(svg.contains(">fgsm (linf)</text>") && svg.contains(">pgd (linf)</text>"));
        // Run b's one line is in the second colour, dashed as pgd (the second style:
        // fgsm sorts first); run a's pgd line has the same dashes in the first colour.
        let dashed = format!(
            r#"stroke="{}" stroke-width="2" stroke-dasharray="{}" points"#,
            COLOURS[1], DASHES[1]
        );
        assert_eq!(svg.matches(&dashed).count(), 1, "{svg}");
        let a_pgd = format!(
            r#"stroke="{}" stroke-width="2" stroke-dasharray="{}" points"#,
            COLOURS[0], DASHES[1]
        );
        assert_eq!(svg.matches(&a_pgd).count(), 1, "{svg}");
        // The ε axis runs to the largest budget of any run (8/255).
        assert!(svg.contains(&format!("{:.1},", WIDTH - RIGHT)), "{svg}");
    }

    #[test]
    fn any_budget_makes_a_small_plot() {
        for eps in [
            1e30,
            f64::MAX,
            f64::INFINITY,
            f64::NAN,
            8.0,
            8.0 / 255.0,
            0.0,
        ] {
            let r = RobustAccuracy {
                attack: "pgd".into(),
                norm: "linf".into(),
                epsilon: eps,
                steps: 1,
                accuracy: 0.5,
                ..Default::default()
            };
            let svg = robust_curve_svg("t", Some(0.9), &[r]);
            assert!(svg.len() < 20_000, "{eps}: {} bytes", svg.len());
        }
    }
}
