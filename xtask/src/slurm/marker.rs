//! The exit-status marker a job writes next to its log. Slurm forgets finished
//! jobs (and `sacct` needs an accounting database that many clusters lack), so
//! the driver learns a job's outcome from this file and from the cache.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// What one job (one stage instance) ended with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Marker {
    /// The instance's entry is in the cache: `computed` by this job, or found
    /// there (computed by another job or run meanwhile).
    Ok {
        instance: String,
        key: String,
        computed: bool,
        seconds: f64,
        #[serde(default)]
        job: String,
    },
    /// `run-stage` failed (`error` says why) or ended without a marker of its
    /// own (the job script then records only its exit status).
    Failed {
        #[serde(default)]
        instance: String,
        #[serde(default)]
        error: String,
        #[serde(default)]
        exit: Option<i32>,
        #[serde(default)]
        job: String,
    },
}

impl Marker {
    /// Written atomically: the driver never reads half a marker.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_vec(self)?;
        e2h_engine::cache::write_atomic(path, &json)?;
        Ok(())
    }

    /// None while the file is absent; an unreadable marker counts as a failure.
    pub fn read(path: &Path) -> Option<Marker> {
        let bytes = std::fs::read(path).ok()?;
        Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| Marker::Failed {
            instance: String::new(),
            error: format!("unreadable status marker {}: {e}", path.display()),
            exit: None,
            job: String::new(),
        }))
    }
}

/// The Slurm job id of the running job as users see it (`12_3` for a task of
/// array 12), or empty outside Slurm.
pub fn current_job_id() -> String {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID")) {
        (Some(array), Some(task)) => format!("{array}_{task}"),
        _ => var("SLURM_JOB_ID").unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_scripts_fallback_marker_reads_as_a_failure() {
        // What the job script writes when `run-stage` left no marker (killed, crashed).
        let m: Marker = serde_json::from_str(r#"{"status":"failed","exit":137}"#).unwrap();
        assert_eq!(m, Marker::Failed { instance: String::new(), error: String::new(), exit: Some(137), job: String::new() });
        let ok = Marker::Ok { instance: "sim[d=8]".into(), key: "ab".into(), computed: true, seconds: 1.5, job: "4_1".into() };
        assert_eq!(serde_json::from_slice::<Marker>(&serde_json::to_vec(&ok).unwrap()).unwrap(), ok);
    }
}
