//! Device selection and the numerical precision actually used.

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

/// The dtype of all parameters, activations and optimizer state.
pub const DTYPE: DType = DType::F32;

/// Select a device: `"cpu"`, `"cuda"` (= `"cuda:0"`), `"cuda:N"`, or `"auto"`
/// (the first CUDA device when this crate was built with the `cuda` feature and
/// one is present, else the CPU). Without the `cuda` feature, asking for CUDA is an
/// error.
pub fn select_device(spec: &str) -> candle_core::Result<Device> {
    let spec = spec.trim();
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if cfg!(feature = "cuda") {
                Device::cuda_if_available(0)
            } else {
                Ok(Device::Cpu)
            }
        }
        _ => {
            let ordinal = if spec == "cuda" {
                0
            } else if let Some(n) = spec.strip_prefix("cuda:") {
                n.parse::<usize>()
                    .map_err(|_| candle_core::Error::Msg(format!("bad device spec {spec:?}")))?
            } else {
                candle_core::bail!("unknown device {spec:?} (expected cpu, cuda, cuda:N or auto)")
            };
            if !cfg!(feature = "cuda") {
                candle_core::bail!(
                    "device {spec:?} requested but e2h-unet was built without the `cuda` feature"
                )
            }
            Device::new_cuda(ordinal)
        }
    }
}

/// Enable or disable TF32 matrix multiplies (and convolutions, which candle runs as
/// matrix multiplies) for f32 on CUDA. Off by default; no effect on the CPU.
pub fn set_tf32(enabled: bool) {
    candle_core::cuda::set_gemm_reduced_precision_f32(enabled);
}

/// What precision a computation on `device` uses, for output metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Precision {
    /// `"cpu"` or `"cuda"`.
    pub device: String,
    /// Storage dtype of weights, activations, gradients, optimizer moments: always `"f32"`.
    pub dtype: String,
    /// Whether f32 matrix multiplies/convolutions may use TF32 (CUDA only).
    pub tf32: bool,
}

impl Precision {
    /// A short label, e.g. `"f32"` or `"f32 (TF32 matmul)"`.
    pub fn label(&self) -> String {
        if self.tf32 {
            format!("{} (TF32 matmul)", self.dtype)
        } else {
            self.dtype.clone()
        }
    }
}

/// The precision used on `device` right now.
pub fn precision(device: &Device) -> Precision {
    let cuda = device.is_cuda();
    Precision {
        device: if cuda { "cuda" } else { "cpu" }.to_string(),
        dtype: "f32".to_string(),
        tf32: cuda && candle_core::cuda::gemm_reduced_precision_f32(),
    }
}
