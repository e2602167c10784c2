//! The documented limits every pipeline is held to, so that no pipeline file
//! can write outside the project, exhaust the machine, or jam the cache.
//! (README: "Limits".)

/// The folder, relative to the project root, that `publish:` stems must lie in.
pub const OUTPUT_DIR: &str = "figures";

/// Most stage instances one plan may hold (every stage's sweep points together).
/// Counted before any instance is built.
pub const MAX_INSTANCES: u64 = 10_000;

/// Most bytes one stage instance may allocate, as estimated by its kind from its
/// params (`Stage::footprint`) before anything runs.
pub const STAGE_MEMORY_BUDGET: f64 = 8.0 * (1u64 << 30) as f64;

/// Longest pipeline, profile or stage name: names become parts of file names.
pub const MAX_NAME_LEN: usize = 64;

/// Longest file name the cache or a published figure gets from names and
/// sweep values; longer ones are shortened with a hash of the whole.
pub const MAX_FILE_NAME_LEN: usize = 120;

/// Deepest nesting of YAML collections a pipeline file may have.
pub const MAX_YAML_DEPTH: usize = 64;

/// Whether `name` may become (part of) a file name: ASCII letters, digits,
/// `_`, `-` and `.`, starting with a letter, digit or `_`, at most
/// [`MAX_NAME_LEN`] characters. Returns why not.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("is {} characters long; at most {MAX_NAME_LEN} are allowed", name.len()));
    }
    let first = name.chars().next().expect("not empty");
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return Err("must start with an ASCII letter, a digit or `_`".into());
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "_-.".contains(*c))) {
        return Err(format!("contains `{}`; only ASCII letters, digits, `_`, `-` and `.` are allowed", bad.escape_default()));
    }
    Ok(())
}

/// `s` as one file name: characters outside `[A-Za-z0-9_.=-]` become `_`, a
/// leading `.` becomes `_`, and a name longer than [`MAX_FILE_NAME_LEN`] is cut
/// and ends in a hash of the whole (so distinct long names stay distinct).
pub fn file_name_component(s: &str) -> String {
    let mut out: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || "_.=-".contains(c) { c } else { '_' }).collect();
    if out.starts_with('.') || out.is_empty() {
        out.insert(0, '_');
    }
    if out.len() > MAX_FILE_NAME_LEN {
        let hash = blake3::hash(s.as_bytes()).to_hex();
        out.truncate(MAX_FILE_NAME_LEN - 17);
        out.push('-');
        out.push_str(&hash[..16]);
    }
    out
}

/// Checks a `publish:` stem: a relative path of plain names under
/// [`OUTPUT_DIR`], e.g. `figures/fig2` or `figures/ablations/fig2-activation`.
pub fn check_publish_stem(stem: &str) -> Result<(), String> {
    let hint = format!("`publish:` must be a path under {OUTPUT_DIR}/, like `{OUTPUT_DIR}/my-figure`");
    if stem.contains('\\') {
        return Err(format!("`{stem}` contains `\\`; {hint}"));
    }
    let parts: Vec<&str> = stem.split('/').collect();
    if parts.first() != Some(&OUTPUT_DIR) || parts.len() < 2 {
        return Err(format!("`{stem}` is not inside {OUTPUT_DIR}/; {hint}"));
    }
    for part in &parts[1..] {
        if *part == ".." || *part == "." || part.is_empty() {
            return Err(format!("`{stem}` has a `{part}` segment; {hint}"));
        }
        check_name(part).map_err(|why| format!("`{stem}`: segment `{part}` {why}; {hint}"))?;
    }
    Ok(())
}

/// Whether `path` is relative and made of plain names only (no `..`, `.`,
/// empty segments, backslashes or absolute roots).
pub fn is_plain_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\\')
        && path.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", ".hidden", "a b", "é", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["ci", "paper", "fig2-mcm_easy.v2", "_x", &"x".repeat(64)] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn publish_stems_stay_in_the_output_folder() {
        for bad in ["", ".", "..", "figures", "figures/", "figures/../x", "figures/./x", "/tmp/x", "cache/entries/x", "figures//x", "figures/a/../../x", "../figures/x", "figures\\x"] {
            assert!(check_publish_stem(bad).is_err(), "{bad:?}");
        }
        for good in ["figures/fig2", "figures/ablations/fig2-activation"] {
            assert!(check_publish_stem(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn long_file_names_are_shortened_and_stay_distinct() {
        let a = file_name_component(&"a".repeat(300));
        let b = file_name_component(&format!("{}b", "a".repeat(299)));
        assert!(a.len() <= MAX_FILE_NAME_LEN && b.len() <= MAX_FILE_NAME_LEN);
        assert_ne!(a, b);
        assert_eq!(file_name_component("x[d=8]/.."), "x_d=8__..");
        assert_eq!(file_name_component(".."), "_..");
    }
}
