//! `robust_curve.svg`: robust accuracy against ε, one line per attack, clean accuracy at
//! ε = 0; and the overlay of several runs' curves (`sat-host compare --svg`). Plain SVG
//! so any browser shows it and nothing needs a plotting library. Budgets are shown as
//! people write them for their norm ([`budget`]): ℓ∞ in 1/255 levels (`8/255`), others
//! as plain numbers (`0.5`). The picture widens to fit its legend and title.
use super::RobustAccuracy;
use sat_core::Epsilon;
use std::collections::BTreeMap;
use std::fmt::Write;

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;
/// The font size of the labels and legend.
const FONT_SIZE: f64 = 12.0;
/// The font size of the title.
const TITLE_SIZE: f64 = 14.0;
/// Where legend text starts, right of the plot area.
const LEGEND_TEXT: f64 = 35.0;
/// The blank margin right of the longest legend entry or the title.
const MARGIN: f64 = 10.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];
/// Dash patterns of the attacks in [`compare_svg`] (the first is a solid line).
const DASHES: [&str; 5] = ["", "6 3", "2 3", "8 3 2 3", "12 4"];
/// Vertical spacing of legend entries.
const LEGEND_STEP: f64 = 16.0;

/// A budget as people write it for `norm`: an ℓ∞ budget in 1/255 levels where it is one
/// (`8/255`, [`Epsilon::shown`]); any other norm's (ℓ2, ℓ1) as a plain number (`0.5`).
pub fn budget(epsilon: f64, norm: &str) -> String {
    let as_written = if norm == "linf" { "linf" } else { "l2" };
    Epsilon(epsilon).shown(as_written)
}

/// An estimate of the width of `text` in pixels at `font_size`, at least what a wide
/// sans-serif face (DejaVu Sans, Verdana) takes, so text sized by it is never clipped:
/// per character, a width by its class (narrow `i l . /`, medium `f t r -`, most
/// lowercase and digits, capitals, the widest `m w M W @ %`), a full em for any
/// non-ASCII character.
pub fn text_width(text: &str, font_size: f64) -> f64 {
    let em: f64 =
        text.chars()
            .map(|c| match c {
                '\'' | 'i' | 'j' | 'l' | 'I' | 'J' | ',' | '.' | ' ' | '/' | ':' | ';' | '\\'
                | '|' => 0.34,
                'f' | '-' | '(' | ')' | '[' | ']' | 't' | '!' | 'r' => 0.42,
                'm' | 'M' | 'W' | '@' | '%' => 1.0,
                'w' | '#' | '+' | '<' | '=' | '>' | '^' | '~' => 0.85,
                'A'..='Z' | '&' => 0.8,
                c if c.is_ascii() => 0.64,
                _ => 1.0,
            })
            .sum();
    em * font_size
}

/// The width of a picture whose legend holds `labels` and whose title is `title`: the
/// standard width, or more where the text would not fit.
fn picture_width<'a>(title: &str, labels: impl IntoIterator<Item = &'a str>) -> f64 {
    let legend = labels
        .into_iter()
        .map(|l| text_width(l, FONT_SIZE))
        .fold(0.0, f64::max);
    let title = LEFT + text_width(title, TITLE_SIZE) + MARGIN;
    WIDTH
        .max(WIDTH - RIGHT + LEGEND_TEXT + legend + MARGIN)
        .max(title)
}

/// The ε axis: in 1/255 levels when every budget plotted is ℓ∞, else in plain numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Unit {
    /// ℓ∞ budgets, ticks as `k/255`.
    Levels,
    /// Plain numbers, with the norm when all budgets share one (`"l2"`).
    Plain(Option<&'static str>),
}

impl Unit {
    /// The unit of the budgets of `robust`.
    fn of(robust: &[RobustAccuracy]) -> Self {
        let norm = |n: &str| match n {
            "l2" => Some("ℓ2"),
            "l1" => Some("ℓ1"),
            _ => None,
        };
        if robust.iter().all(|r| r.norm == "linf") {
            Unit::Levels
        } else if robust.iter().all(|r| r.norm == robust[0].norm) {
            Unit::Plain(norm(&robust[0].norm))
        } else {
            Unit::Plain(None)
        }
    }

    /// ε on this axis.
    fn value(self, epsilon: f64) -> f64 {
        match self {
            Unit::Levels => epsilon * 255.0,
            Unit::Plain(_) => epsilon,
        }
    }

    /// The tick at `t` on this axis, spaced `step`, as a budget is written.
    fn tick(self, t: f64, step: f64) -> String {
        if t == 0.0 {
            return "0".into();
        }
        match self {
            Unit::Levels => budget(t / 255.0, "linf"),
            Unit::Plain(_) => {
                // Rounded to the step's decimals: 0.3, not 0.30000000000000004.
                let decimals = (-step.log10().floor()).clamp(0.0, 15.0) as i32;
                let scale = 10f64.powi(decimals);
                budget((t * scale).round() / scale, "l2")
            }
        }
    }

    /// The axis title.
    fn title(self) -> String {
        match self {
            Unit::Levels => "ε (ℓ∞)".into(),
            Unit::Plain(Some(norm)) => format!("ε ({norm})"),
            Unit::Plain(None) => "ε".into(),
        }
    }
}

/// Plot coordinates of ε and accuracy, for ε up to `max` (in the axis's unit).
#[derive(Clone, Copy)]
struct Scale {
    unit: Unit,
    max: f64,
}

impl Scale {
    /// The scale of the budgets of `robust`.
    fn of(robust: &[RobustAccuracy]) -> Self {
        let unit = Unit::of(robust);
        let largest = robust
            .iter()
            .map(|r| unit.value(r.epsilon))
            .filter(|e| e.is_finite())
            .fold(0.0f64, f64::max);
        let max = match unit {
            // Whole levels: at least one.
            Unit::Levels => largest.max(1.0),
            Unit::Plain(_) if largest > 0.0 => largest,
            Unit::Plain(_) => 1.0,
        };
        Self { unit, max }
    }
    /// The x coordinate of budget `epsilon`.
    fn x(self, epsilon: f64) -> f64 {
        self.x_axis(self.unit.value(epsilon))
    }
    /// The x coordinate of `t` in the axis's unit.
    fn x_axis(self, t: f64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * t / self.max
    }
    fn y(self, acc: f64) -> f64 {
        TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - acc.clamp(0.0, 1.0))
    }
}

/// The SVG text of the plot.
pub fn robust_curve_svg(title: &str, clean: Option<f64>, robust: &[RobustAccuracy]) -> String {
    let scale = Scale::of(robust);
    let lines = attack_lines(clean, robust);
    let width = picture_width(title, lines.keys().map(String::as_str));
    let mut svg = header(title, width, HEIGHT);
    axes(&mut svg, scale);
    for (i, (label, points)) in lines.into_iter().enumerate() {
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
    let scale = Scale::of(&all);
    let styles: Vec<String> = attack_lines(None, &all).into_keys().collect();
    let entries = runs.len() + styles.len();
    let height = HEIGHT.max(TOP + LEGEND_STEP * entries as f64 + BOTTOM);
    let labels = runs
        .iter()
        .map(|r| r.name)
        .chain(styles.iter().map(String::as_str));
    let mut svg = header(title, picture_width(title, labels), height);
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

/// The opening of an SVG of `width` × `height` with a white background and `title`.
fn header(title: &str, width: f64, height: f64) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="{FONT_SIZE}">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="18" font-size="{TITLE_SIZE}">{}</text>"#,
        escape(title)
    );
    svg
}

/// One line per attack and norm (`"pgd (linf)"`, sorted), through (ε, accuracy) sorted
/// by ε, starting at the clean accuracy at ε = 0 when given.
fn attack_lines(
    clean: Option<f64>,
    robust: &[RobustAccuracy],
) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut lines: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in robust {
        lines
            .entry(format!("{} ({})", r.attack, r.norm))
            .or_default()
            .push((r.epsilon, r.accuracy));
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
    // At most 7 ticks whatever the budgets: a step of 1, 2 or 5 times a power of ten.
    let step = tick_step(scale.max, scale.unit == Unit::Levels);
    // (A hair over the quotient: 8 levels are 4 steps of 2 even as 7.999…)
    let ticks = (scale.max / step * (1.0 + 1e-9)).floor().clamp(0.0, 10.0) as u32;
    for i in 0..=ticks {
        let t = i as f64 * step;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            scale.x_axis(t),
            HEIGHT - BOTTOM + 16.0,
            escape(&scale.unit.tick(t, step))
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text><text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">accuracy</text>"#,
        scale.x_axis(scale.max / 2.0),
        HEIGHT - 10.0,
        scale.unit.title(),
        scale.y(0.5)
    );
}

/// The spacing of at most 6 ticks up to `max` (1, 2 or 5 times a power of ten; at least
/// 1 with `whole`), so that labels such as `16/255` do not overlap.
fn tick_step(max: f64, whole: bool) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let raw = max / 6.0;
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * power);
    if whole {
        step.max(1.0)
    } else {
        step
    }
}

/// The `i`-th line, through `points` (ε, accuracy), with its legend entry.
fn line(svg: &mut String, scale: Scale, i: usize, label: &str, points: &[(f64, f64)]) {
    let colour = COLOURS[i % COLOURS.len()];
    curve(svg, scale, colour, "", points);
    legend_entry(svg, i, colour, "", label);
}

/// A polyline through `points` (ε, accuracy) in `colour` and `dash` (an SVG
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
        WIDTH - RIGHT + LEGEND_TEXT,
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

    /// The `width` attribute of an SVG.
    fn svg_width(svg: &str) -> f64 {
        let rest = &svg[svg.find(" width=\"").unwrap() + 8..];
        rest[..rest.find('"').unwrap()].parse().unwrap()
    }

    #[test]
    fn text_width_covers_a_wide_face() {
        // DejaVu Sans at 12 px, as measured by its font metrics (Pillow's getlength).
        for (text, dejavu) in [
            ("quickstart-standard", 117.61),
            ("quickstart-sat-masks", 125.52),
            ("WWW mmm @@@", 114.29),
            ("SAT (masks) + PGD, λ=1", 150.0),
            ("abcdefghijklmnopqrstuvwxyz0123456789", 252.1),
            ("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 209.66),
        ] {
            let estimate = text_width(text, 12.0);
            assert!(
                estimate >= dejavu && estimate <= 1.25 * dejavu,
                "{text}: {estimate} for {dejavu}"
            );
        }
        // The fixed legend column had room for 115 px: the quickstart's names did not fit.
        assert!(text_width("quickstart-standard", FONT_SIZE) > RIGHT - LEGEND_TEXT);
    }

    #[test]
    fn the_legend_and_title_fit_inside_the_picture() {
        let r = RobustAccuracy {
            attack: "autoattack-with-a-long-name".into(),
            norm: "linf".into(),
            epsilon: 8.0 / 255.0,
            steps: 10,
            accuracy: 0.4,
            ..Default::default()
        };
        let long = "a-run-with-a-much-longer-name-than-the-legend-column-holds";
        let names = ["quickstart-standard", "quickstart-sat-masks", long];
        let curves: Vec<RunCurve<'_>> = names
            .iter()
            .map(|name| RunCurve {
                name,
                clean: Some(0.9),
                robust: std::slice::from_ref(&r),
            })
            .collect();
        let title = "robust accuracy against ε";
        for (svg, labels) in [
            (compare_svg(title, &curves[..2]), &names[..2]),
            (compare_svg(title, &curves), &names[..]),
        ] {
            let width = svg_width(&svg);
            for label in labels
                .iter()
                .copied()
                .chain(["autoattack-with-a-long-name (linf)"])
            {
                assert!(svg.contains(&format!(">{label}</text>")), "{svg}");
                let right = WIDTH - RIGHT + LEGEND_TEXT + text_width(label, FONT_SIZE);
                assert!(
                    right + MARGIN <= width,
                    "{label}: ends at {right}, width {width}"
                );
            }
        }
        // Short labels keep the standard width; a long title widens the picture too.
        let short = compare_svg("t", &curves[..0]);
        assert_eq!(svg_width(&short), WIDTH);
        let title = "x".repeat(80);
        let svg = robust_curve_svg(&title, Some(0.9), std::slice::from_ref(&r));
        assert!(svg_width(&svg) >= LEFT + text_width(&title, TITLE_SIZE));
        // The plot area stays where it was: ε's largest budget at its right edge.
        assert!(svg.contains(&format!("{:.1},", WIDTH - RIGHT)), "{svg}");
    }

    #[test]
    fn budgets_are_written_as_for_their_norm() {
        assert_eq!(budget(8.0 / 255.0, "linf"), "8/255");
        assert_eq!(budget(0.5, "l2"), "0.5");
        assert_eq!(budget(0.5, "l1"), "0.5");
        // An ℓ2 budget that happens to be a whole number of levels stays a number.
        assert_eq!(budget(128.0 / 255.0, "l2"), (128.0f64 / 255.0).to_string());
        assert_eq!(budget(51.0 / 255.0, "l1"), "0.2");
        assert_eq!(Unit::Plain(None).tick(3.0 * 0.1, 0.1), "0.3");
        assert_eq!(Unit::Plain(None).tick(0.0, 0.1), "0");
        assert_eq!(Unit::Levels.tick(4.0, 2.0), "4/255");
    }

    #[test]
    fn an_l2_axis_shows_plain_budgets() {
        let r = |norm: &str, eps: f64, acc: f64| RobustAccuracy {
            attack: "pgd".into(),
            norm: norm.into(),
            epsilon: eps,
            steps: 10,
            accuracy: acc,
            ..Default::default()
        };
        let svg = robust_curve_svg("t", Some(0.9), &[r("l2", 0.25, 0.6), r("l2", 0.5, 0.4)]);
        for tick in ["0", "0.1", "0.2", "0.3", "0.4", "0.5"] {
            assert!(
                svg.contains(&format!(r#"text-anchor="middle">{tick}</text>"#)),
                "{tick}: {svg}"
            );
        }
        assert!(
            !svg.contains("/255") && svg.contains(">ε (ℓ2)</text>"),
            "{svg}"
        );
        // ε = 0.5 is the right edge of the plot area, not 127.5 levels.
        assert!(
            svg.contains(&format!(r#"<circle cx="{:.1}""#, WIDTH - RIGHT)),
            "{svg}"
        );
        // ℓ∞ budgets: ticks in levels, up to the largest.
        let svg = robust_curve_svg("t", None, &[r("linf", 8.0 / 255.0, 0.4)]);
        for tick in ["0", "2/255", "4/255", "6/255", "8/255"] {
            assert!(
                svg.contains(&format!(r#"text-anchor="middle">{tick}</text>"#)),
                "{tick}: {svg}"
            );
        }
        assert!(svg.contains(">ε (ℓ∞)</text>"), "{svg}");
        // Both norms: one plain axis, named without a norm.
        let svg = compare_svg(
            "t",
            &[RunCurve {
                name: "a",
                clean: None,
                robust: &[r("linf", 8.0 / 255.0, 0.4), r("l2", 1.0, 0.3)],
            }],
        );
        assert!(!svg.contains("/255") && svg.contains(">ε</text>"), "{svg}");
        assert!(svg.contains(r#"text-anchor="middle">1</text>"#), "{svg}");
    }
}
