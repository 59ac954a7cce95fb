//! Choosing the libtorch device from the config's `device` string.
use tch::Device;

/// `"auto"` (CUDA device 0 when available, else CPU), `"cpu"`, `"cuda"`, `"cuda:N"`.
pub fn parse(text: &str) -> Result<Device, String> {
    let cuda = |i: usize| {
        if !tch::Cuda::is_available() {
            Err(format!(
                "device `{text}` asked for, but libtorch sees no CUDA device ({})",
                if !BUILT_WITH_CUDA {
                    "this sat-host was built against a libtorch without CUDA"
                } else if cuda_library_loaded() {
                    "its CUDA library is loaded: is a GPU and its driver present?"
                } else {
                    "its CUDA library libtorch_cuda.so is not loaded in this process"
                }
            ))
        } else if i as i64 >= tch::Cuda::device_count() {
            Err(format!(
                "device `{text}`: only {} CUDA device(s) present",
                tch::Cuda::device_count()
            ))
        } else {
            Ok(Device::Cuda(i))
        }
    };
    match text {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match text.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => Err(format!(
                "unknown device `{text}`; accepted: auto, cpu, cuda, cuda:N"
            )),
        },
    }
}

/// Whether the libtorch this binary was built against has a CUDA library.
pub const BUILT_WITH_CUDA: bool = matches!(env!("SAT_LIBTORCH_CUDA").as_bytes(), b"1");

/// Whether libtorch's CUDA library is mapped into this process (Linux; `false`
/// elsewhere). Without it libtorch sees no CUDA device even on a GPU machine.
pub fn cuda_library_loaded() -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .map(|maps| maps.contains("/libtorch_cuda.so"))
        .unwrap_or(false)
}

/// The device of `config` (see [`parse`]), with cuDNN benchmark mode set from
/// `cudnn_benchmark` when it is a CUDA device.
pub fn open(config: &crate::config::RunConfig) -> anyhow::Result<Device> {
    let device = parse(&config.device).map_err(|e| anyhow::anyhow!("device: {e}"))?;
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(config.cudnn_benchmark);
        log::info!(
            "{device:?}: cuDNN benchmark mode {}",
            if config.cudnn_benchmark { "on" } else { "off" }
        );
    }
    Ok(device)
}

#[cfg(test)]
mod tests {
    /// The linker must keep libtorch_cuda.so, or CUDA never works (the build
    /// script's `--no-as-needed`); this executable is linked like the binary.
    #[test]
    fn libtorch_cuda_is_loaded_when_libtorch_has_it() {
        let _ = tch::Cuda::is_available();
        assert_eq!(super::cuda_library_loaded(), super::BUILT_WITH_CUDA);
    }

    #[test]
    fn parses_known_devices_and_rejects_others() {
        assert_eq!(super::parse("cpu"), Ok(tch::Device::Cpu));
        assert!(super::parse("gpu").is_err());
        assert!(super::parse("cuda:x").is_err());
        if !tch::Cuda::is_available() {
            assert_eq!(super::parse("auto"), Ok(tch::Device::Cpu));
            assert!(super::parse("cuda").unwrap_err().contains("no CUDA"));
        }
    }
}
