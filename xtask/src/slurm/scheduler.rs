//! The Slurm commands the driver calls: `sbatch`, `squeue`, `scancel`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::Context as _;

/// Submits `script`, after the jobs in `after` succeeded; returns the job id.
/// `extra` (site options such as `--account=X`) comes last on the command
/// line, so it overrides the script's `#SBATCH` lines.
pub fn submit(script: &Path, after: &[String], extra: &[String]) -> anyhow::Result<String> {
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable");
    if !after.is_empty() {
        cmd.arg(format!("--dependency=afterok:{}", after.join(":")));
    }
    cmd.args(extra).arg(script);
    let out = cmd.output().context("cannot run `sbatch`: is Slurm installed and on PATH?")?;
    anyhow::ensure!(
        out.status.success(),
        "sbatch {} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    // `--parsable` prints `jobid` or `jobid;cluster`.
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text.trim().split(';').next().unwrap_or_default().to_string();
    anyhow::ensure!(!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()), "sbatch printed no job id: {text:?}");
    Ok(id)
}

/// Cancels these jobs (whole arrays when given an array's id). Best effort:
/// jobs that already ended are not an error.
pub fn cancel(ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    match Command::new("scancel").args(ids).output() {
        Ok(out) if !out.status.success() => {
            tracing::debug!("scancel {}: {}", ids.join(" "), String::from_utf8_lossy(&out.stderr).trim())
        }
        Err(e) => tracing::warn!("cannot run scancel: {e}"),
        _ => {}
    }
}

/// Slurm's view of one job or array task.
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    pub state: String,
    pub reason: String,
}

impl JobView {
    pub fn is_pending(&self) -> bool {
        matches!(self.state.as_str(), "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD" | "SUSPENDED")
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state.as_str(), "RUNNING" | "CONFIGURING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" | "RESIZING")
    }
}

/// What Slurm knows of these jobs, by `id` or `id_task` for array tasks.
/// `Ok(None)` when the controller cannot be asked right now. Jobs that ended
/// more than `MinJobAge` ago are not listed: their absence means "ended,
/// outcome unknown".
pub fn query(ids: &[String]) -> anyhow::Result<Option<BTreeMap<String, JobView>>> {
    let out = Command::new("squeue")
        .args(["--noheader", "--states=all", "--array", "--format=%i|%T|%r", "--jobs"])
        .arg(ids.join(","))
        .output()
        .context("cannot run `squeue`")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // Every id unknown: all of them ended long enough ago to be forgotten.
        if err.contains("Invalid job id") {
            return Ok(Some(BTreeMap::new()));
        }
        tracing::debug!("squeue failed: {}", err.trim());
        return Ok(None);
    }
    Ok(Some(parse_squeue(&String::from_utf8_lossy(&out.stdout))))
}

fn parse_squeue(text: &str) -> BTreeMap<String, JobView> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.trim().splitn(3, '|');
            let id = parts.next()?.to_string();
            let state = parts.next()?.to_string();
            let reason = parts.next().unwrap_or_default().to_string();
            (!id.is_empty()).then_some((id, JobView { state, reason }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines_are_read_per_array_task() {
        let views = parse_squeue("12_0|COMPLETED|None\n12_1|RUNNING|None\n13|CANCELLED|DependencyNeverSatisfied\n");
        assert_eq!(views.len(), 3);
        assert!(views["12_1"].is_running());
        assert_eq!(views["13"], JobView { state: "CANCELLED".into(), reason: "DependencyNeverSatisfied".into() });
    }
}
