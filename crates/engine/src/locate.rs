//! Finds the line and column of a key path in YAML source text.
//!
//! serde_yaml's `Value` forgets positions, so errors found after parsing (a bad
//! parameter, a missing upstream) are located by walking the text: each path
//! element is looked up as a mapping key indented deeper than its parent, and
//! within a flow mapping (`{d: 64}`) on the parent's line as a fallback.

/// 1-based (line, column) of the deepest element of `path` that can be found.
pub fn locate(source: &str, path: &[&str]) -> (usize, usize) {
    let lines: Vec<&str> = source.lines().collect();
    let mut scope_start = 0usize; // first line index of the current block
    let mut scope_indent: isize = -1; // keys of this block are indented deeper
    let mut best = (1, 1);
    'path: for key in path {
        let mut i = scope_start;
        while i < lines.len() {
            let line = lines[i];
            let content = strip_comment(line);
            if content.trim().is_empty() {
                i += 1;
                continue;
            }
            let indent = (line.len() - line.trim_start().len()) as isize;
            if i > scope_start && indent <= scope_indent {
                break; // left the parent's block
            }
            let trimmed = content.trim_start().trim_start_matches("- ");
            if key_matches(trimmed, key) {
                let col = line.find(key).map_or(indent as usize, |c| c) + 1;
                best = (i + 1, col);
                scope_start = i + 1;
                scope_indent = indent;
                // A flow mapping on the same line holds the children.
                if let Some(rest) = trimmed.split_once(':').map(|(_, r)| r) {
                    if rest.trim_start().starts_with('{') || rest.trim_start().starts_with('[') {
                        scope_start = i;
                    }
                }
                continue 'path;
            }
            // Flow mapping fallback: `parent: {key: value}` on one line.
            if i + 1 == scope_start || (i == scope_start && scope_start > 0) {
                if let Some(c) = flow_key_column(content, key) {
                    best = (i + 1, c + 1);
                    continue 'path;
                }
            }
            i += 1;
        }
        break;
    }
    best
}

fn strip_comment(line: &str) -> &str {
    match line.find(" #") {
        Some(i) => &line[..i],
        None if line.trim_start().starts_with('#') => "",
        None => line,
    }
}

fn key_matches(trimmed: &str, key: &str) -> bool {
    let unquoted = trimmed.trim_start_matches(['"', '\'']);
    unquoted.starts_with(key)
        && unquoted[key.len()..].trim_start_matches(['"', '\'']).trim_start().starts_with(':')
}

fn flow_key_column(content: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(pos) = content[from..].find(key) {
        let at = from + pos;
        let before = content[..at].trim_end().chars().last();
        let after = content[at + key.len()..].trim_start();
        if matches!(before, Some('{') | Some(',')) && after.starts_with(':') {
            return Some(at);
        }
        from = at + key.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::locate;

    const SRC: &str = "name: x\nstages:\n  sim:\n    kind: a\n    params:\n      d: 64 # dim\n      beta: 2\n  plot:\n    kind: b\n    params: {d: 3, e: 4}\nprofiles:\n  ci:\n    sim:\n      params:\n        d: 8\n";

    #[test]
    fn block_keys() {
        assert_eq!(locate(SRC, &["stages", "sim", "params", "d"]), (6, 7));
        assert_eq!(locate(SRC, &["stages", "sim", "params", "beta"]), (7, 7));
        assert_eq!(locate(SRC, &["profiles", "ci", "sim", "params", "d"]), (15, 9));
    }

    #[test]
    fn flow_keys_and_missing_keys() {
        assert_eq!(locate(SRC, &["stages", "plot", "params", "e"]), (10, 20));
        // A missing leaf points at its deepest existing parent.
        assert_eq!(locate(SRC, &["stages", "sim", "params", "zzz"]), (5, 5));
        // The `d` of `plot` is not the `d` of `sim`.
        assert_eq!(locate(SRC, &["stages", "plot", "params", "d"]), (10, 14));
    }
}
