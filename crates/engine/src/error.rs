use std::fmt;
use std::path::PathBuf;

/// A position in a pipeline file, for messages that point at the culprit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted path of the offending field, e.g. `stages.sim.params.d`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "field `{}`: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Error of a stage's own computation (boxed: stage kinds live outside the engine).
pub type StageError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Pipeline(Box<Located>),
    #[error("cannot read pipeline {path}: {source}")]
    ReadPipeline { path: PathBuf, source: std::io::Error },
    #[error("stage `{stage}` failed: {source}")]
    StageFailed { stage: String, source: StageError },
    #[error("cache I/O error at {path}: {source}")]
    CacheIo { path: PathBuf, source: std::io::Error },
    /// Storing a stage's result failed (a full disk, a file size limit): the
    /// cache error says which file, this says which stage and entry it was for.
    #[error("stage `{stage}`: cannot write cache entry {key}: {source}")]
    EntryWrite { stage: String, key: String, source: Box<EngineError> },
    #[error("cache entry {path} is unusable: {reason}")]
    CacheCorrupt { path: PathBuf, reason: String },
    #[error("table `{table}` in {path}: {source}")]
    Table { path: PathBuf, table: String, source: polars::error::PolarsError },
    #[error("cannot write table `{table}` to {path}: {source}")]
    WriteTable { path: PathBuf, table: String, source: polars::error::PolarsError },
    /// A single instance was asked for before its upstream was computed.
    #[error("stage `{stage}` cannot run: its upstream `{upstream}` is not ready: {reason}")]
    UpstreamNotReady { stage: String, upstream: String, reason: String },
    /// A kind wrote a table other than it declares (`Stage::tables`).
    #[error("{message}")]
    TableDeclaration { table: String, message: String },
    #[error("stage `{stage}` has no input named `{input}`")]
    NoSuchInput { stage: String, input: String },
    #[error("input `{input}` of stage `{stage}` has no table `{table}`")]
    NoSuchTable { stage: String, input: String, table: String },
    #[error("cannot adopt an entry for stage `{stage}`: {reason}")]
    Adopt { stage: String, reason: String },
    /// A publish target that resolves outside the output folder (through a
    /// symbolic link, say) or into the cache.
    #[error("refusing to publish to {path}: {reason}")]
    PublishOutside { path: PathBuf, reason: String },
    #[error("no stage named `{name}` in this pipeline; its stages: {known}")]
    UnknownStage { name: String, known: String },
    #[error("cannot publish {from} to {to}: {source}")]
    Publish { from: PathBuf, to: PathBuf, source: std::io::Error },
}

impl EngineError {
    pub(crate) fn located(
        file: &std::path::Path,
        (line, column): (usize, usize),
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        EngineError::Pipeline(Box::new(Located {
            file: file.to_path_buf(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }))
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| EngineError::CacheIo { path, source }
    }

    /// The location, when the error is a located pipeline error.
    pub fn location(&self) -> Option<&Located> {
        match self {
            EngineError::Pipeline(l) => Some(l),
            _ => None,
        }
    }
}
