//! Serde's errors for a config file, rewritten for the operator: the full key path
//! (`clusters.brokers.nodes[1].adress`, found from the error's position with
//! `toml_edit`'s spans, not from the text of the line), messages without Rust type
//! names ("expected an integer", not "expected i64"), and a hint with a valid example
//! for type errors (`connect_timeout = 5000` → durations are strings such as "5s").

use super::{ConfigError, RawConfig};
use std::ops::Range;

/// One [`ConfigError`] for a serde / TOML error in `text`.
pub(super) fn describe(text: &str, e: &toml::de::Error) -> ConfigError {
    let offset = e.span().map(|s| s.start);
    let line = offset.map(|o| line_at(text, o));
    let raw = e.message().trim().replace('\n', "; ");
    let mut key = offset
        .and_then(|o| key_path_at(text, o))
        .or_else(|| line.and_then(|l| key_from_line(text, l)))
        .unwrap_or_default();

    if let Some(field) = between(&raw, "missing field `", "`") {
        key = join(&key, field);
        let hint = example(&key).map(|x| format!("for example {} = {x}", leaf(&key)));
        return ConfigError {
            line,
            key,
            message: "required key is missing".into(),
            hint,
        };
    }
    if raw.starts_with("unknown field") {
        let expected: Vec<&str> = raw
            .split_once("expected")
            .map(|x| x.1)
            .unwrap_or("")
            .split('`')
            .skip(1)
            .step_by(2)
            .collect();
        let typo = leaf(&key);
        let hint = match closest(typo, &expected) {
            Some(near) => {
                format!("did you mean `{near}`? Keys are listed in docs/configuration.md")
            }
            None => {
                "check the spelling against the configuration reference (docs/configuration.md)"
                    .into()
            }
        };
        return ConfigError {
            line,
            key,
            message: rust_names(&raw),
            hint: Some(hint),
        };
    }
    if let Some(rest) = raw.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.rsplit_once(", expected ") {
            let (message, hint) = type_error(&key, found, expected);
            return ConfigError {
                line,
                key,
                message,
                hint,
            };
        }
    }
    ConfigError {
        line,
        key,
        message: rust_names(&raw),
        hint: None,
    }
}

/// What kind of value a key wants, as far as the message and hint need to know.
#[derive(Clone, Copy, PartialEq)]
enum Want {
    Duration,
    Str,
    Int,
    Bool,
    Array,
    Table,
}

fn type_error(key: &str, found: &str, expected: &str) -> (String, Option<String>) {
    let name = leaf(key);
    let want = match expected {
        "a string" if is_duration(name) => Want::Duration,
        "a string" => Want::Str,
        "i64" | "u64" | "i32" | "u32" | "usize" | "u16" | "u8" => Want::Int,
        "a boolean" => Want::Bool,
        "a sequence" => Want::Array,
        e if e.starts_with("struct ") || e == "a map" => Want::Table,
        _ => {
            return (
                format!(
                    "expected {}, found {}",
                    rust_names(expected),
                    found_text(found)
                ),
                None,
            )
        }
    };
    let what = match want {
        Want::Duration => "a duration string such as \"5s\"",
        Want::Str => "a string in quotes",
        Want::Int => "an integer",
        Want::Bool => "true or false",
        Want::Array => "an array [ ... ]",
        Want::Table => "a table",
    };
    let message = format!("expected {what}, found {}", found_text(found));
    // The value as written, for hints built from it.
    let value = found
        .split_once(['`', '"'])
        .map(|x| x.1.trim_end_matches(['`', '"']))
        .unwrap_or("");
    let hint = match want {
        Want::Duration if found.starts_with("integer") => format!(
            "durations are quoted strings with a unit (ms, s, m, h, d), for example {name} = \"5s\"; \
             for {value} milliseconds write {name} = \"{value}ms\""
        ),
        Want::Duration => format!(
            "durations are quoted strings with a unit (ms, s, m, h, d), for example {name} = \"5s\""
        ),
        Want::Int if found.starts_with("string") && value.trim().parse::<i64>().is_ok() => {
            format!("write the number without quotes: {name} = {}", value.trim())
        }
        Want::Int => format!(
            "a whole number without quotes, for example {name} = {}",
            example(key).unwrap_or_else(|| "1".into())
        ),
        Want::Bool => format!("write {name} = true or {name} = false (no quotes)"),
        Want::Str | Want::Array => match example(key) {
            Some(x) => format!("for example {name} = {x}"),
            None if want == Want::Str => format!("strings are quoted: {name} = \"{value}\""),
            None => format!("for example {name} = [ ... ]"),
        },
        Want::Table => match example(key) {
            Some(x) => format!("for example {x}"),
            None => format!("write it as a section [{key}] with its keys below"),
        },
    };
    (message, Some(hint))
}

/// `integer `5000`` → `integer 5000`; `floating point `2.5`` → `number 2.5`.
fn found_text(found: &str) -> String {
    found.replace('`', "").replace("floating point", "number")
}

/// Rust type names in serde messages, in the words of the config reference.
fn rust_names(msg: &str) -> String {
    let mut m = msg.to_string();
    for t in ["i64", "u64", "i32", "u32", "usize", "u16", "u8"] {
        m = m.replace(&format!("expected {t}"), "expected an integer");
    }
    m.replace("expected a sequence", "expected an array")
        .replace("floating point", "number")
}

/// Keys whose value is a duration (every one of them ends so).
fn is_duration(name: &str) -> bool {
    ["timeout", "interval", "grace", "refresh", "expire"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// A valid value for a key, as TOML, where a fixed one is useful.
fn example(key: &str) -> Option<String> {
    let name = leaf(key);
    let in_list = key.ends_with(']');
    let x = match name {
        "nodes" if in_list => "{ name = \"node1\", address = \"10.0.0.1:1883\" }",
        "nodes" => "[ { name = \"node1\", address = \"10.0.0.1:1883\" } ]",
        "peers" if in_list => "{ name = \"gate-b\", address = \"10.0.0.12:7400\" }",
        "peers" if key.starts_with("peers.") => {
            "[ { name = \"gate-b\", address = \"10.0.0.12:7400\" } ]"
        }
        "listeners" => "[[listeners]] with name, bind and cluster",
        "trusted_proxies" => "[\"10.0.0.0/8\"]",
        "bind" if key.starts_with("listeners") => "\"0.0.0.0:1883\"",
        "bind" if key.starts_with("peers") => "\"0.0.0.0:7400\"",
        "bind" => "\"127.0.0.1:9100\"",
        "address" => "\"10.0.0.1:1883\"",
        "name" => "\"node1\"",
        "cluster" => "\"brokers\"",
        "mode" => "\"dynsec\"",
        "balance" => "\"hash\"",
        "check" => "\"mqtt\"",
        "cert" => "\"/etc/mqgate/server.pem\"",
        "key" if key.contains(".tls.") => "\"/etc/mqgate/server.key\"",
        "key" => "\"client_id\"",
        "max_connections" => "50000",
        "max_connect_size" => "65536",
        "per_ip_connect_rate" => "100",
        "threads" => "4",
        "retries" => "2",
        "rise" => "2",
        "fall" => "3",
        "capacity" => "1000000",
        _ => return None,
    };
    Some(x.to_string())
}

/// The last part of a key path, without an index: `clusters.b.nodes[1]` → `nodes`.
fn leaf(key: &str) -> &str {
    let last = key.rsplit('.').next().unwrap_or(key);
    last.split('[').next().unwrap_or(last)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = s.strip_prefix(start)?;
    rest.split_once(end).map(|x| x.0)
}

/// The key path of the innermost key, value, table or array element at `offset`.
pub(super) fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let doc = toml_edit::ImDocument::parse(text.to_string()).ok()?;
    let mut best = None;
    walk(doc.as_table(), "", offset, &mut best);
    best.map(|(_, path)| path)
}

fn consider(
    span: Option<Range<usize>>,
    path: &str,
    offset: usize,
    best: &mut Option<(usize, String)>,
) {
    let Some(s) = span else { return };
    let end = s.end.max(s.start + 1);
    if s.start <= offset && offset < end {
        let len = end - s.start;
        if best.as_ref().is_none_or(|(l, _)| len < *l) {
            *best = Some((len, path.to_string()));
        }
    }
}

fn walk(
    table: &dyn toml_edit::TableLike,
    path: &str,
    offset: usize,
    best: &mut Option<(usize, String)>,
) {
    use toml_edit::{Item, Value};
    for (name, _) in table.iter() {
        let Some((k, item)) = table.get_key_value(name) else {
            continue;
        };
        let here = join(path, &key_text(name));
        consider(k.span(), &here, offset, best);
        match item {
            Item::Value(v) => {
                consider(v.span(), &here, offset, best);
                match v {
                    Value::Array(a) => {
                        for (i, el) in a.iter().enumerate() {
                            let p = format!("{here}[{i}]");
                            consider(el.span(), &p, offset, best);
                            if let Some(t) = el.as_inline_table() {
                                walk(t, &p, offset, best);
                            }
                        }
                    }
                    Value::InlineTable(t) => walk(t, &here, offset, best),
                    _ => {}
                }
            }
            Item::Table(t) => {
                consider(t.span(), &here, offset, best);
                walk(t, &here, offset, best);
            }
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    let p = format!("{here}[{i}]");
                    consider(t.span(), &p, offset, best);
                    walk(t, &p, offset, best);
                }
            }
            Item::None => {}
        }
    }
}

/// A key as written in a path: bare if it can be, else quoted.
fn key_text(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

/// For text that is not valid TOML (no spans): the `[table]` above line `line` and the
/// `key` of that line if it is a `key = value` line.
fn key_from_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let this = lines.get(line.checked_sub(1)?)?.trim();
    let table = lines[..line - 1]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
        .unwrap_or_default();
    let (name, _) = this.split_once('=')?;
    let name = name.trim();
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    bare.then(|| join(&table, name))
}

/// The expected name nearest to a misspelt one (edit distance at most 2).
fn closest<'a>(typo: &str, expected: &[&'a str]) -> Option<&'a str> {
    expected
        .iter()
        .map(|e| (distance(typo, e), *e))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, e)| e)
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Serde stops at the first problem. To report every bad key at once, blank the
/// offending `key = value` line and parse again, a bounded number of times; stop at
/// the first error that is not on such a line (syntax errors, multi-line values).
pub(super) fn serde_errors(text: &str, first: toml::de::Error) -> Vec<ConfigError> {
    let mut errors = vec![serde_error(text, &first)];
    let mut work = text.to_string();
    let mut err = first;
    for _ in 0..32 {
        let Some(line_no) = err.span().map(|s| line_at(&work, s.start)) else {
            break;
        };
        let lines: Vec<&str> = work.lines().collect();
        let Some(line) = lines.get(line_no - 1) else {
            break;
        };
        let single = line.contains('=')
            && !line.trim_start().starts_with('[')
            && toml::from_str::<toml::Table>(line).is_ok();
        if !single {
            break;
        }
        let mut next: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        next[line_no - 1] = String::new();
        work = next.join("\n");
        match toml::from_str::<RawConfig>(&work) {
            Ok(_) => break,
            Err(e) => {
                let ce = serde_error(&work, &e);
                if errors.contains(&ce) {
                    break;
                }
                errors.push(ce);
                err = e;
            }
        }
    }
    errors
}

fn serde_error(text: &str, e: &toml::de::Error) -> ConfigError {
    describe(text, e)
}

fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Find the line of a dotted key path such as `clusters.brokers.nodes[1].address`.
/// Falls back to the deepest part of the path that exists.
pub fn line_of_key(text: &str, key: &str) -> Option<usize> {
    use toml_edit::TableLike;
    let doc = toml_edit::ImDocument::parse(text.to_string()).ok()?;
    let mut table: Option<&dyn TableLike> = Some(doc.as_table());
    let mut span = None;
    for part in key.split('.') {
        let Some(t) = table else { break };
        let (name, index) = match part.find('[') {
            Some(p) => (
                &part[..p],
                part[p + 1..].trim_end_matches(']').parse::<usize>().ok(),
            ),
            None => (part, None),
        };
        let Some((k, v)) = t.get_key_value(name) else {
            break;
        };
        span = k.span().or(span);
        table = v.as_table_like();
        if let Some(i) = index {
            table = None;
            if let Some(aot) = v.as_array_of_tables() {
                if let Some(el) = aot.get(i) {
                    span = el.span().or(span);
                    table = Some(el as &dyn TableLike);
                }
            } else if let Some(arr) = v.as_array() {
                if let Some(el) = arr.get(i) {
                    span = el.span().or(span);
                    table = el.as_inline_table().map(|x| x as &dyn TableLike);
                }
            }
        }
    }
    span.map(|s| line_at(text, s.start))
}
