//! The pipeline engine: declarative YAML pipelines, a DAG of stages, and a
//! content-addressed cache of their outputs.
//!
//! The engine knows nothing of diffusion or of any science: stage kinds are
//! registered from outside through the [`Stage`] trait, and tables are polars
//! data frames stored as parquet.

mod error;
mod locate;
mod time;

pub mod adopt;
pub mod cache;
pub mod check;
pub mod context;
pub mod limits;
pub mod plan;
pub mod registry;
pub mod resources;
pub mod regress;
pub mod runner;
pub mod spec;
pub mod table;

pub use cache::{Cache, EntryStatus};
pub use context::{StageContext, UpstreamEntry};
pub use error::{EngineError, Located, StageError};
pub use plan::{Plan, PlannedStage};
pub use registry::{
    CodeFingerprints, Footprint, InputArity, InputTables, KindDoc, ParamDoc, ParamIssue, Registry, Stage, TableDoc,
};
pub use resources::Resources;
pub use runner::{RunOptions, RunReport, Runner, StageOutcome};
pub use spec::PipelineSpec;
