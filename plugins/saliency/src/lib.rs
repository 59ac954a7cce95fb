//! Saliency sources from the annotations a dataset already has, as one plugin library:
//! `boxes` (bounding boxes) and `masks` (segmentation masks / trimaps).

pub mod boxes;
pub mod masks;

sat_core::export_plugin!();

use serde::{Deserialize, Serialize};

/// What a source returns for a sample that lacks the annotation it reads.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// 0 everywhere: SAT then uses its random signs only for that sample.
    Zero,
    /// +1 everywhere (the whole image is salient).
    Full,
    /// The sample's bounding boxes (`masks` only; `zero` where there are none either).
    Boxes,
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_component_builds_from_its_defaults() {
        assert_eq!(sat_core::check_registrations(), Ok(2));
    }
}
