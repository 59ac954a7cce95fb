//! The file `sat-host attack` writes: named tensors in the safetensors format
//! (<https://github.com/huggingface/safetensors>) with string metadata, which tch's
//! writer does not take: an 8-byte little-endian header length, the JSON header
//! (dtype, shape and byte range of every tensor, and `__metadata__`), then the data.
use crate::report::TempFile;
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The little-endian bytes of `t` (float32 or int64) and its safetensors dtype.
fn bytes(t: &Tensor) -> anyhow::Result<(&'static str, Vec<u8>)> {
    let flat = t.to_device(Device::Cpu).contiguous().view(-1);
    Ok(match t.kind() {
        Kind::Float => (
            "F32",
            Vec::<f32>::try_from(&flat)?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        Kind::Int64 => (
            "I64",
            Vec::<i64>::try_from(&flat)?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        other => bail!("cannot store a {other:?} tensor (float32 and int64 only)"),
    })
}

/// The whole file: header and data of `tensors` (in order) with `metadata`.
fn encode(
    tensors: &[(&str, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::to_value(metadata)?);
    let mut data = Vec::new();
    for (name, t) in tensors {
        let (dtype, b) = bytes(t).with_context(|| format!("tensor `{name}`"))?;
        let begin = data.len();
        data.extend_from_slice(&b);
        header.insert(
            (*name).to_owned(),
            serde_json::json!({ "dtype": dtype, "shape": t.size(), "data_offsets": [begin, data.len()] }),
        );
    }
    let mut json = serde_json::to_vec(&header)?;
    // The data starts 8-byte aligned: the header is padded with spaces.
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + json.len() + data.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Writes `tensors` with `metadata` to `path` atomically (temporary file, then rename).
pub fn write(
    path: &Path,
    tensors: &[(&str, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let encoded = encode(tensors, metadata)?;
    let mut tmp = TempFile::beside(path)
        .with_context(|| format!("creating a temporary file for {}", path.display()))?;
    tmp.file
        .write_all(&encoded)
        .with_context(|| format!("writing {}", tmp.path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("moving {} into place", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tch_reads_the_tensors_back_and_the_header_holds_the_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.safetensors");
        let x = Tensor::rand([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[3i64, -1]);
        let odd = Tensor::from_slice(&[1.5f32]);
        let meta = BTreeMap::from([("attack".to_owned(), "pgd".to_owned())]);
        write(
            &file,
            &[("x", x.copy()), ("odd", odd), ("y", y.copy())],
            &meta,
        )
        .unwrap();
        let read: BTreeMap<String, Tensor> = Tensor::read_safetensors(&file)
            .unwrap()
            .into_iter()
            .collect();
        assert!(read["x"].equal(&x));
        assert!(read["y"].equal(&y));
        assert_eq!(read["odd"].double_value(&[0]), 1.5);
        let bytes = std::fs::read(&file).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        assert_eq!(header["__metadata__"]["attack"], "pgd");
        assert_eq!(header["y"]["dtype"], "I64");
        assert!(encode(&[("b", Tensor::from_slice(&[true]))], &meta).is_err());
    }
}
