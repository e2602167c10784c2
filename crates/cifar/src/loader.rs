//! CIFAR-10 from the Hugging Face hub (`uoft-cs/cifar10`, revision `main`), decoded
//! into u8 NCHW arrays.
//!
//! The file is looked up in the local hub cache first (`HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, as hf-hub resolves it), and
//! downloaded only when it is not there, exactly as for a user with internet.
//! Offline machines set `HF_HOME` to a prepared cache (a `hub/` folder with
//! `datasets--uoft-cs--cifar10/refs/main` and `snapshots/<commit>/plain_text/...`).
//!
//! The PNG bytes are decoded with the `image` crate (never candle-datasets, which
//! swaps height and width). Images come out channel-major: for image `i`, channel
//! `c` (0 = R, 1 = G, 2 = B), row `y` and column `x`, the byte is
//! `pixels[i * 3072 + c * 1024 + y * 32 + x]`.

use std::fs::File;
use std::path::{Path, PathBuf};

use hf_hub::{HFClient, HFClientSync};
use polars::prelude::*;
use rayon::prelude::*;

use crate::error::{CifarError, Result};
use crate::{CHANNELS, DIM, HEIGHT, NUM_CLASSES, WIDTH};

/// Owner of the dataset repository on the hub.
pub const REPO_OWNER: &str = "uoft-cs";
/// Name of the dataset repository on the hub.
pub const REPO_NAME: &str = "cifar10";
/// `owner/name` of the dataset repository.
pub const REPO_ID: &str = "uoft-cs/cifar10";
/// Revision (branch) the files are taken from.
pub const REVISION: &str = "main";

/// The ten class names, indexed by label.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Which half of CIFAR-10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// 50,000 training images.
    Train,
    /// 10,000 test images.
    Test,
}

impl Split {
    /// Path of the split's parquet file inside the dataset repository.
    pub fn repo_file(self) -> &'static str {
        match self {
            Split::Train => "plain_text/train-00000-of-00001.parquet",
            Split::Test => "plain_text/test-00000-of-00001.parquet",
        }
    }

    /// `"train"` or `"test"`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Where the hub client looks and what it may do. `Default` is what a user gets:
/// cache folder from the environment, the public hub as endpoint, network allowed.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Use this folder as `HF_HOME` (the cache is its `hub/` subfolder) instead of
    /// resolving the cache from the environment.
    pub hf_home: Option<PathBuf>,
    /// Hub endpoint instead of `HF_ENDPOINT` / `https://huggingface.co`.
    pub endpoint: Option<String>,
    /// Never touch the network: fail if the file is not cached.
    pub local_files_only: bool,
}

impl HubOptions {
    /// Options that use `hf_home` as the Hugging Face home folder.
    pub fn with_hf_home(hf_home: impl Into<PathBuf>) -> Self {
        Self {
            hf_home: Some(hf_home.into()),
            ..Self::default()
        }
    }
}

/// Decoded images: `n` images of 3 x 32 x 32 bytes in NCHW order, and their labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CifarImages {
    /// `n * 3072` bytes, image-major, then channel (RGB), row, column.
    pub pixels: Vec<u8>,
    /// `n` labels in `0..10`.
    pub labels: Vec<u8>,
    /// Number of images.
    pub n: usize,
}

/// The map from a byte to [-1, 1]: `x / 127.5 - 1`.
#[inline]
pub fn byte_to_signed(x: u8) -> f64 {
    f64::from(x) / 127.5 - 1.0
}

impl CifarImages {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The 3072 bytes of image `i` (CHW).
    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * DIM..(i + 1) * DIM]
    }

    /// The (R, G, B) bytes of image `i` at row `y`, column `x`.
    pub fn rgb(&self, i: usize, y: usize, x: usize) -> [u8; 3] {
        let img = self.image(i);
        let p = y * WIDTH + x;
        [img[p], img[HEIGHT * WIDTH + p], img[2 * HEIGHT * WIDTH + p]]
    }

    /// All pixels scaled to [-1, 1] (`x / 127.5 - 1`), same layout as `pixels`.
    pub fn to_f64(&self) -> Vec<f64> {
        self.pixels.par_iter().map(|&x| byte_to_signed(x)).collect()
    }

    /// All pixels scaled to [-1, 1] (`x / 127.5 - 1`) in f32, same layout as `pixels`.
    pub fn to_f32(&self) -> Vec<f32> {
        self.pixels
            .par_iter()
            .map(|&x| f32::from(x) / 127.5 - 1.0)
            .collect()
    }

    /// The first `n` images (all of them when `n >= self.n`).
    pub fn head(&self, n: usize) -> CifarImages {
        let n = n.min(self.n);
        CifarImages {
            pixels: self.pixels[..n * DIM].to_vec(),
            labels: self.labels[..n].to_vec(),
            n,
        }
    }

    /// How many images each class has.
    pub fn class_counts(&self) -> [usize; NUM_CLASSES] {
        let mut counts = [0; NUM_CLASSES];
        for &l in &self.labels {
            counts[usize::from(l)] += 1;
        }
        counts
    }
}

/// The hub cache folder the client uses (`<hf_home>/hub`, or as hf-hub resolves it
/// from the environment).
pub fn cache_dir(opts: &HubOptions) -> PathBuf {
    opts.hf_home
        .as_ref()
        .map_or_else(hf_hub::resolve_cache_dir, |h| h.join("hub"))
}

fn hub_client(opts: &HubOptions) -> Result<HFClientSync> {
    let mut builder = HFClient::builder();
    if let Some(home) = &opts.hf_home {
        builder = builder.cache_dir(home.join("hub"));
    }
    if let Some(endpoint) = &opts.endpoint {
        builder = builder.endpoint(endpoint.clone());
    }
    builder
        .build_sync()
        .map_err(|source| CifarError::HubClient {
            cache_dir: cache_dir(opts),
            source: Box::new(source),
        })
}

/// One line with an error and all its sources.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = s.source();
    }
    out
}

/// Local path of a split's parquet file: from the hub cache if it is there,
/// downloaded into the cache otherwise.
pub fn resolve_split_file(split: Split, opts: &HubOptions) -> Result<PathBuf> {
    let client = hub_client(opts)?;
    let repo = client.dataset(REPO_OWNER, REPO_NAME);
    let file = split.repo_file();

    // Cache first: no request at all when the file is already there.
    let cached = repo
        .download_file()
        .filename(file)
        .revision(REVISION)
        .local_files_only(true)
        .send();
    let err = match cached {
        Ok(path) => return Ok(path),
        Err(e) => e,
    };
    let (err, reason) = if opts.local_files_only {
        let reason = format!(
            "network disabled by local_files_only; cache lookup: {}",
            error_chain(&err)
        );
        (err, reason)
    } else {
        match repo
            .download_file()
            .filename(file)
            .revision(REVISION)
            .send()
        {
            Ok(path) => return Ok(path),
            Err(e) => {
                let reason = format!("download failed: {}", error_chain(&e));
                (e, reason)
            }
        }
    };
    Err(CifarError::NotAvailable {
        file,
        repo: REPO_ID,
        revision: REVISION,
        cache_dir: cache_dir(opts),
        reason,
        source: Box::new(err),
    })
}

/// Load a split through the hub cache (resolved from the environment, see the
/// module docs); `limit` keeps only the first `limit` images.
pub fn load_split(split: Split, limit: Option<usize>) -> Result<CifarImages> {
    load_split_with(split, limit, &HubOptions::default())
}

/// Load a split with explicit hub options (e.g. an explicit `HF_HOME` folder).
pub fn load_split_with(
    split: Split,
    limit: Option<usize>,
    opts: &HubOptions,
) -> Result<CifarImages> {
    let path = resolve_split_file(split, opts)?;
    load_parquet(&path, limit)
}

/// Decode one 32 x 32 RGB PNG into 3072 bytes, CHW order.
fn decode_png_into(bytes: &[u8], out: &mut [u8], path: &Path, row: usize) -> Result<()> {
    let img =
        image::load_from_memory_with_format(bytes, image::ImageFormat::Png).map_err(|source| {
            CifarError::Png {
                path: path.to_path_buf(),
                row,
                source: Box::new(source),
            }
        })?;
    if img.width() as usize != WIDTH || img.height() as usize != HEIGHT {
        return Err(CifarError::ImageSize {
            path: path.to_path_buf(),
            row,
            width: img.width(),
            height: img.height(),
        });
    }
    let rgb = img.into_rgb8();
    // `rgb` is row-major HWC: index (y * W + x) * 3 + c.
    let plane = HEIGHT * WIDTH;
    for (p, px) in rgb.as_raw().chunks_exact(CHANNELS).enumerate() {
        for c in 0..CHANNELS {
            out[c * plane + p] = px[c];
        }
    }
    Ok(())
}

/// Decode a PNG (as stored in the parquet files) into 3072 bytes in CHW order.
pub fn decode_png(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = vec![0u8; DIM];
    decode_png_into(bytes, &mut out, Path::new("<memory>"), 0)?;
    Ok(out)
}

/// Load images from a parquet file in the hub's schema
/// (`img: struct{bytes: binary PNG, path: string}`, `label: int64`);
/// `limit` keeps only the first `limit` rows.
pub fn load_parquet(path: &Path, limit: Option<usize>) -> Result<CifarImages> {
    let pq_err = |what: &str| {
        let what = what.to_string();
        move |source: PolarsError| CifarError::Parquet {
            path: path.to_path_buf(),
            what,
            source: Box::new(source),
        }
    };
    let schema_err = |what: String| CifarError::Schema {
        path: path.to_path_buf(),
        what,
    };

    let file = File::open(path).map_err(|source| CifarError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader =
        ParquetReader::new(file).with_columns(Some(vec!["img".into(), "label".into()]));
    if let Some(n) = limit {
        reader = reader.with_slice(Some((0, n)));
    }
    let df = reader
        .finish()
        .map_err(pq_err("reading columns `img` and `label`"))?;
    let n = df.height();

    let img = df
        .column("img")
        .map_err(pq_err("column `img`"))?
        .as_materialized_series();
    let img = img.struct_().map_err(|_| {
        schema_err(format!(
            "column `img` has type {}, expected struct{{bytes, path}}",
            img.dtype()
        ))
    })?;
    let bytes = img
        .field_by_name("bytes")
        .map_err(pq_err("field `bytes` of column `img`"))?;
    let bytes = bytes.binary().map_err(|_| {
        schema_err(format!(
            "field `img.bytes` has type {}, expected binary",
            bytes.dtype()
        ))
    })?;
    let labels = df
        .column("label")
        .map_err(pq_err("column `label`"))?
        .as_materialized_series()
        .cast(&DataType::Int64)
        .map_err(pq_err("casting column `label` to int64"))?;
    let labels = labels.i64().map_err(pq_err("column `label`"))?;

    let labels: Vec<u8> = labels
        .iter()
        .enumerate()
        .map(|(row, l)| match l {
            Some(v) if (0..NUM_CLASSES as i64).contains(&v) => Ok(v as u8),
            other => Err(CifarError::Label {
                path: path.to_path_buf(),
                row,
                label: other,
            }),
        })
        .collect::<Result<_>>()?;

    let blobs: Vec<&[u8]> = bytes
        .iter()
        .enumerate()
        .map(|(row, b)| b.ok_or_else(|| schema_err(format!("row {row}: `img.bytes` is null"))))
        .collect::<Result<_>>()?;

    let mut pixels = vec![0u8; n * DIM];
    pixels
        .par_chunks_mut(DIM)
        .zip(blobs.par_iter())
        .enumerate()
        .try_for_each(|(row, (out, blob))| decode_png_into(blob, out, path, row))?;

    Ok(CifarImages { pixels, labels, n })
}
