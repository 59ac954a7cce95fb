//! Cost of one empty saliency call through the plugin ABI (trait object, panic guard,
//! tensor handles, oracle reference) against the same call on the plain Rust trait.
//!
//! Run: `cargo bench -p sat-core --bench boundary`.
use criterion::{criterion_group, criterion_main, Criterion};
use sat_core::abi_stable::std_types::RStr;
use sat_core::component::Configurable;
use sat_core::testing::LinearModel;
use sat_core::{Batch, Oracle, Phase, PluginError, SaliencySource};
use std::hint::black_box;
use tch::{Device, Kind, Tensor};

/// Returns a shallow clone of a preallocated map: no tensor work at all.
struct Empty(Tensor);

impl Configurable for Empty {
    type Config = toml::Table;
    fn from_config(_: toml::Table) -> Result<Self, PluginError> {
        Ok(Self(Tensor::zeros(
            [128, 1, 32, 32],
            (Kind::Float, Device::Cpu),
        )))
    }
}

impl SaliencySource for Empty {
    fn saliency(&mut self, _: &Batch, _: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        Ok(self.0.shallow_clone())
    }
}

sat_core::register_saliency!(
    Empty,
    name = "empty",
    description = "does nothing",
);

fn boundary(c: &mut Criterion) {
    let images = Tensor::rand([128, 3, 32, 32], (Kind::Float, Device::Cpu));
    let labels = Tensor::zeros([128], (Kind::Int64, Device::Cpu));
    let adapter = LinearModel::random(10, 3 * 32 * 32, 0).oracle();
    let oracle_ref = adapter.as_ref();

    let mut direct = Empty::from_config(toml::Table::new()).unwrap();
    c.bench_function("saliency call, plain Rust trait", |b| {
        b.iter(|| {
            let batch = Batch::new(&images, &labels, 0, 1, Phase::Training);
            black_box(direct.saliency(&batch, Oracle::new(&oracle_ref)).unwrap())
        })
    });

    let module = sat_core::module::root_module("bench", "0");
    let made = (module.create())(
        sat_core::ComponentKind::Saliency,
        RStr::from_str("empty"),
        RStr::from_str(""),
    )
    .unwrap();
    let sat_core::ComponentBox::Saliency(mut source) = made else {
        panic!("the library built another kind of component")
    };
    c.bench_function("saliency call, across the plugin ABI", |b| {
        b.iter(|| {
            let batch = Batch::new(&images, &labels, 0, 1, Phase::Training);
            black_box(source.saliency(&batch, &oracle_ref).unwrap().into_tensor())
        })
    });
}

criterion_group!(benches, boundary);
criterion_main!(benches);
