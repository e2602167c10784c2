//! What a stage instance asks of a batch scheduler: CPUs, memory, wall time,
//! GPUs and a partition. Never part of a cache key (results do not depend on
//! where they were computed); read only by executors that submit jobs.

use serde::{Deserialize, Deserializer, Serialize};

/// Resources of one stage, as declared (`resources:` of a stage or of a
/// profile's stage override) or as resolved for an instance (the kind's
/// defaults, then the stage's, then the profile's, field by field).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU cores (threads) of the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Memory, in Slurm's notation: a number of megabytes or a number with a
    /// K, M, G or T suffix (`500M`, `16G`).
    #[serde(default, deserialize_with = "string_or_number", skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    /// Wall-time limit, in Slurm's notation: minutes, `MM:SS`, `HH:MM:SS`,
    /// `D-HH`, `D-HH:MM` or `D-HH:MM:SS`.
    #[serde(default, deserialize_with = "string_or_number", skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// GPUs of the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// Scheduler partition (queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
}

impl Resources {
    /// `self` with every field that `over` sets replaced by `over`'s.
    pub fn overlay(&self, over: &Resources) -> Resources {
        Resources {
            cpus: over.cpus.or(self.cpus),
            mem: over.mem.clone().or_else(|| self.mem.clone()),
            time: over.time.clone().or_else(|| self.time.clone()),
            gpus: over.gpus.or(self.gpus),
            partition: over.partition.clone().or_else(|| self.partition.clone()),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Resources::default()
    }

    /// Checks the notation of every field; on error, the field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.cpus == Some(0) {
            return Err(("cpus", "must be at least 1".into()));
        }
        if let Some(mem) = &self.mem
            && !valid_mem(mem) {
                return Err(("mem", format!("expected megabytes or a number with a K, M, G or T suffix (e.g. 16G), got {mem:?}")));
            }
        if let Some(time) = &self.time
            && !valid_time(time) {
                return Err(("time", format!("expected minutes, MM:SS, HH:MM:SS or D-HH[:MM[:SS]] (e.g. 2:00:00), got {time:?}")));
            }
        if let Some(p) = &self.partition
            && (p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.,".contains(c))) {
                return Err(("partition", format!("expected a partition name (letters, digits, - _ . and commas), got {p:?}")));
            }
        Ok(())
    }
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn valid_mem(mem: &str) -> bool {
    let number = mem.strip_suffix(['K', 'M', 'G', 'T']).unwrap_or(mem);
    digits(number) && number.bytes().any(|b| b != b'0')
}

fn valid_time(time: &str) -> bool {
    match time.split_once('-') {
        // D-HH, D-HH:MM, D-HH:MM:SS
        Some((days, rest)) => digits(days) && {
            let parts: Vec<&str> = rest.split(':').collect();
            parts.len() <= 3 && parts.iter().all(|p| digits(p))
        },
        // MM, MM:SS, HH:MM:SS
        None => {
            let parts: Vec<&str> = time.split(':').collect();
            parts.len() <= 3 && parts.iter().all(|p| digits(p)) && time.bytes().any(|b| b.is_ascii_digit() && b != b'0')
        }
    }
}

/// `mem: 4000` and `time: 30` are numbers in YAML; they mean what Slurm reads.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Number(u64),
    }
    Ok(Option::<Either>::deserialize(d)?.map(|e| match e {
        Either::Text(s) => s,
        Either::Number(n) => n.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notations_slurm_reads_pass_and_others_fail() {
        for mem in ["4000", "500M", "16G", "1T", "64K"] {
            assert!(valid_mem(mem), "{mem}");
        }
        for mem in ["", "G", "16GB", "1.5G", "-1", "0", "0G", "16 G"] {
            assert!(!valid_mem(mem), "{mem}");
        }
        for time in ["30", "30:00", "2:00:00", "1-0", "1-12:00", "2-00:00:00"] {
            assert!(valid_time(time), "{time}");
        }
        for time in ["", "0", "1h", "1:2:3:4", "1-", "-1", "1-2:3:4:5", "a:00"] {
            assert!(!valid_time(time), "{time}");
        }
    }

    #[test]
    fn an_overlay_replaces_only_the_fields_it_sets() {
        let base = Resources { cpus: Some(2), mem: Some("4G".into()), gpus: Some(1), ..Resources::default() };
        let over = Resources { cpus: Some(8), partition: Some("long".into()), ..Resources::default() };
        let r = base.overlay(&over);
        assert_eq!(r, Resources { cpus: Some(8), mem: Some("4G".into()), time: None, gpus: Some(1), partition: Some("long".into()) });
    }

    #[test]
    fn numbers_are_read_as_slurm_reads_them_and_unknown_fields_are_errors() {
        let r: Resources = serde_yaml::from_str("{mem: 4000, time: 30, cpus: 2}").unwrap();
        assert_eq!((r.mem.as_deref(), r.time.as_deref(), r.cpus), (Some("4000"), Some("30"), Some(2)));
        let e = serde_yaml::from_str::<Resources>("{cpu: 2}").unwrap_err().to_string();
        assert!(e.contains("unknown field `cpu`"), "{e}");
        assert_eq!(Resources { cpus: Some(0), ..Resources::default() }.validate().unwrap_err().0, "cpus");
        assert_eq!(Resources { partition: Some("a b".into()), ..Resources::default() }.validate().unwrap_err().0, "partition");
    }
}
