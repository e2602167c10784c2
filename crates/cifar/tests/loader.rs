//! Loading CIFAR-10 through the real hf-hub cache path, on tiny parquet fixtures
//! in the hub's schema, plus a check of the real data set when its cache exists.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use e2h_cifar::loader::{self, CifarImages, HubOptions, Split};
use e2h_cifar::{CifarError, DIM};
use image::{ImageFormat, Rgb, RgbImage};
use polars::prelude::*;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const REPO_DIR: &str = "hub/datasets--uoft-cs--cifar10";

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Write a parquet file in the hub's schema: img struct{bytes, path (null)}, label int64.
fn write_parquet(path: &Path, pngs: &[Vec<u8>], labels: &[i64]) {
    let n = pngs.len();
    let bytes = Series::new("bytes".into(), pngs);
    let paths = Series::full_null("path".into(), n, &DataType::String);
    let img = StructChunked::from_series("img".into(), n, [bytes, paths].iter())
        .unwrap()
        .into_series();
    let label = Series::new("label".into(), labels);
    let mut df = DataFrame::new(n, vec![img.into(), label.into()]).unwrap();
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    ParquetWriter::new(fs::File::create(path).unwrap())
        .finish(&mut df)
        .unwrap();
}

/// An HF_HOME laid out like the hub cache, with refs/main and one snapshot holding
/// the given splits.
/// A split's content in a fixture: (split, PNG bytes per image, labels).
type SplitFixture<'a> = (Split, &'a [Vec<u8>], &'a [i64]);

fn make_hf_home(root: &Path, splits: &[SplitFixture<'_>]) -> PathBuf {
    let repo = root.join(REPO_DIR);
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs/main"), COMMIT).unwrap();
    for (split, pngs, labels) in splits {
        write_parquet(
            &repo.join("snapshots").join(COMMIT).join(split.repo_file()),
            pngs,
            labels,
        );
    }
    root.to_path_buf()
}

/// Image k of the fixture: asymmetric in rows and columns, distinct channels.
fn fixture_image(k: u8) -> RgbImage {
    RgbImage::from_fn(32, 32, |x, y| {
        Rgb([(x * 7) as u8, (y * 5) as u8, 200u8.wrapping_add(k)])
    })
}

fn fixture_pngs(n: usize) -> (Vec<Vec<u8>>, Vec<i64>) {
    let pngs = (0..n).map(|k| png(&fixture_image(k as u8))).collect();
    let labels = (0..n).map(|k| (k % 10) as i64).collect();
    (pngs, labels)
}

fn check_fixture(images: &CifarImages, n: usize) {
    assert_eq!(images.n, n);
    assert_eq!(images.pixels.len(), n * DIM);
    assert_eq!(
        images.labels,
        (0..n).map(|k| (k % 10) as u8).collect::<Vec<_>>()
    );
    for k in 0..n {
        let img = images.image(k);
        for y in 0..32 {
            for x in 0..32 {
                let want = [(x * 7) as u8, (y * 5) as u8, 200u8.wrapping_add(k as u8)];
                assert_eq!(images.rgb(k, y, x), want, "image {k}, row {y}, column {x}");
                // Raw layout: channel-major, then row, then column.
                for (c, w) in want.iter().enumerate() {
                    assert_eq!(img[c * 1024 + y * 32 + x], *w);
                }
            }
        }
    }
}

#[test]
fn fixture_loads_through_hub_cache_with_correct_orientation() {
    let tmp = tempfile::tempdir().unwrap();
    let (pngs, labels) = fixture_pngs(12);
    let home = make_hf_home(tmp.path(), &[(Split::Train, &pngs, &labels)]);
    // Network allowed but never needed: the cache is looked at first. The endpoint
    // is unreachable on purpose, so a request would turn into an error.
    let opts = HubOptions {
        hf_home: Some(home.clone()),
        endpoint: Some("http://127.0.0.1:9".into()),
        local_files_only: false,
    };
    let path = loader::resolve_split_file(Split::Train, &opts).unwrap();
    assert!(path.ends_with(format!(
        "snapshots/{COMMIT}/plain_text/train-00000-of-00001.parquet"
    )));
    let images = loader::load_split_with(Split::Train, None, &opts).unwrap();
    check_fixture(&images, 12);

    let head = loader::load_split_with(Split::Train, Some(5), &opts).unwrap();
    check_fixture(&head, 5);
    assert_eq!(head, images.head(5));

    // Scaling to [-1, 1].
    let f = images.to_f64();
    let g = images.to_f32();
    for (i, &b) in images.pixels.iter().enumerate() {
        assert!((f[i] - (f64::from(b) / 127.5 - 1.0)).abs() < 1e-15);
        assert!((f64::from(g[i]) - f[i]).abs() < 1e-6);
    }
    assert_eq!(e2h_cifar::loader::byte_to_signed(0), -1.0);
    assert_eq!(e2h_cifar::loader::byte_to_signed(255), 1.0);
}

#[test]
fn missing_file_gives_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (pngs, labels) = fixture_pngs(2);
    // The cache has the train split only.
    let home = make_hf_home(tmp.path(), &[(Split::Train, &pngs, &labels)]);
    for opts in [
        HubOptions {
            hf_home: Some(home.clone()),
            endpoint: None,
            local_files_only: true,
        },
        // The network is tried and fails (connection refused).
        HubOptions {
            hf_home: Some(home.clone()),
            endpoint: Some("http://127.0.0.1:9".into()),
            local_files_only: false,
        },
    ] {
        let err = loader::load_split_with(Split::Test, None, &opts).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CifarError::NotAvailable { .. }), "{err:?}");
        assert!(
            msg.contains("plain_text/test-00000-of-00001.parquet"),
            "{msg}"
        );
        assert!(msg.contains("uoft-cs/cifar10"), "{msg}");
        assert!(msg.contains("HF_HOME"), "{msg}");
        assert!(
            msg.contains(&home.join("hub").display().to_string()),
            "{msg}"
        );
        eprintln!("{msg}");
    }
    // An empty HF_HOME (no refs, no snapshots) fails the same way.
    let empty = tempfile::tempdir().unwrap();
    let err = loader::load_split_with(
        Split::Train,
        None,
        &HubOptions {
            hf_home: Some(empty.path().to_path_buf()),
            endpoint: None,
            local_files_only: true,
        },
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("plain_text/train-00000-of-00001.parquet"),
        "{err}"
    );
}

#[test]
fn bad_parquet_content_names_the_file_and_row() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.parquet");
    let err = loader::load_parquet(&missing, None).unwrap_err();
    assert!(matches!(err, CifarError::Io { .. }));
    assert!(err.to_string().contains("nope.parquet"), "{err}");

    // Row 1 holds garbage instead of a PNG.
    let (mut pngs, labels) = fixture_pngs(3);
    pngs[1] = b"not a png".to_vec();
    let path = tmp.path().join("bad.parquet");
    write_parquet(&path, &pngs, &labels);
    let err = loader::load_parquet(&path, None).unwrap_err();
    assert!(matches!(err, CifarError::Png { row: 1, .. }), "{err:?}");
    assert!(err.to_string().contains("bad.parquet"), "{err}");

    // A label out of range.
    let (pngs, _) = fixture_pngs(2);
    let path = tmp.path().join("label.parquet");
    write_parquet(&path, &pngs, &[3, 10]);
    let err = loader::load_parquet(&path, None).unwrap_err();
    assert!(
        matches!(
            err,
            CifarError::Label {
                row: 1,
                label: Some(10),
                ..
            }
        ),
        "{err:?}"
    );

    // A wrong image size.
    let small = png(&RgbImage::new(16, 32));
    let path = tmp.path().join("size.parquet");
    write_parquet(&path, &[small], &[0]);
    let err = loader::load_parquet(&path, None).unwrap_err();
    assert!(
        matches!(
            err,
            CifarError::ImageSize {
                width: 16,
                height: 32,
                ..
            }
        ),
        "{err:?}"
    );
}

/// Run in a child process with HF_HOME set (environment variables cannot be set
/// safely inside a multi-threaded test binary): the default loader must find the
/// cache through HF_HOME alone.
#[test]
fn hf_home_environment_variable_is_honoured() {
    if std::env::var_os("E2H_CIFAR_TEST_CHILD").is_some() {
        return; // the child runs `child_load_from_env` only
    }
    let tmp = tempfile::tempdir().unwrap();
    let (pngs, labels) = fixture_pngs(4);
    let home = make_hf_home(tmp.path(), &[(Split::Test, &pngs, &labels)]);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "child_load_from_env",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("E2H_CIFAR_TEST_CHILD", "1")
        .env("HF_HOME", &home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HUGGINGFACE_HUB_CACHE")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(
        text.contains("child loaded 4 images"),
        "child did not run:\n{text}"
    );
}

#[test]
fn child_load_from_env() {
    if std::env::var_os("E2H_CIFAR_TEST_CHILD").is_none() {
        return; // only meaningful inside `hf_home_environment_variable_is_honoured`
    }
    let images = loader::load_split(Split::Test, None).unwrap();
    check_fixture(&images, 4);
    println!("child loaded {} images", images.n);
}

/// The prepared cache of the full CIFAR-10: E2H_CIFAR_HF_HOME, else
/// `shared/data/hf-home` beside the workspace.
fn real_hf_home() -> Option<PathBuf> {
    let candidate = std::env::var_os("E2H_CIFAR_HF_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            manifest_dir().join("../../../shared/data/hf-home")
        });
    candidate
        .join(REPO_DIR)
        .join("refs/main")
        .is_file()
        .then_some(candidate)
}

#[test]
fn real_cifar10_matches_known_statistics() {
    let Some(home) = real_hf_home() else {
        println!(
            "skipped: no CIFAR-10 hub cache (set E2H_CIFAR_HF_HOME or provide shared/data/hf-home)"
        );
        return;
    };
    let opts = HubOptions {
        hf_home: Some(home),
        endpoint: None,
        local_files_only: true,
    };
    let train = loader::load_split_with(Split::Train, None, &opts).unwrap();
    assert_eq!(train.n, 50_000);
    assert_eq!(train.class_counts(), [5000; 10]);
    assert_eq!(train.rgb(0, 0, 0), [59, 62, 63]);
    assert_eq!(train.rgb(0, 0, 1), [43, 46, 45]);
    let plane = 1024;
    let mut sums = [0u64; 3];
    for img in train.pixels.chunks_exact(DIM) {
        for (c, s) in sums.iter_mut().enumerate() {
            *s += img[c * plane..(c + 1) * plane]
                .iter()
                .map(|&b| u64::from(b))
                .sum::<u64>();
        }
    }
    let means: Vec<f64> = sums
        .iter()
        .map(|&s| s as f64 / (50_000.0 * 1024.0 * 255.0))
        .collect();
    for (m, want) in means.iter().zip([0.4914, 0.4822, 0.4465]) {
        assert!((m - want).abs() < 1e-3, "channel means {means:?}");
    }

    let test = loader::load_split_with(Split::Test, None, &opts).unwrap();
    assert_eq!(test.n, 10_000);
    assert_eq!(test.class_counts(), [1000; 10]);
    assert_eq!(test.rgb(0, 0, 0), [158, 112, 49]);
}

/// This crate's folder, as `cargo test` sets it when the test runs (not when it
/// was compiled: one test binary may serve another clone through a shared target).
fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
}
