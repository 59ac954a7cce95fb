//! `centre-prior`: a saliency source that needs no annotations: objects in photographs
//! tend to sit near the centre, so the map is a Gaussian bump around the image centre,
//! rescaled to `[-1, 1]`: `S = 2·exp(−r² / 2σ²) − 1`, with `r` the distance to the
//! centre and `σ = sigma · side`.
use sat_core::tch::{Kind, Tensor};
use sat_core::{component::Configurable, Batch, Oracle, PluginError, SaliencySource};
use serde::{Deserialize, Serialize};

/// Configuration: `[components.centre-prior]`. Its `Default` is the one source of the
/// defaults: `register_saliency!` derives the TOML that `sat-host plugins describe
/// centre-prior` shows from it, and the accepted keys from its fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CentrePriorConfig {
    /// Width of the bump as a fraction of the image side.
    pub sigma: f64,
}

impl Default for CentrePriorConfig {
    fn default() -> Self {
        Self { sigma: 0.25 }
    }
}

/// The centre prior.
pub struct CentrePrior {
    sigma: f64,
}

impl Configurable for CentrePrior {
    type Config = CentrePriorConfig;
    fn from_config(config: CentrePriorConfig) -> Result<Self, PluginError> {
        if !(config.sigma > 0.0 && config.sigma.is_finite()) {
            return Err(PluginError::config(format!("[centre-prior] sigma must be positive, got {}", config.sigma)));
        }
        Ok(Self { sigma: config.sigma })
    }
}

impl SaliencySource for CentrePrior {
    fn saliency(&mut self, batch: &Batch, _oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        let images = batch.images();
        let size = images.size();
        let (n, h, w) = (size[0], size[2], size[3]);
        let opts = (Kind::Float, images.device());
        let ys = Tensor::f_arange(h, opts)?.f_add_scalar(0.5 - h as f64 / 2.0)?.f_reshape([h, 1])?;
        let xs = Tensor::f_arange(w, opts)?.f_add_scalar(0.5 - w as f64 / 2.0)?.f_reshape([1, w])?;
        let r2 = ys.f_square()?.f_add(&xs.f_square()?)?;
        let sigma = self.sigma * h.max(w) as f64;
        let bump = r2.f_div_scalar(-2.0 * sigma * sigma)?.f_exp()?;
        let map = bump.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?;
        Ok(map.f_expand([n, 1, h, w], false)?.f_contiguous()?)
    }
}

sat_core::register_saliency!(
    CentrePrior,
    name = "centre-prior",
    description = "Centre prior: 2*exp(-r^2/(2 sigma^2)) - 1 around the image centre (example plugin)",
);

sat_core::export_plugin!();

#[cfg(test)]
mod tests {
    #[test]
    fn registers_and_builds_from_defaults() {
        assert_eq!(sat_core::check_registrations(), Ok(1));
    }

    #[test]
    fn the_listed_defaults_come_from_the_config_type() {
        let info = sat_core::component::registrations()
            .next()
            .expect("one registration")
            .info()
            .expect("defaults serialise");
        assert_eq!(info.default_config.as_str(), "sigma = 0.25\n");
        assert_eq!(info.keys.len(), 1);
        assert_eq!(info.keys[0].as_str(), "sigma");
    }
}
