//! `docs/configuration.md` cannot drift from the config structs.
//!
//! The reference is read as data: each `## `[table]`` heading opens a table of
//! `| `key` | type | default | meaning |` rows. Three checks:
//! - every key the parser accepts is documented and every documented key is accepted.
//!   The accepted keys are asked from the parser itself: a probe key added to each
//!   table is refused by `deny_unknown_fields` with the list of keys it expected;
//! - every documented default is the real default: a file that spells out every
//!   documented default gives the same `Config` as one that leaves them all out;
//! - every row has a type and a meaning.

use crate::common::{docs, tempdir, Pki};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const PROBE: &str = "zz_undocumented_probe";

#[derive(Debug)]
struct Row {
    key: String,
    kind: String,
    default: String,
    meaning: String,
}

/// Table path as written in a heading (`listeners`, `clusters.NAME.health`, ...) → rows.
fn reference() -> BTreeMap<String, Vec<Row>> {
    let mut out: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for (table, rows) in docs::config_reference() {
        let entry = out.entry(table.clone()).or_default();
        for cells in rows {
            assert_eq!(cells.len(), 4, "row of [{table}] needs 4 cells: {cells:?}");
            entry.push(Row {
                key: cells[0].trim_matches('`').to_string(),
                kind: cells[1].clone(),
                default: cells[2].clone(),
                meaning: cells[3].clone(),
            });
        }
    }
    out
}

/// A file with every table present and only the required keys. `{dir}` is replaced by
/// a directory holding the files it names.
const SKELETON: &str = r#"
[log]
[limits]
[admin]

[[listeners]]
name = "mqtts"
bind = "127.0.0.1:18883"
cluster = "b"
[listeners.tls]
cert = "{dir}/cert.pem"
key = "{dir}/key.pem"
[listeners.websocket]

[clusters.b]

[[clusters.b.nodes]]
name = "n1"
address = "127.0.0.1:1883"

[clusters.b.health]
[clusters.b.sticky]
[clusters.b.tls]
ca = "{dir}/ca.pem"
[clusters.b.sessions]
[clusters.b.shaping]
[[clusters.b.fanout]]
clients = "backend-*"

[peers]
name = "gate-a"
bind = "127.0.0.1:17400"
secret_file = "{dir}/peers.secret"

[[peers.peers]]
name = "gate-b"
address = "127.0.0.1:17401"

[peers.tls]
cert = "{dir}/cert.pem"
key = "{dir}/key.pem"
ca = "{dir}/ca.pem"
"#;

fn skeleton(dir: &Path) -> toml_edit::DocumentMut {
    let pki = Pki::new("reference test CA");
    let (ca, _, _) = pki.write_server(dir, "x");
    std::fs::copy(&ca, dir.join("ca.pem")).expect("ca");
    std::fs::copy(dir.join("x-cert.pem"), dir.join("cert.pem")).expect("cert");
    std::fs::copy(dir.join("x-key.pem"), dir.join("key.pem")).expect("key");
    std::fs::write(dir.join("peers.secret"), "s3cret\n").expect("secret");
    // As the reference tells (0640): a world-readable secret or key would add warnings,
    // whose line numbers differ between the two files compared.
    for secret in ["key.pem", "peers.secret"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(secret), std::fs::Permissions::from_mode(0o640))
            .expect("chmod 640");
    }
    SKELETON
        .replace("{dir}", &dir.display().to_string())
        .parse()
        .expect("skeleton is TOML")
}

/// The table at a documented path (`clusters.NAME.nodes` → first node of cluster `b`).
fn table_at<'a>(doc: &'a mut toml_edit::DocumentMut, path: &str) -> &'a mut toml_edit::Table {
    let mut t: &mut toml_edit::Table = doc.as_table_mut();
    for part in path.split('.') {
        let part = if part == "NAME" { "b" } else { part };
        let item = t
            .get_mut(part)
            .unwrap_or_else(|| panic!("the test skeleton has no table {path}"));
        t = if item.is_array_of_tables() {
            item.as_array_of_tables_mut()
                .and_then(|a| a.get_mut(0))
                .expect("array of tables has an element")
        } else {
            item.as_table_mut()
                .unwrap_or_else(|| panic!("{path}: {part} is not a table"))
        };
    }
    t
}

/// The keys the parser accepts in the table at `path`, from its refusal of a probe key.
fn accepted_keys(dir: &Path, path: Option<&str>) -> BTreeSet<String> {
    let mut doc = skeleton(dir);
    let t = match path {
        Some(p) => table_at(&mut doc, p),
        None => doc.as_table_mut(),
    };
    t.insert(PROBE, toml_edit::value(1));
    let err = match toml::from_str::<mqgate::config::RawConfig>(&doc.to_string()) {
        Ok(_) => panic!("a probe key in [{path:?}] was accepted: is deny_unknown_fields gone?"),
        Err(e) => e.message().to_string(),
    };
    assert!(
        err.contains(PROBE),
        "unexpected error for a probe in {path:?}: {err}"
    );
    let expected = err.split_once("expected").map(|x| x.1).unwrap_or("");
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn every_accepted_key_is_documented_and_every_documented_key_is_accepted() {
    let tmp = tempdir();
    let doc = reference();
    assert!(
        doc.len() >= 10,
        "too few tables found in the reference: {:?}",
        doc.keys()
    );

    let top_documented: BTreeSet<String> = doc
        .keys()
        .map(|k| k.split('.').next().unwrap_or_default().to_string())
        .collect();
    let top_accepted = accepted_keys(tmp.path(), None);
    assert_eq!(
        top_documented, top_accepted,
        "top-level tables: documented (left) vs accepted by the parser (right)"
    );

    let mut problems = Vec::new();
    for (table, rows) in &doc {
        let documented: BTreeSet<String> = rows.iter().map(|r| r.key.clone()).collect();
        assert_eq!(
            documented.len(),
            rows.len(),
            "[{table}] documents a key twice"
        );
        let accepted = accepted_keys(tmp.path(), Some(table));
        for k in accepted.difference(&documented) {
            problems.push(format!(
                "[{table}] accepts `{k}` but the reference does not list it"
            ));
        }
        for k in documented.difference(&accepted) {
            problems.push(format!(
                "[{table}] documents `{k}` but the parser refuses it"
            ));
        }
        // A key that is itself a table needs its own section.
        for r in rows.iter().filter(|r| r.kind.contains("table")) {
            let sub = format!("{table}.{}", r.key);
            if !doc.contains_key(&sub) {
                problems.push(format!(
                    "[{table}] `{}` is a table but [{sub}] has no section",
                    r.key
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn documented_defaults_are_the_real_defaults() {
    let tmp = tempdir();
    let mut spelled = skeleton(tmp.path());
    let mut inserted = 0;
    for (table, rows) in reference() {
        for r in rows {
            let Some(lit) = r
                .default
                .strip_prefix('`')
                .and_then(|d| d.strip_suffix('`'))
            else {
                continue;
            };
            let value: toml_edit::Value = lit.parse().unwrap_or_else(|e| {
                panic!("[{table}] `{}`: default {lit} is not TOML: {e}", r.key)
            });
            let t = table_at(&mut spelled, &table);
            if t.get(&r.key).is_some_and(|i| i.is_array_of_tables()) {
                // e.g. `peers.peers = []`: the skeleton fills it to probe its entries.
                continue;
            }
            assert!(
                !t.contains_key(&r.key),
                "[{table}] `{}` has a default but the skeleton sets it: is it required?",
                r.key
            );
            t.insert(&r.key, toml_edit::Item::Value(value));
            inserted += 1;
        }
    }
    assert!(
        inserted >= 30,
        "only {inserted} defaults found in the reference"
    );

    let path: PathBuf = tmp.path().join("mqgate.toml");
    std::fs::write(&path, spelled.to_string()).expect("write spelled-out config");
    let with_defaults = mqgate::config::load(&path)
        .unwrap_or_else(|e| panic!("the documented defaults do not parse:\n{e}\n{spelled}"));
    std::fs::write(&path, skeleton(tmp.path()).to_string()).expect("write skeleton");
    let without = mqgate::config::load(&path).unwrap_or_else(|e| panic!("skeleton: {e}"));
    // Certificates were regenerated, but only paths are in the Config.
    assert_eq!(
        with_defaults, without,
        "a documented default differs from the real one"
    );
}

#[test]
fn every_row_says_what_it_is() {
    for (table, rows) in reference() {
        for r in rows {
            assert!(!r.kind.is_empty(), "[{table}] `{}` has no type", r.key);
            assert!(
                !r.default.is_empty(),
                "[{table}] `{}` has no default",
                r.key
            );
            assert!(r.meaning.len() > 10, "[{table}] `{}` has no meaning", r.key);
        }
    }
}
