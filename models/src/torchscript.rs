//! A TorchScript model exported from PyTorch, evaluated and attacked like a native one.
use crate::ModelError;
use std::path::Path;
use tch::nn::ModuleT;
use tch::{CModule, Device, TchError, Tensor};

/// A TorchScript module in evaluation mode. It maps images in `[0, 1]` to logits; its
/// own normalisation, if any, is part of it.
#[derive(Debug)]
pub struct TorchScriptModel {
    module: CModule,
}

impl TorchScriptModel {
    /// Loads `path` onto `device`. The file is opened through `sat_input` (a regular
    /// file, at most the model cap) and libtorch reads exactly that open file.
    pub fn load(path: &Path, device: Device) -> Result<Self, ModelError> {
        let input = sat_input::open(path, sat_input::Kind::Model)
            .map_err(|e| ModelError::Invalid(format!("cannot load TorchScript model {e}")))?;
        let mut module = CModule::load_on_device(input.fd_path(), device).map_err(|e| {
            ModelError::Invalid(format!(
                "cannot load TorchScript model {}: {}",
                path.display(),
                torch_message(&e)
            ))
        })?;
        module.set_eval();
        Ok(Self { module })
    }
}

impl ModuleT for TorchScriptModel {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Tensor {
        // `ModuleT` has no error path. The host probes the model once at load time
        // (`probe`), and inside oracle calls the adapter turns an unwind into an error.
        // `resume_unwind` unwinds without the panic hook, so nothing is printed: the
        // catcher reports the one-line message.
        match self.module.forward_ts(&[x]) {
            Ok(t) => t,
            Err(e) => std::panic::resume_unwind(Box::new(format!(
                "TorchScript forward failed: {}",
                torch_message(&e)
            ))),
        }
    }
}

/// The most characters of a libtorch message kept in an error.
const MESSAGE_CHARS: usize = 300;

/// A libtorch error as one line: the C++ frame trace (`Exception raised from …`,
/// `frame #N: …`) and the TorchScript traceback are dropped, keeping the Python-style
/// `…Error: what` line when there is one; at most [`MESSAGE_CHARS`] characters.
pub fn torch_message(e: &TchError) -> String {
    let text = match e {
        TchError::Torch(text) => text.clone(),
        other => other.to_string(),
    };
    let kept: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Exception raised from"))
        .filter(|l| !l.is_empty() && !l.starts_with("frame #"))
        .collect();
    let python_error = kept.iter().rev().find(|l| {
        l.split_once(": ")
            .is_some_and(|(k, _)| k.ends_with("Error"))
    });
    let line = match python_error {
        Some(l) => l.to_string(),
        None => kept.first().copied().unwrap_or("(no message)").to_string(),
    };
    shorten(&line, MESSAGE_CHARS)
}

/// `text` without libtorch's C++ frame traces: each `Exception raised from …` line and
/// the `frame #N: …` lines after it are dropped, the rest kept as it was.
pub fn without_frames(text: &str) -> String {
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            !l.starts_with("frame #") && !l.starts_with("Exception raised from")
        })
        .collect();
    kept.join("\n").trim_end().to_string()
}

/// `text` cut to at most `chars` characters, with `…` where it was cut.
fn shorten(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_messages_become_one_line_without_frames() {
        let trace = "The following operation failed in the TorchScript interpreter.\n\
            Traceback of TorchScript (most recent call last):\n  File \"x.py\", line 3\n\
            RuntimeError: shape '[-1, 7]' is invalid for input of size 768\n\n\
            Exception raised from infer_size_impl at aten/src/ATen/InferSize.h:100 (most recent call first):\n\
            frame #0: c10::Error::Error(...) + 0x9c\nframe #1: at::infer_size + 0x20\n";
        let e = TchError::Torch(trace.into());
        assert_eq!(
            torch_message(&e),
            "RuntimeError: shape '[-1, 7]' is invalid for input of size 768"
        );
        let plain = TchError::Torch(format!("open file failed {}", "x".repeat(400)));
        let m = torch_message(&plain);
        assert!(m.starts_with("open file failed") && m.ends_with('…') && !m.contains('\n'));
        assert_eq!(m.chars().count(), MESSAGE_CHARS + 1);
    }

    #[test]
    fn frame_traces_are_dropped_from_any_message() {
        let text = "[model] eval: boom (TorchScript model m.pt)\nException raised from f at x.cpp:1 (most recent call first):\nframe #0: a + 0x1\n  frame #1: b";
        assert_eq!(without_frames(text), "[model] eval: boom (TorchScript model m.pt)");
        assert_eq!(without_frames("two\nlines"), "two\nlines");
    }

    #[test]
    fn a_special_file_is_refused_before_libtorch_reads_it() {
        let e = TorchScriptModel::load(Path::new("/dev/zero"), Device::Cpu).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("/dev/zero") && e.contains("character device"),
            "{e}"
        );
    }
}
