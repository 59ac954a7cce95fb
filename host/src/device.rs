//! Choosing the libtorch device from the config's `device` string.
use tch::Device;

/// `"auto"` (CUDA device 0 when available, else CPU), `"cpu"`, `"cuda"`, `"cuda:N"`.
pub fn parse(text: &str) -> Result<Device, String> {
    let cuda = |i: usize| {
        if !tch::Cuda::is_available() {
            Err(format!(
                "device `{text}` asked for, but libtorch sees no CUDA device"
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

#[cfg(test)]
mod tests {
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
