//! The pictures of `sat-host saliency`: per sample the image, the map, the map over the
//! image, and the SAT-perturbed image `clip(x − ε·S)`, so a person can look at the
//! maps; and `gallery.json`, which lists them.
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
}
