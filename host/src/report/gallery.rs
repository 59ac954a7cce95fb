//! The pictures of `sat-host saliency`: per sample the image, the map, the map over the
//! image, and the SAT-perturbed image `clip(x − ε·S)`, so a person can look at the
//! maps; and `gallery.json`, which lists them. Also those of `sat-host attack`: per
//! sample the clean image, the amplified perturbation and the adversarial image, with
//! the true and predicted classes written above them.
mod font;

use anyhow::Context;
use image::{Rgb, RgbImage};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Cell magnification of the gallery pictures.
const ZOOM: u32 = 4;
/// Gap between cells, in pixels.
const GAP: u32 = 2;

/// The blue-white-red colour of a map value in `[−1, 1]`.
fn diverging(v: f32) -> [f32; 3] {
    let v = v.clamp(-1.0, 1.0);
    if v >= 0.0 {
        [1.0, 1.0 - v, 1.0 - v]
    } else {
        [1.0 + v, 1.0 + v, 1.0]
    }
}

/// One gallery: `rows` × 4 cells of side `size`·ZOOM.
fn render(images: &Tensor, maps: &Tensor, perturbed: &Tensor) -> RgbImage {
    let (n, h, w) = (images.size()[0], images.size()[2], images.size()[3]);
    let cell_w = w as u32 * ZOOM;
    let cell_h = h as u32 * ZOOM;
    let mut out = RgbImage::from_pixel(
        4 * cell_w + 5 * GAP,
        n as u32 * cell_h + (n as u32 + 1) * GAP,
        Rgb([255, 255, 255]),
    );
    let to_vec = |t: &Tensor| {
        Vec::<f32>::try_from(
            t.to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous()
                .view(-1),
        )
        .unwrap_or_default()
    };
    let img = to_vec(images);
    let pert = to_vec(perturbed);
    // Multi-channel maps are shown as their channel mean.
    let map = to_vec(&maps.mean_dim(&[1i64][..], true, Kind::Float));
    let plane = (h * w) as usize;
    for i in 0..n as usize {
        for y in 0..h as usize {
            for x in 0..w as usize {
                let p = y * w as usize + x;
                let rgb =
                    |src: &[f32]| [0, 1, 2].map(|c| src[(i * 3 + c) * plane + p].clamp(0.0, 1.0));
                let m = map[i * plane + p];
                let colour = diverging(m);
                let base = rgb(&img);
                let alpha = 0.6 * m.abs();
                let overlay = [0, 1, 2].map(|c| base[c] * (1.0 - alpha) + colour[c] * alpha);
                for (col, value) in [base, colour, overlay, rgb(&pert)].into_iter().enumerate() {
                    let px = Rgb(value.map(|v| (v * 255.0).round() as u8));
                    let x0 = GAP + col as u32 * (cell_w + GAP) + x as u32 * ZOOM;
                    let y0 = GAP + i as u32 * (cell_h + GAP) + y as u32 * ZOOM;
                    for dy in 0..ZOOM {
                        for dx in 0..ZOOM {
                            out.put_pixel(x0 + dx, y0 + dy, px);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Writes the gallery of `maps` over `images` with the perturbed images `perturbed` to
/// `file` (PNG, atomically).
pub fn write_png(
    file: &Path,
    images: &Tensor,
    maps: &Tensor,
    perturbed: &Tensor,
) -> anyhow::Result<()> {
    let mut png = std::io::Cursor::new(Vec::new());
    render(images, maps, perturbed)
        .write_to(&mut png, image::ImageFormat::Png)
        .with_context(|| format!("encoding {}", file.display()))?;
    super::write_atomic(file, png.get_ref()).with_context(|| format!("writing {}", file.display()))
}

/// What `gallery.json` says about one source's picture.
pub fn entry(source: &str, file: &Path, maps: &Tensor) -> serde_json::Value {
    serde_json::json!({
        "source": source,
        "file": file.file_name().map(|f| f.to_string_lossy().into_owned()),
        "map_min": maps.min().double_value(&[]),
        "map_max": maps.max().double_value(&[]),
        "map_channels": maps.size()[1],
    })
}

/// Writes `<out>/gallery.json`: the columns, the budget, the number of samples and the
/// `entries` of the sources.
pub fn write_listing(
    out: &Path,
    epsilon: f64,
    samples: i64,
    entries: Vec<serde_json::Value>,
) -> anyhow::Result<()> {
    let index = serde_json::json!({
        "columns": ["image", "map (blue -1, white 0, red +1)", "overlay", "perturbed x - eps*S"],
        "epsilon": epsilon,
        "samples": samples,
        "sources": entries,
    });
    let file = out.join("gallery.json");
    super::write_atomic(&file, serde_json::to_string_pretty(&index)?.as_bytes())
        .with_context(|| format!("writing {}", file.display()))
}

/// What the captions of one `sat-host attack` picture say: class names.
#[derive(Debug, Clone)]
pub struct AttackCaption {
    /// The true class.
    pub label: String,
    /// The class predicted on the clean image.
    pub predicted_clean: String,
    /// The class predicted on the adversarial image.
    pub predicted_adversarial: String,
    /// The target class of a targeted attack.
    pub target: Option<String>,
}

/// Lines of caption above each cell of an attack picture.
const CAPTION_LINES: u32 = 3;
/// Height of a caption line.
const LINE_H: u32 = font::GLYPH_H + 3;
/// Smallest cell width of an attack picture (images are magnified up to it), so that
/// a caption line holds about 20 characters.
const MIN_CELL: u32 = 128;

/// The factor `a` that shows a perturbation `δ` as `0.5 + a·δ`, filling `[0, 1]`:
/// `0.5 / max|δ|` (1 for a zero perturbation).
pub fn amplification(delta: &Tensor) -> f64 {
    let m = delta.abs().max().double_value(&[]);
    if m > 0.0 && m.is_finite() {
        0.5 / m
    } else {
        1.0
    }
}

/// The pixels of a `[C, H, W]` image as float32 on the CPU.
fn pixels(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(
        t.to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .view(-1),
    )
    .unwrap_or_default()
}

/// The caption lines of the three columns (clean, perturbation, adversarial), each
/// with whether it tells of a misclassification (drawn in red).
fn caption_lines(caption: &AttackCaption, factor: f64, linf: f64) -> [[(String, bool); 3]; 3] {
    let wrong = |p: &str| p != caption.label;
    [
        [
            ("clean".into(), false),
            (format!("true: {}", caption.label), false),
            (
                format!("pred: {}", caption.predicted_clean),
                wrong(&caption.predicted_clean),
            ),
        ],
        [
            ("perturbation".into(), false),
            (format!("0.5 + {factor:.1} * delta"), false),
            (format!("max |delta| {linf:.4}"), false),
        ],
        [
            ("adversarial".into(), false),
            (
                format!("pred: {}", caption.predicted_adversarial),
                wrong(&caption.predicted_adversarial),
            ),
            (
                caption
                    .target
                    .as_ref()
                    .map(|t| format!("target: {t}"))
                    .unwrap_or_default(),
                false,
            ),
        ],
    ]
}

/// One attack picture: captions over the clean image `[C, H, W]`, the perturbation
/// amplified by `factor` and the adversarial image.
fn render_attack(
    clean: &Tensor,
    adversarial: &Tensor,
    caption: &AttackCaption,
    factor: f64,
) -> RgbImage {
    let (c, h, w) = {
        let s = clean.size();
        (s[0] as usize, s[1] as usize, s[2] as usize)
    };
    let zoom = MIN_CELL.div_ceil(w as u32).max(1);
    let (cell_w, cell_h) = (w as u32 * zoom, h as u32 * zoom);
    let caption_h = CAPTION_LINES * LINE_H + GAP;
    let mut out = RgbImage::from_pixel(
        3 * cell_w + 4 * GAP,
        2 * GAP + caption_h + cell_h,
        Rgb([255, 255, 255]),
    );
    let delta = adversarial - clean;
    let linf = delta.abs().max().double_value(&[]);
    let shown = [
        pixels(clean),
        pixels(&(delta * factor + 0.5)),
        pixels(adversarial),
    ];
    let plane = h * w;
    let lines = caption_lines(caption, factor, linf);
    for (col, values) in shown.iter().enumerate() {
        let x_cell = GAP + col as u32 * (cell_w + GAP);
        for (k, (text, red)) in lines[col].iter().enumerate() {
            let colour = if *red {
                Rgb([200, 0, 0])
            } else {
                Rgb([0, 0, 0])
            };
            let max_chars = (cell_w / font::ADVANCE) as usize;
            font::draw_text(
                &mut out,
                x_cell,
                GAP + k as u32 * LINE_H,
                text,
                max_chars,
                colour,
            );
        }
        for p in 0..plane {
            // One channel is shown as grey; otherwise the first three are RGB.
            let rgb = [0, 1, 2].map(|ch| values[ch.min(c - 1) * plane + p].clamp(0.0, 1.0));
            let px = Rgb(rgb.map(|v| (v * 255.0).round() as u8));
            let (x0, y0) = (
                x_cell + (p % w) as u32 * zoom,
                GAP + caption_h + (p / w) as u32 * zoom,
            );
            for dy in 0..zoom {
                for dx in 0..zoom {
                    out.put_pixel(x0 + dx, y0 + dy, px);
                }
            }
        }
    }
    out
}

/// Writes `<dir>/NNNNN.png` for every image of `clean` and `adversarial` `[N, C, H, W]`
/// (clean | amplified perturbation | adversarial, captioned), and `<dir>/gallery.json`:
/// `header` plus, per image, its file, classes and amplification. Returns the pictures.
pub fn write_attack_gallery(
    dir: &Path,
    clean: &Tensor,
    adversarial: &Tensor,
    captions: &[AttackCaption],
    header: serde_json::Value,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();
    let mut entries = Vec::new();
    for (i, caption) in captions.iter().enumerate() {
        let (x, adv) = (clean.get(i as i64), adversarial.get(i as i64));
        let factor = amplification(&(&adv - &x));
        let file = dir.join(format!("{i:05}.png"));
        let mut png = std::io::Cursor::new(Vec::new());
        render_attack(&x, &adv, caption, factor)
            .write_to(&mut png, image::ImageFormat::Png)
            .with_context(|| format!("encoding {}", file.display()))?;
        super::write_atomic(&file, png.get_ref())
            .with_context(|| format!("writing {}", file.display()))?;
        entries.push(serde_json::json!({
            "file": file.file_name().map(|f| f.to_string_lossy().into_owned()),
            "index": i,
            "label": caption.label,
            "predicted_clean": caption.predicted_clean,
            "predicted_adversarial": caption.predicted_adversarial,
            "target": caption.target,
            "amplification": factor,
        }));
        files.push(file);
    }
    let mut index = header;
    index["columns"] = serde_json::json!([
        "clean",
        "perturbation 0.5 + amplification * (adversarial - clean)",
        "adversarial"
    ]);
    index["images"] = serde_json::Value::Array(entries);
    let listing = dir.join("gallery.json");
    super::write_atomic(&listing, serde_json::to_string_pretty(&index)?.as_bytes())
        .with_context(|| format!("writing {}", listing.display()))?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_colour_scale_is_blue_white_red() {
        assert_eq!(diverging(-1.0), [0.0, 0.0, 1.0]);
        assert_eq!(diverging(0.0), [1.0, 1.0, 1.0]);
        assert_eq!(diverging(1.0), [1.0, 0.0, 0.0]);
    }

    #[test]
    fn a_gallery_has_four_columns_and_a_row_per_sample() {
        let x = Tensor::rand([3, 3, 8, 8], (Kind::Float, Device::Cpu));
        let m = Tensor::ones([3, 1, 8, 8], (Kind::Float, Device::Cpu));
        let picture = render(&x, &m, &x);
        assert_eq!(picture.width(), 4 * 8 * ZOOM + 5 * GAP);
        assert_eq!(picture.height(), 3 * 8 * ZOOM + 4 * GAP);
        // The map column of a +1 map is pure red.
        let px = picture.get_pixel(GAP + 8 * ZOOM + GAP + 1, GAP + 1);
        assert_eq!(px.0, [255, 0, 0]);
    }

    #[test]
    fn an_attack_picture_shows_clean_perturbation_and_adversarial_under_captions() {
        let x = Tensor::full([3, 8, 8], 0.25, (Kind::Float, Device::Cpu));
        let adv = &x + 0.1;
        let caption = AttackCaption {
            label: "cat".into(),
            predicted_clean: "cat".into(),
            predicted_adversarial: "dog".into(),
            target: None,
        };
        let factor = amplification(&(&adv - &x));
        assert!((factor - 5.0).abs() < 1e-4, "{factor}");
        let picture = render_attack(&x, &adv, &caption, factor);
        // 8-pixel images are magnified 16 times, to 128-pixel cells.
        let caption_h = CAPTION_LINES * LINE_H + GAP;
        assert_eq!(picture.width(), 3 * 128 + 4 * GAP);
        assert_eq!(picture.height(), 2 * GAP + caption_h + 128);
        let y = GAP + caption_h + 64;
        let at = |col: u32| picture.get_pixel(GAP + col * (128 + GAP) + 64, y).0;
        assert_eq!(at(0), [64; 3]);
        // 0.5 + 5 · 0.1 = 1: the amplified perturbation fills the range.
        assert_eq!(at(1), [255; 3]);
        assert_eq!(at(2), [89; 3]);
        // The adversarial prediction differs from the label: its line is red.
        let red = (0..picture.width())
            .flat_map(|x| (0..caption_h).map(move |y| (x, y)))
            .filter(|&(x, y)| picture.get_pixel(x, y).0 == [200, 0, 0])
            .map(|(x, _)| x)
            .collect::<Vec<_>>();
        assert!(!red.is_empty());
        assert!(
            red.iter().all(|&x| x >= GAP + 2 * (128 + GAP)),
            "only in the adversarial column"
        );
    }

    #[test]
    fn a_zero_perturbation_is_not_amplified() {
        let d = Tensor::zeros([3, 4, 4], (Kind::Float, Device::Cpu));
        assert_eq!(amplification(&d), 1.0);
    }
}
