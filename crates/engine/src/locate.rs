//! Finds the line and column of a key path in YAML source text.
//!
//! serde_yaml's `Value` forgets positions, so errors found after parsing (a bad
//! parameter, a missing upstream) are located by walking the text: each path
//! element is looked up among the keys of its parent's block (the lines
//! indented exactly as the block's first key, deeper lines being nested
//! values), a numeric element as the n-th `- ` item of a block sequence, and
//! inside a flow collection (`{d: 64}`, `[a, b]`) on the parent's line.
//!
//! (Rewritten with the engine's test suite: the first version accepted a key
//! at any indentation within its parent's scope, so `stages` could match
//! `profiles.ci.stages` when profiles came first; it could not descend into
//! sequence items, so every error in `checks:` pointed at line 1 or at
//! `checks:`; and its flow fallback could match a key of a nested flow mapping.)

/// 1-based (line, column) of the deepest element of `path` that can be found.
pub fn locate(source: &str, path: &[&str]) -> (usize, usize) {
    let lines: Vec<&str> = source.lines().collect();
    let mut scope = Scope::Block { start: 0, parent_indent: -1, first_col: None };
    let mut best = (1, 1);
    for key in path {
        let found = match scope {
            Scope::Block { start, parent_indent, first_col } => {
                find_in_block(&lines, start, parent_indent, first_col, key)
            }
            Scope::Flow { line, from } => find_in_flow(lines[line], line, from, key),
        };
        match found {
            Some((line, col, next)) => {
                best = (line + 1, col + 1);
                scope = next;
            }
            None => break,
        }
    }
    best
}

/// Where the children of the last element found are.
#[derive(Debug, Clone, Copy)]
enum Scope {
    /// The lines from `start` indented deeper than `parent_indent`; when
    /// `first_col` is set, the first line starts at that byte (a `- ` item).
    Block { start: usize, parent_indent: isize, first_col: Option<usize> },
    /// A flow collection opening at byte `from` of `line`.
    Flow { line: usize, from: usize },
}

/// (line index, byte column, scope of its value) of `key` in a block.
fn find_in_block(
    lines: &[&str],
    start: usize,
    parent_indent: isize,
    first_col: Option<usize>,
    key: &str,
) -> Option<(usize, usize, Scope)> {
    let index: Option<usize> = key.parse().ok();
    let mut block_indent: Option<usize> = None;
    let mut item = 0usize;
    for (i, raw) in lines.iter().enumerate().skip(start) {
        let col0 = match first_col {
            Some(c) if i == start => c,
            _ => 0,
        };
        let content = strip_comment(raw.get(col0..).unwrap_or(""));
        if content.trim().is_empty() {
            continue;
        }
        let indent = col0 + (content.len() - content.trim_start().len());
        let body = content.trim_start();
        let is_item = body == "-" || body.starts_with("- ");
        let bi = match block_indent {
            Some(bi) => bi,
            None => {
                // A block sequence may sit at its parent key's indentation.
                if indent as isize <= parent_indent && !(is_item && indent as isize == parent_indent) {
                    return None;
                }
                *block_indent.insert(indent)
            }
        };
        if indent > bi {
            continue; // nested deeper
        }
        if indent < bi || (bi as isize == parent_indent && !is_item) {
            break; // left the block
        }
        if is_item {
            // Items are found by index only; their keys are one level down.
            if index == Some(item) {
                let rest = &body[1..];
                let col = indent + 1 + (rest.len() - rest.trim_start().len());
                return Some((i, col, Scope::Block { start: i, parent_indent: bi as isize, first_col: Some(col) }));
            }
            item += 1;
            continue;
        }
        if key_matches(body, key) {
            let quoted = usize::from(body.starts_with(['"', '\'']));
            let next = match value_start(raw, indent + quoted + key.len()) {
                Some(from) => Scope::Flow { line: i, from },
                None => Scope::Block { start: i + 1, parent_indent: indent as isize, first_col: None },
            };
            return Some((i, indent + quoted, next));
        }
    }
    None
}

/// The byte where a flow collection opens as the value after the key ending
/// at `after_key` (past an anchor or tag), if the value is one.
fn value_start(raw: &str, after_key: usize) -> Option<usize> {
    let rest = raw.get(after_key..)?;
    let colon = rest.find(':')?;
    let mut value = &rest[colon + 1..];
    loop {
        value = value.trim_start();
        match value.chars().next() {
            Some('&') | Some('!') => value = value.split_once(' ').map_or("", |(_, v)| v),
            Some('{') | Some('[') => return Some(raw.len() - value.len()),
            _ => return None,
        }
    }
}

/// 1-based position of the second `key` of the mapping that serde_yaml
/// reports at 1-based (`line`, `column`) for a duplicate key: the mapping's
/// first key, or the `{` of a flow mapping.
pub fn duplicate_key(source: &str, (line, column): (usize, usize), key: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = source.lines().collect();
    let (l0, c0) = (line.checked_sub(1)?, column.checked_sub(1)?);
    let first = lines.get(l0)?;
    if first.as_bytes().get(c0) == Some(&b'{') {
        return find_in_flow_nth(first, l0, c0, key, 1).map(|(l, c, _)| (l + 1, c + 1));
    }
    let mut seen = 0;
    for (i, raw) in lines.iter().enumerate().skip(l0) {
        let col0 = if i == l0 { c0 } else { 0 };
        let content = strip_comment(raw.get(col0..).unwrap_or(""));
        if content.trim().is_empty() {
            continue;
        }
        let indent = col0 + (content.len() - content.trim_start().len());
        if indent > c0 {
            continue;
        }
        if indent < c0 {
            break;
        }
        let body = content.trim_start();
        if key_matches(body, key) {
            seen += 1;
            if seen == 2 {
                return Some((i + 1, indent + usize::from(body.starts_with(['"', '\''])) + 1));
            }
        }
    }
    None
}

/// 1-based position of the `---` that starts a second YAML document, if any.
pub fn second_document(source: &str) -> Option<(usize, usize)> {
    let mut in_document = false;
    for (i, line) in source.lines().enumerate() {
        let marker = line.strip_prefix("---").is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t']));
        if marker && in_document {
            return Some((i + 1, 1));
        }
        in_document |= marker || !(strip_comment(line).trim().is_empty() || line.starts_with('%'));
    }
    None
}

/// (line index, byte column, scope) of `key` directly inside the flow
/// collection opening at byte `from` of `raw` (a number indexes a `[...]`).
fn find_in_flow(raw: &str, line: usize, from: usize, key: &str) -> Option<(usize, usize, Scope)> {
    find_in_flow_nth(raw, line, from, key, 0)
}

/// As [`find_in_flow`], the occurrence `nth` (0-based) of a mapping key.
fn find_in_flow_nth(raw: &str, line: usize, from: usize, key: &str, nth: usize) -> Option<(usize, usize, Scope)> {
    let bytes = raw.as_bytes();
    let is_seq = match bytes.get(from) {
        Some(b'[') => true,
        Some(b'{') => false,
        _ => return None, // a scalar has no children
    };
    let index: Option<usize> = key.parse().ok();
    if is_seq && index.is_none() {
        return None;
    }
    let (mut depth, mut item, mut quote) = (0usize, 0usize, None::<u8>);
    let mut expect_entry = false;
    for (pos, &b) in bytes.iter().enumerate().skip(from) {
        if let Some(q) = quote {
            if b == q {
                quote = None;
            }
            continue;
        }
        if expect_entry && depth == 1 && !b.is_ascii_whitespace() {
            expect_entry = false;
            let entry = raw.get(pos..).unwrap_or("");
            let found = if is_seq {
                let this = item;
                item += 1;
                b != b']' && Some(this) == index
            } else {
                key_matches(entry, key) && {
                    item += 1;
                    item > nth
                }
            };
            if found {
                let quoted = usize::from(!is_seq && matches!(b, b'"' | b'\''));
                let next = if is_seq {
                    Scope::Flow { line, from: pos }
                } else {
                    let from = value_start(raw, pos + quoted + key.len()).unwrap_or(raw.len());
                    Scope::Flow { line, from }
                };
                return Some((line, pos + quoted, next));
            }
        }
        match b {
            b'"' | b'\'' => quote = Some(b),
            b'{' | b'[' => {
                depth += 1;
                expect_entry = depth == 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            b',' if depth == 1 => expect_entry = true,
            b'#' if pos > 0 && bytes[pos - 1].is_ascii_whitespace() => break,
            _ => {}
        }
    }
    None
}

fn strip_comment(line: &str) -> &str {
    match line.find(" #") {
        Some(i) => &line[..i],
        None if line.trim_start().starts_with('#') => "",
        None => line,
    }
}

fn key_matches(trimmed: &str, key: &str) -> bool {
    let unquoted = trimmed.strip_prefix(['"', '\'']).unwrap_or(trimmed);
    unquoted.starts_with(key) && unquoted[key.len()..].trim_start_matches(['"', '\'']).trim_start().starts_with(':')
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

    #[test]
    fn keys_only_at_their_own_level() {
        // `stages` under a profile that comes first is not the top-level `stages`.
        let src = "profiles:\n  ci:\n    stages:\n      a: {params: {n: 1}}\nstages:\n  a:\n    params:\n      n: 2\n";
        assert_eq!(locate(src, &["stages", "a", "params", "n"]), (8, 7));
        assert_eq!(locate(src, &["profiles", "ci", "stages", "a", "params", "n"]), (4, 20));
        // A key of a nested value is not a key of the parent.
        let src = "a:\n  b:\n    c: 1\n  d: 2\n";
        assert_eq!(locate(src, &["a", "c"]), (1, 1));
        assert_eq!(locate(src, &["a", "d"]), (4, 3));
        // A folded text mentioning a key is not that key.
        let src = "description: >\n  stages: none\nstages:\n  a: 1\n";
        assert_eq!(locate(src, &["stages", "a"]), (4, 3));
    }

    #[test]
    fn sequence_items() {
        let src = "checks:\n  - name: a\n    stage: x\n  - name: b\n    # stage: y\n    stage: y\n    where: {i: 1}\n";
        assert_eq!(locate(src, &["checks", "0", "stage"]), (3, 5));
        assert_eq!(locate(src, &["checks", "1", "name"]), (4, 5));
        assert_eq!(locate(src, &["checks", "1", "stage"]), (6, 5));
        assert_eq!(locate(src, &["checks", "1", "where", "i"]), (7, 13));
        assert_eq!(locate(src, &["checks", "1"]), (4, 5));
        assert_eq!(locate(src, &["checks", "2", "name"]), (1, 1));
        // Items at the parent key's indentation.
        let src = "checks:\n- name: a\n  stage: x\n- name: b\n  stage: y\nother: 1\n";
        assert_eq!(locate(src, &["checks", "1", "stage"]), (5, 3));
        assert_eq!(locate(src, &["other"]), (6, 1));
        // Items of a flow sequence, and nested flow collections.
        let src = "a: {b: [1, {c: 2, d: [3, 4]}], c: 5}\n";
        assert_eq!(locate(src, &["a", "b", "1", "d", "1"]), (1, 26));
        assert_eq!(locate(src, &["a", "c"]), (1, 32));
        assert_eq!(locate(src, &["a", "b", "1", "c"]), (1, 13));
    }

    #[test]
    fn duplicates_and_documents() {
        use super::{duplicate_key, second_document};
        // serde_yaml reports a duplicate at the first key of its mapping.
        let src = "a:\n  x: 1\n  y:\n    x: 0\n  x: 2\n";
        assert_eq!(duplicate_key(src, (2, 3), "x"), Some((5, 3)));
        assert_eq!(duplicate_key("a: {x: 1, y: {x: 0}, x: 2}\n", (1, 4), "x"), Some((1, 22)));
        assert_eq!(duplicate_key(src, (2, 3), "z"), None);
        assert_eq!(second_document("# c\n---\na: 1\n--- \nb: 2\n"), Some((4, 1)));
        assert_eq!(second_document("a: 1\n---\nb: 2\n"), Some((2, 1)));
        assert_eq!(second_document("---\na: 1\n"), None);
    }

    #[test]
    fn quotes_anchors_and_comments() {
        let src = "stages:\n  # params: here\n  'a':\n    params: &p {\"n\": 1} # n: 2\n";
        assert_eq!(locate(src, &["stages", "a"]), (3, 4));
        assert_eq!(locate(src, &["stages", "a", "params", "n"]), (4, 18));
    }
}
