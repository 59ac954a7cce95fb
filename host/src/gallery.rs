//! `sat-host saliency`: a PNG gallery of what each saliency source produces — per
//! sample the image, the map, the map over the image, and the SAT-perturbed image
//! `clip(x − ε·S)` — so a person can look at the maps.
use crate::config::RunConfig;
use crate::data::Dataset;
use crate::oracle::ModelOracle;
use crate::pipeline::create_saliency;
use crate::registry::Registry;
use anyhow::Context;
use image::{Rgb, RgbImage};
use sat_core::{OracleAdapter, Phase};
use std::path::{Path, PathBuf};
use tch::{nn::ModuleT, Device, Kind, Tensor};

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

/// Writes `<out>/<source>.png` for every source in `sources` on `samples` test images
/// spread over `test`, and `<out>/gallery.json` listing them. Returns the files.
#[allow(clippy::too_many_arguments)]
pub fn write(
    config: &RunConfig,
    registry: &Registry,
    model: &dyn ModuleT,
    test: &Dataset,
    sources: &[String],
    samples: i64,
    epsilon: f64,
    out: &Path,
    device: Device,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let n = samples.clamp(1, test.len());
    let index = test.spread_batches(n as usize, n as usize).remove(0);
    let data = test.select(&index).to(device);
    let adapter = OracleAdapter(ModelOracle {
        model,
        classes: test.num_classes() as u32,
    });
    let oracle = adapter.as_ref();
    let batch = data.batch(config.train.epochs, config.train.epochs, Phase::Evaluation);
    let mut written = Vec::new();
    let mut listing = Vec::new();
    for name in sources {
        let mut source = create_saliency(registry, config, name)?;
        let map = source.saliency(&batch, &oracle)?;
        let perturbed = (&data.images - &map * epsilon).clamp(0.0, 1.0);
        let picture = render(&data.images, &map, &perturbed);
        let file = out.join(format!("{}.png", name.replace(['/', '\\'], "_")));
        let tmp = crate::report::temporary_sibling(&file);
        picture
            .save_with_format(&tmp, image::ImageFormat::Png)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &file)?;
        log::info!("{name}: {}", file.display());
        listing.push(serde_json::json!({
            "source": name,
            "file": file.file_name().map(|f| f.to_string_lossy().into_owned()),
            "map_min": map.min().double_value(&[]),
            "map_max": map.max().double_value(&[]),
            "map_channels": map.size()[1],
        }));
        written.push(file);
    }
    let index = serde_json::json!({
        "columns": ["image", "map (blue -1, white 0, red +1)", "overlay", "perturbed x - eps*S"],
        "epsilon": epsilon,
        "samples": n,
        "sources": listing,
    });
    crate::report::write_atomic(
        &out.join("gallery.json"),
        serde_json::to_string_pretty(&index)?.as_bytes(),
    )?;
    Ok(written)
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
