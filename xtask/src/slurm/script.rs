//! The batch script of one job: one declared stage's instances that must
//! run, as a job array when there are several, each task running
//! `xtask run-stage` for its instance and recording its exit status.

use std::path::{Path, PathBuf};

use e2h_engine::Resources;

/// One submission: instances of one declared stage with the same resources.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The declared stage name.
    pub stage: String,
    /// File stem of the script, the logs and the markers (unique per run).
    pub stem: String,
    pub pipeline: String,
    pub profile: String,
    /// (instance name, key, forced) of each array task, in task order.
    pub tasks: Vec<(String, String, bool)>,
    pub resources: Resources,
}

/// Absolute paths a job needs: it runs on another machine, in another directory.
#[derive(Debug, Clone)]
pub struct Paths {
    pub binary: PathBuf,
    pub root: PathBuf,
    pub cache: PathBuf,
    pub pipeline_file: PathBuf,
    /// Where scripts, logs and markers go (on the shared file system).
    pub run_dir: PathBuf,
}

impl JobSpec {
    pub fn script_path(&self, paths: &Paths) -> PathBuf {
        paths.run_dir.join(format!("{}.sh", self.stem))
    }

    pub fn log_path(&self, paths: &Paths, task: usize) -> PathBuf {
        paths.run_dir.join(format!("{}.{task}.log", self.stem))
    }

    pub fn marker_path(&self, paths: &Paths, task: usize) -> PathBuf {
        paths.run_dir.join(format!("{}.{task}.status", self.stem))
    }

    pub fn is_array(&self) -> bool {
        self.tasks.len() > 1
    }

    /// The id of task `task` of this job as Slurm prints it.
    pub fn task_id(&self, job: &str, task: usize) -> String {
        if self.is_array() { format!("{job}_{task}") } else { job.to_string() }
    }

    pub fn render(&self, paths: &Paths) -> String {
        let run_dir = paths.run_dir.display().to_string();
        let mut s = String::from("#!/bin/bash\n");
        s += &format!(
            "# Stage `{}` of pipeline {} (profile {}): {} instance{}.\n",
            self.stage,
            self.pipeline,
            self.profile,
            self.tasks.len(),
            if self.is_array() { "s, one array task each" } else { "" }
        );
        let mut directive = |line: String| s.push_str(&format!("#SBATCH {line}\n"));
        directive(format!("--job-name=e2h-{}-{}", self.pipeline, self.stage));
        let log = if self.is_array() { format!("{run_dir}/{}.%a.log", self.stem) } else { format!("{run_dir}/{}.0.log", self.stem) };
        directive(format!("--output={log}"));
        if self.is_array() {
            directive(format!("--array=0-{}", self.tasks.len() - 1));
        }
        // Without it, a job whose upstream failed stays pending forever.
        directive("--kill-on-invalid-dep=yes".into());
        directive(format!("--chdir={}", paths.root.display()));
        directive(format!("--cpus-per-task={}", self.resources.cpus.unwrap_or(1)));
        if let Some(mem) = &self.resources.mem {
            directive(format!("--mem={mem}"));
        }
        if let Some(time) = &self.resources.time {
            directive(format!("--time={time}"));
        }
        if let Some(gpus) = self.resources.gpus.filter(|&g| g > 0) {
            directive(format!("--gres=gpu:{gpus}"));
        }
        if let Some(partition) = &self.resources.partition {
            directive(format!("--partition={partition}"));
        }
        s += "set -u\n";
        s += &format!("instances=({})\n", self.tasks.iter().map(|t| quote(&t.0)).collect::<Vec<_>>().join(" "));
        s += &format!("keys=({})\n", self.tasks.iter().map(|t| t.1.as_str()).collect::<Vec<_>>().join(" "));
        s += &format!("force=({})\n", self.tasks.iter().map(|t| if t.2 { "--force" } else { "''" }).collect::<Vec<_>>().join(" "));
        s += "task=${SLURM_ARRAY_TASK_ID:-0}\n";
        s += &format!("marker={}/{}.\"$task\".status\n", quote(&run_dir), quote(&self.stem));
        s += "# Simulations are bit-identical whatever the thread count; use what was granted.\n";
        s += "export RAYON_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}\n";
        s += &format!(
            "{} --root {} --cache {} run-stage {} --profile {} --instance \"${{instances[$task]}}\" --key \"${{keys[$task]}}\" --marker \"$marker\" ${{force[$task]:+\"${{force[$task]}}\"}}\n",
            quote_path(&paths.binary),
            quote_path(&paths.root),
            quote_path(&paths.cache),
            quote_path(&paths.pipeline_file),
            quote(&self.profile),
        );
        s += "status=$?\n";
        s += "# A run-stage that was killed or crashed wrote no marker: record the exit status.\n";
        s += "[ -s \"$marker\" ] || printf '{\"status\":\"failed\",\"exit\":%d}\\n' \"$status\" > \"$marker\"\n";
        s += "exit $status\n";
        s
    }
}

/// A word for bash, in single quotes.
pub fn quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn quote_path(p: &Path) -> String {
    quote(&p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_survive_bash_quoting() {
        assert_eq!(quote("u[d=16]"), "'u[d=16]'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("/a/b-c.yaml"), "/a/b-c.yaml");
        assert_eq!(quote(""), "''");
    }
}
