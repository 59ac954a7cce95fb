//! Random draws keyed by sample: a sample's draws depend on the run's seed, the epoch,
//! the sample's global index and the draw's purpose, never on the batch it is in, the
//! rank that holds it or the number of ranks. A data-parallel run therefore perturbs
//! every sample as one process does.
//!
//! The host hands the keys over with the batch ([`DrawKeys`]); components draw through
//! [`Draws`] (`batch.draws()`). Without keys (unit tests, hosts that give none) the
//! draws come from libtorch's generator, as before.
use crate::error::PluginError;
use crate::tensor::{RTensor, TensorRef};
use abi_stable::StableAbi;
use tch::{Kind, Tensor};

/// What keys a batch's draws: the run's seed and each sample's global index in its split.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct DrawKeys {
    /// The run's seed.
    pub seed: u64,
    /// The samples' global indices, `[N]` int64 on the CPU, aligned with the batch.
    pub samples: RTensor,
}

/// The draws of one batch (see the module's documentation).
#[derive(Debug, Clone, Copy)]
pub struct Draws<'a> {
    keys: Option<&'a DrawKeys>,
    epoch: u32,
}

impl<'a> Draws<'a> {
    /// Draws keyed by `keys` in `epoch`; libtorch's generator when `keys` is `None`.
    pub fn new(keys: Option<&'a DrawKeys>, epoch: u32) -> Self {
        Self { keys, epoch }
    }

    /// Whether the draws are keyed by sample (else libtorch's generator).
    pub fn keyed(&self) -> bool {
        self.keys.is_some()
    }

    /// Uniform in `[0, 1)`, of `like`'s shape, dtype and device; the first dimension of
    /// `like` is the batch. `purpose` names the draw (`"pgd.start.0"`, `"sat.sign"`):
    /// two purposes draw independently.
    pub fn uniform_like(&self, purpose: &str, like: &Tensor) -> Result<Tensor, PluginError> {
        match self.keys {
            None => Ok(like.f_rand_like()?),
            Some(keys) => self.keyed_like(keys, purpose, like, |s| s.uniform()),
        }
    }

    /// Standard normal, of `like`'s shape, dtype and device (see [`Draws::uniform_like`]).
    pub fn normal_like(&self, purpose: &str, like: &Tensor) -> Result<Tensor, PluginError> {
        match self.keys {
            None => Ok(like.f_randn_like()?),
            Some(keys) => self.keyed_like(keys, purpose, like, |s| s.normal()),
        }
    }

    fn keyed_like(
        &self,
        keys: &DrawKeys,
        purpose: &str,
        like: &Tensor,
        draw: impl Fn(&mut Stream) -> f32,
    ) -> Result<Tensor, PluginError> {
        let ids = sample_ids(keys.samples.view())?;
        let n = like.size().first().copied().unwrap_or(0);
        if n != ids.len() as i64 {
            return Err(PluginError::invalid_input(format!(
                "{purpose}: a draw for {n} samples in a batch of {}",
                ids.len()
            )));
        }
        let per_sample = if n == 0 { 0 } else { like.numel() / n as usize };
        let tag = fnv1a(purpose.as_bytes());
        let mut values = Vec::with_capacity(like.numel());
        for &id in &ids {
            let mut stream = Stream::new(keys.seed, tag, self.epoch, id);
            values.extend((0..per_sample).map(|_| draw(&mut stream)));
        }
        let kind = if like.is_floating_point() {
            like.kind()
        } else {
            Kind::Float
        };
        Ok(Tensor::from_slice(&values)
            .f_reshape(like.size())?
            .f_to_device(like.device())?
            .f_to_kind(kind)?)
    }
}

fn sample_ids(samples: TensorRef<'_>) -> Result<Vec<i64>, PluginError> {
    if samples.dim() != 1 || samples.kind() != Kind::Int64 {
        return Err(PluginError::invalid_input(format!(
            "draw keys: sample indices must be int64 [N], got {:?} {:?}",
            samples.kind(),
            samples.size()
        )));
    }
    Ok(Vec::<i64>::try_from(&samples.to_device(tch::Device::Cpu))?)
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64 from one key, a stream of values for one sample and purpose.
struct Stream(u64);

impl Stream {
    fn new(seed: u64, purpose: u64, epoch: u32, sample: i64) -> Self {
        let mut s = Stream(seed);
        for part in [purpose, u64::from(epoch), sample as u64] {
            s.0 = mix(s.0 ^ part.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        s
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `[0, 1)` with 24 random bits (all a float32 holds).
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Standard normal (Box–Muller on two uniforms; the second value is dropped so each
    /// element costs the same).
    fn normal(&mut self) -> f32 {
        let u1 = 1.0 - ((self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64));
        let u2 = (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn keys(seed: u64, ids: &[i64]) -> DrawKeys {
        DrawKeys {
            seed,
            samples: RTensor::from_ref(&Tensor::from_slice(ids)),
        }
    }

    #[test]
    fn a_samples_draws_do_not_depend_on_its_batch() {
        let like = Tensor::zeros([4, 3, 2, 2], (Kind::Float, Device::Cpu));
        let all = keys(7, &[10, 11, 12, 13]);
        let whole = Draws::new(Some(&all), 2).uniform_like("p", &like).unwrap();
        // Samples 12 and 13 alone (another rank's share) draw what they drew in the whole.
        let part = keys(7, &[12, 13]);
        let half = like.narrow(0, 2, 2);
        let shared = Draws::new(Some(&part), 2).uniform_like("p", &half).unwrap();
        assert!(shared.equal(&whole.narrow(0, 2, 2)));
        // Another purpose, epoch or seed draws otherwise.
        for other in [
            Draws::new(Some(&all), 2).uniform_like("q", &like).unwrap(),
            Draws::new(Some(&all), 3).uniform_like("p", &like).unwrap(),
            Draws::new(Some(&keys(8, &[10, 11, 12, 13])), 2)
                .uniform_like("p", &like)
                .unwrap(),
        ] {
            assert!(!other.equal(&whole));
        }
    }

    #[test]
    fn keyed_draws_have_the_right_distribution() {
        let ids: Vec<i64> = (0..64).collect();
        let k = keys(1, &ids);
        let like = Tensor::zeros([64, 1000], (Kind::Float, Device::Cpu));
        let u = Draws::new(Some(&k), 0).uniform_like("u", &like).unwrap();
        let (min, max) = (u.min().double_value(&[]), u.max().double_value(&[]));
        assert!(min >= 0.0 && max < 1.0);
        assert!((u.mean(Kind::Double).double_value(&[]) - 0.5).abs() < 0.01);
        let z = Draws::new(Some(&k), 0).normal_like("z", &like).unwrap();
        assert!(z.mean(Kind::Double).double_value(&[]).abs() < 0.02);
        assert!((z.std(true).double_value(&[]) - 1.0).abs() < 0.02);
        // Without keys: libtorch's generator, same shape.
        let free = Draws::new(None, 0).uniform_like("u", &like).unwrap();
        assert_eq!(free.size(), like.size());
    }

    #[test]
    fn a_mismatched_key_count_is_an_error() {
        let k = keys(1, &[1, 2]);
        let like = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu));
        let e = Draws::new(Some(&k), 0)
            .uniform_like("p", &like)
            .unwrap_err();
        assert!(e.to_string().contains("3 samples in a batch of 2"), "{e}");
    }
}
