//! Parquet I/O through polars, and small column helpers that avoid pulling in
//! polars' lazy engine (a large compile) for the few operations needed.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use polars::prelude::*;

/// Writes `df` as parquet with string key-value metadata (units, definitions).
///
/// A failed write (a full disk) is reported as the I/O error itself: polars
/// reports it as a parquet "file out of specification" error.
pub fn write_parquet(df: &mut DataFrame, path: &Path, metadata: &[(String, String)]) -> PolarsResult<u64> {
    let mut file = IoErrorKeeper { file: File::create(path)?, first_error: None };
    let kv = KeyValueMetadata::from_static(metadata.to_vec());
    let written = ParquetWriter::new(&mut file)
        .with_compression(ParquetCompression::Zstd(None))
        .with_key_value_metadata(Some(kv))
        .finish(df);
    match (written, file.first_error) {
        (Err(_), Some(io)) => Err(PolarsError::IO { error: Arc::new(io), msg: None }),
        (written, _) => written,
    }
}

/// Writes `df` like [`write_parquet`], with each column's definition also in
/// its Arrow field metadata (key `description`), so that Arrow readers show it
/// per column (`pyarrow.parquet.read_table(f).schema.field("x").metadata`).
pub fn write_parquet_described(
    df: &mut DataFrame,
    path: &Path,
    metadata: &[(String, String)],
    definitions: &std::collections::BTreeMap<String, String>,
) -> PolarsResult<u64> {
    // The writer stores the Arrow schema it derives from the frame under
    // `ARROW:schema` unless given one: give it the same schema, described.
    let mut schema = df.schema().to_arrow(CompatLevel::newest());
    for field in schema.iter_values_mut() {
        if let Some(definition) = definitions.get(field.name.as_str()) {
            let mut md = field.metadata.as_deref().cloned().unwrap_or_default();
            md.insert("description".into(), definition.as_str().into());
            field.metadata = Some(Arc::new(md));
        }
    }
    let arrow_schema = polars_parquet::write::schema_to_metadata_key(&schema);
    let mut kv = metadata.to_vec();
    if let Some(value) = arrow_schema.value {
        kv.push((arrow_schema.key, value));
    }
    write_parquet(df, path, &kv)
}

/// A file that remembers the first error its writes returned.
struct IoErrorKeeper {
    file: File,
    first_error: Option<io::Error>,
}

impl IoErrorKeeper {
    fn keep<T>(&mut self, result: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &result
            && self.first_error.is_none()
        {
            // io::Error is not Clone: rebuild it (OS errors exactly, by their code).
            self.first_error =
                Some(e.raw_os_error().map_or_else(|| io::Error::new(e.kind(), e.to_string()), io::Error::from_raw_os_error));
        }
        result
    }
}

impl Write for IoErrorKeeper {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.file.write(buf);
        self.keep(result)
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = self.file.flush();
        self.keep(result)
    }
}

pub fn read_parquet(path: &Path) -> PolarsResult<DataFrame> {
    let file = File::open(path)?;
    ParquetReader::new(file).finish()
}

/// A numeric column as f64 (nulls become NaN).
pub fn column_f64(df: &DataFrame, name: &str) -> PolarsResult<Vec<f64>> {
    let s = df.column(name)?.as_materialized_series().cast(&DataType::Float64)?;
    Ok(s.f64()?.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

/// A column rendered as strings (numbers formatted, nulls as `null`).
pub fn column_string(df: &DataFrame, name: &str) -> PolarsResult<Vec<String>> {
    let s = df.column(name)?.as_materialized_series();
    if let Ok(ca) = s.str() {
        return Ok(ca.iter().map(|v| v.unwrap_or("null").to_string()).collect());
    }
    Ok((0..s.len()).map(|i| s.get(i).map(|v| v.to_string()).unwrap_or_default()).collect())
}

/// Rows of `df` whose column `name` equals `value` (numbers compared numerically).
pub fn filter_eq(df: &DataFrame, name: &str, value: &serde_json::Value) -> PolarsResult<DataFrame> {
    let mask: Vec<bool> = match value {
        serde_json::Value::Number(n) => {
            let target = n.as_f64().unwrap_or(f64::NAN);
            column_f64(df, name)?
                .iter()
                .map(|v| (v - target).abs() <= 1e-12 * target.abs().max(1.0))
                .collect()
        }
        serde_json::Value::Bool(b) => column_string(df, name)?.iter().map(|v| v == &b.to_string()).collect(),
        serde_json::Value::String(s) => column_string(df, name)?.iter().map(|v| v == s).collect(),
        other => column_string(df, name)?.iter().map(|v| v == &other.to_string()).collect(),
    };
    df.filter(&BooleanChunked::from_slice("mask".into(), &mask))
}

/// Vertical concatenation, columns matched by name (schemas must agree).
pub fn concat(frames: Vec<DataFrame>) -> PolarsResult<DataFrame> {
    let mut iter = frames.into_iter();
    let Some(mut acc) = iter.next() else {
        return Ok(DataFrame::empty());
    };
    for df in iter {
        let df = df.select(acc.get_column_names_owned())?;
        acc.vstack_mut(&df)?;
    }
    acc.align_chunks_par();
    Ok(acc)
}
