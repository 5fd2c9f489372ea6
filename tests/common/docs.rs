//! Blocks and tables read from the repository's documents, so that what they show is
//! what the tests run.

/// The text of `path` (relative to the repository root).
pub fn read(path: &str) -> String {
    std::fs::read_to_string(super::repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Every fenced block of language `lang` (```` ```lang ````) in `text`, in order.
pub fn code_blocks(text: &str, lang: &str) -> Vec<String> {
    let open = format!("```{lang}");
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        match (&mut block, line.trim_end()) {
            (None, l) if l == open => block = Some(String::new()),
            (Some(_), "```") => out.extend(block.take()),
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

/// The first ```` ```lang ```` block after the heading line `## {heading}` of the
/// document `path`.
pub fn block_after(path: &str, heading: &str, lang: &str) -> String {
    let text = read(path);
    let after = text
        .split_once(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("{path} has no section \"## {heading}\""))
        .1;
    code_blocks(after, lang)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{path}, \"## {heading}\": no ```{lang} block"))
}

/// The tables of docs/configuration.md, in order: each heading that names a table
/// (`` ## `[clusters.NAME.health]` ``) with the cells of its `` | `key` | … `` rows.
pub fn config_reference() -> Vec<(String, Vec<Vec<String>>)> {
    let mut out: Vec<(String, Vec<Vec<String>>)> = Vec::new();
    let mut in_table = false;
    for line in read("docs/configuration.md").lines() {
        if line.starts_with('#') {
            let table = line
                .split('`')
                .nth(1)
                .filter(|s| s.starts_with('['))
                .map(|s| s.trim_matches(|c| c == '[' || c == ']').to_string());
            in_table = table.is_some();
            out.extend(table.map(|t| (t, Vec::new())));
            continue;
        }
        if !in_table || !line.starts_with("| `") {
            continue;
        }
        let cells = line
            .trim_matches('|')
            .split(" | ")
            .map(|c| c.trim().to_string())
            .collect();
        if let Some((_, rows)) = out.last_mut() {
            rows.push(cells);
        }
    }
    out
}
