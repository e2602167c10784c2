//! Checkpoint files: safetensors with JSON metadata in the header, written
//! atomically (temporary file, fsync, rename) as `ckpt-<step, 10 digits>.safetensors`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::TrainError;

/// Format tag stored under the metadata key `format`.
pub const FORMAT: &str = "e2h-unet-checkpoint-v1";
const PREFIX: &str = "ckpt-";
const SUFFIX: &str = ".safetensors";

/// The file name of the checkpoint at `step` inside `dir`.
pub fn checkpoint_path(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{step:010}{SUFFIX}"))
}

fn io_err(path: &Path, source: std::io::Error) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checkpoints in `dir` as (step, path), by increasing step. A missing directory has none.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(digits) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_suffix(SUFFIX))
        else {
            continue;
        };
        if digits.len() == 10
            && digits.bytes().all(|b| b.is_ascii_digit())
            && let Ok(step) = digits.parse::<u64>()
        {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Write `tensors` and `metadata` to `path` atomically.
pub fn write_atomic(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: HashMap<String, String>,
) -> Result<(), TrainError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let bytes = safetensors::tensor::serialize(tensors.iter(), Some(metadata)).map_err(|e| {
        TrainError::Candle(candle_core::Error::Msg(format!(
            "safetensors serialise: {e}"
        )))
    })?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("checkpoint");
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        f.write_all(&bytes).map_err(|e| io_err(&tmp, e))?;
        f.sync_all().map_err(|e| io_err(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    // Make the rename durable where the platform allows opening a directory.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A checkpoint read back: its tensors (on `device`) and header metadata.
pub struct LoadedCheckpoint {
    /// Tensors by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// Header metadata.
    pub metadata: HashMap<String, String>,
}

/// Read a checkpoint; any failure to parse is reported as `CorruptCheckpoint`.
pub fn read(path: &Path, device: &Device) -> Result<LoadedCheckpoint, TrainError> {
    let corrupt = |reason: String| TrainError::CorruptCheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| corrupt(format!("header: {e}")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    if metadata.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(corrupt(format!("format tag is not {FORMAT:?}")));
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| corrupt(format!("tensors: {e}")))?;
    Ok(LoadedCheckpoint {
        tensors: tensors.into_iter().collect(),
        metadata,
    })
}

/// Delete checkpoints in `dir` older than `newest`, keeping the `keep` most recent
/// ones with step <= `newest` (checkpoints after `newest` are left alone).
pub fn prune(dir: &Path, newest: u64, keep: usize) -> Result<(), TrainError> {
    let all = list_checkpoints(dir)?;
    let older: Vec<_> = all.into_iter().filter(|(s, _)| *s <= newest).collect();
    let n = older.len();
    if n > keep.max(1) {
        for (_, p) in &older[..n - keep.max(1)] {
            std::fs::remove_file(p).map_err(|e| io_err(p, e))?;
        }
    }
    Ok(())
}
