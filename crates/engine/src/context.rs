//! What a running stage sees: its seed, its inputs, and where to put outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::cache::{EntryMeta, TableMeta};
use crate::error::EngineError;
use crate::table;

/// One finished upstream entry (one per sweep instance of the upstream stage).
#[derive(Debug, Clone)]
pub struct UpstreamEntry {
    /// Instance name, e.g. `sim[activation=relu]`.
    pub stage: String,
    /// Swept parameter values of this instance (empty when not swept).
    pub sweep: BTreeMap<String, serde_json::Value>,
    pub dir: PathBuf,
    pub meta: EntryMeta,
}

impl UpstreamEntry {
    pub fn params(&self) -> &serde_json::Value {
        &self.meta.params
    }

    pub fn table(&self, name: &str) -> Result<DataFrame, EngineError> {
        let t = self.meta.tables.get(name).ok_or_else(|| EngineError::NoSuchTable {
            stage: self.stage.clone(),
            input: self.stage.clone(),
            table: name.into(),
        })?;
        let path = self.dir.join(&t.file);
        table::read_parquet(&path).map_err(|source| EngineError::Table { path, table: name.into(), source })
    }

    /// The table with one extra column per swept parameter (its value).
    pub fn table_with_sweep_columns(&self, name: &str) -> Result<DataFrame, EngineError> {
        let mut df = self.table(name)?;
        let n = df.height();
        for (param, value) in &self.sweep {
            if df.get_column_names().iter().any(|c| c.as_str() == param) {
                continue;
            }
            let col: Column = match value {
                serde_json::Value::Number(x) => Column::new(param.into(), vec![x.as_f64().unwrap_or(f64::NAN); n]),
                serde_json::Value::String(s) => Column::new(param.into(), vec![s.clone(); n]),
                other => Column::new(param.into(), vec![other.to_string(); n]),
            };
            df.with_column(col).map_err(|source| EngineError::Table {
                path: self.dir.clone(),
                table: name.into(),
                source,
            })?;
        }
        Ok(df)
    }

    pub fn file(&self, name: &str) -> Option<PathBuf> {
        self.meta.files.contains_key(name).then(|| self.dir.join(name))
    }
}

/// A progress reporter handed to long computations.
pub struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The context of one running stage instance.
pub struct StageContext {
    pub(crate) name: String,
    pub(crate) seed: u64,
    pub(crate) inputs: BTreeMap<String, Vec<UpstreamEntry>>,
    pub(crate) out_dir: PathBuf,
    pub(crate) scratch_dir: PathBuf,
    pub(crate) tables: BTreeMap<String, TableMeta>,
    pub(crate) info: BTreeMap<String, serde_json::Value>,
    pub(crate) show_progress: bool,
    /// The swept params of this instance, written as columns into its tables.
    pub(crate) sweep: BTreeMap<String, serde_json::Value>,
    /// The tables the kind declares (empty: not declared).
    pub(crate) declared: Vec<crate::registry::TableDoc>,
}

impl StageContext {
    /// The stage instance's name (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// All instances of the upstream bound to input `name`.
    pub fn input(&self, name: &str) -> Result<&[UpstreamEntry], EngineError> {
        self.inputs
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| EngineError::NoSuchInput { stage: self.name.clone(), input: name.into() })
    }

    pub fn input_names(&self) -> Vec<&str> {
        self.inputs.keys().map(String::as_str).collect()
    }

    /// Table `table` of input `name`, every sweep instance stacked, with the
    /// swept parameters as columns.
    pub fn input_table(&self, name: &str, table: &str) -> Result<DataFrame, EngineError> {
        let frames = self
            .input(name)?
            .iter()
            .map(|e| e.table_with_sweep_columns(table))
            .collect::<Result<Vec<_>, _>>()?;
        table::concat(frames).map_err(|source| EngineError::Table {
            path: PathBuf::from(name),
            table: table.into(),
            source,
        })
    }

    /// Stores a table; `columns` gives each column's definition and unit, and is
    /// written both into the parquet metadata and into `meta.json`. The
    /// instance's swept params are added as columns (when the table lacks them).
    /// A kind that declares its tables ([`crate::Stage::tables`]) must write
    /// exactly the declared columns; their declared definitions fill in any not
    /// given here, so every column is defined.
    pub fn put_table(&mut self, name: &str, df: &mut DataFrame, columns: &[(&str, &str)]) -> Result<(), EngineError> {
        let file = format!("{name}.parquet");
        let path = self.out_dir.join(&file);
        let mut columns: BTreeMap<String, String> = columns.iter().map(|(c, d)| (c.to_string(), d.to_string())).collect();
        let undeclared = |message: String| EngineError::TableDeclaration { table: name.into(), message };
        if !self.declared.is_empty() {
            let Some(doc) = self.declared.iter().find(|t| t.name == name) else {
                return Err(undeclared(format!("the kind does not declare a table `{name}`")));
            };
            let written: Vec<String> = df.get_column_names().iter().map(|c| c.to_string()).collect();
            let missing: Vec<&str> = doc.column_names().into_iter().filter(|c| !written.iter().any(|w| w == c)).collect();
            let extra: Vec<&str> = written.iter().map(String::as_str).filter(|w| !doc.has_column(w)).collect();
            if !missing.is_empty() || !extra.is_empty() {
                return Err(undeclared(format!(
                    "table `{name}` differs from its declaration: missing [{}], undeclared [{}]",
                    missing.join(", "),
                    extra.join(", ")
                )));
            }
            for (c, d) in &doc.columns {
                columns.entry(c.clone()).or_insert_with(|| d.clone());
            }
        }
        let n = df.height();
        for (param, value) in &self.sweep {
            if df.get_column_names().iter().any(|c| c.as_str() == param) {
                continue;
            }
            let col: Column = match value {
                serde_json::Value::Number(x) => Column::new(param.into(), vec![x.as_f64().unwrap_or(f64::NAN); n]),
                serde_json::Value::String(s) => Column::new(param.into(), vec![s.clone(); n]),
                other => Column::new(param.into(), vec![other.to_string(); n]),
            };
            df.with_column(col).map_err(|source| EngineError::WriteTable {
                path: path.clone(),
                table: name.into(),
                source,
            })?;
            columns.entry(param.clone()).or_insert_with(|| format!("swept parameter `{param}` of this instance"));
        }
        let kv = vec![
            ("e2h.stage".to_string(), self.name.clone()),
            ("e2h.columns".to_string(), serde_json::to_string(&columns).expect("strings serialize")),
        ];
        table::write_parquet_described(df, &path, &kv, &columns).map_err(|source| EngineError::WriteTable {
            path: path.clone(),
            table: name.into(),
            source,
        })?;
        self.tables.insert(name.into(), TableMeta { file, rows: df.height(), columns });
        Ok(())
    }

    /// Path where the stage may write a file artefact (a figure, a checkpoint).
    pub fn output_path(&self, file_name: &str) -> PathBuf {
        self.out_dir.join(file_name)
    }

    /// A directory that survives an interrupted run of this same stage (same
    /// key), for checkpoints; removed once the stage's entry is committed.
    pub fn scratch_dir(&self) -> Result<&Path, EngineError> {
        std::fs::create_dir_all(&self.scratch_dir).map_err(EngineError::io(&self.scratch_dir))?;
        Ok(&self.scratch_dir)
    }

    /// Records a fact in the entry's metadata (device, precision, counts).
    pub fn record(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.info.insert(key.into(), value.into());
    }

    /// A progress bar of `total` units (hidden when stderr is not a terminal).
    pub fn progress(&self, total: u64, what: &str) -> Progress {
        let bar = if self.show_progress {
            indicatif::ProgressBar::new(total)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix:.bold} {msg} [{bar:30}] {percent}% eta {eta}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix(self.name.clone());
        bar.set_message(what.to_string());
        Progress { bar }
    }
}
