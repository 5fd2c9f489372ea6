//! Every example configuration shipped with mqgate is valid: each file in `configs/`
//! and every mqgate config under `docker/` is parsed by `mqgate::config::load` and
//! accepted by `mqgate check` (exit 0, summary printed).
//!
//! The examples name real deployment paths (`/etc/mqgate/server.pem`,
//! `/etc/mqgate/peers.secret`, ...) that do not exist on a build machine, and the
//! repository keeps no keys or secrets. So each file is copied into a temporary
//! directory, every file path it names (TLS material, `*_file` secrets, the sticky
//! `snapshot`) is rewritten to a place inside that directory, and the files are created
//! there: freshly generated certificates (rcgen) and throw-away secrets. `*_env` keys
//! get their environment variable set. Everything else in the file is checked as
//! written.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The examples this repository must ship (SPEC / issue 9); others in `configs/` are
/// checked too.
const REQUIRED: &[&str] = &["minimal.toml", "tls-mtls.toml", "proxy-protocol.toml"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// All TOML files under `dir` (not recursive), sorted.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The mqgate configs of the docker-compose example (`docker/mqgate-*.toml`).
fn docker_configs() -> Vec<PathBuf> {
    toml_files(&repo().join("docker"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("mqgate"))
        })
        .collect()
}

/// What kind of file a key names, if it names one.
#[derive(Clone, Copy, Debug)]
enum FileKind {
    Cert,
    Key,
    Ca,
    Secret,
    Snapshot,
}

fn file_kind(table_name: &str, key: &str) -> Option<FileKind> {
    match (table_name, key) {
        ("tls", "cert") => Some(FileKind::Cert),
        ("tls", "key") => Some(FileKind::Key),
        ("tls", "client_ca" | "ca") => Some(FileKind::Ca),
        (_, "snapshot") => Some(FileKind::Snapshot),
        (_, k) if k.ends_with("_file") => Some(FileKind::Secret),
        _ => None,
    }
}

struct Materials {
    pki: common::Pki,
    cert: String,
    key: String,
    /// Environment variables named by `*_env` keys, with the value given to them.
    env: Vec<(String, String)>,
    created: usize,
}

impl Materials {
    fn new() -> Materials {
        let pki = common::Pki::new("mqgate example CA");
        let (cert, key) = pki.leaf("mqgate.example", &["mqgate.example", "localhost"]);
        Materials {
            pki,
            cert,
            key,
            env: Vec::new(),
            created: 0,
        }
    }

    fn create(&mut self, kind: FileKind, path: &Path) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create example dir");
        }
        let content = match kind {
            // Certificate and key in one PEM, so a file named by both `cert` and `key`
            // (HAProxy's combined PEM) is complete either way.
            FileKind::Cert | FileKind::Key => format!("{}{}", self.cert, self.key),
            FileKind::Ca => self.pki.ca_pem.clone(),
            FileKind::Secret => format!("example-secret-{}\n", self.created),
            FileKind::Snapshot => return,
        };
        std::fs::write(path, content).expect("write example material");
        self.created += 1;
    }
}

/// Rewrite every file path in `table` (named `name`) to a place under `root`
/// (absolute paths) or `cfg_dir` (relative paths), creating the files.
fn rewrite_table(
    table: &mut dyn toml_edit::TableLike,
    name: &str,
    root: &Path,
    cfg_dir: &Path,
    m: &mut Materials,
) {
    let keys: Vec<String> = table.iter().map(|(k, _)| k.to_string()).collect();
    for key in keys {
        let Some(item) = table.get_mut(&key) else {
            continue;
        };
        if let Some(t) = item.as_table_like_mut() {
            rewrite_table(t, &key, root, cfg_dir, m);
            continue;
        }
        if let Some(aot) = item.as_array_of_tables_mut() {
            for t in aot.iter_mut() {
                rewrite_table(t, &key, root, cfg_dir, m);
            }
            continue;
        }
        if let Some(arr) = item.as_array_mut() {
            for v in arr.iter_mut() {
                if let Some(t) = v.as_inline_table_mut() {
                    rewrite_table(t, &key, root, cfg_dir, m);
                }
            }
            continue;
        }
        if key.ends_with("_env") {
            if let Some(var) = item.as_str() {
                m.env
                    .push((var.to_string(), format!("example-env-secret-{var}")));
            }
            continue;
        }
        let Some(kind) = file_kind(name, &key) else {
            continue;
        };
        let Some(value) = item.as_str() else {
            continue;
        };
        let target = match value.strip_prefix('/') {
            Some(rel) => root.join(rel),
            None => cfg_dir.join(value),
        };
        m.create(kind, &target);
        *item = toml_edit::value(target.display().to_string());
    }
}

/// Copy `src` into `tmp` with its files created; returns the copy's path.
fn prepare(src: &Path, tmp: &Path, m: &mut Materials) -> PathBuf {
    let text = std::fs::read_to_string(src).expect("read example config");
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", src.display()));
    let stem = src.file_stem().and_then(|s| s.to_str()).unwrap_or("config");
    let root = tmp.join(format!("{stem}-root"));
    let cfg_dir = tmp.join(format!("{stem}-dir"));
    std::fs::create_dir_all(&cfg_dir).expect("create config dir");
    rewrite_table(doc.as_table_mut(), "", &root, &cfg_dir, m);
    let out = cfg_dir.join(src.file_name().expect("file name"));
    std::fs::write(&out, doc.to_string()).expect("write config copy");
    out
}

/// Documents whose ```toml blocks are complete configurations.
const DOCS_WITH_CONFIGS: &[&str] = &["docs/migration.md", "docs/quickstart.md"];

/// Every ```toml block of [`DOCS_WITH_CONFIGS`], written to `dir` as its own file.
fn doc_examples(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for doc in DOCS_WITH_CONFIGS {
        let Ok(text) = std::fs::read_to_string(repo().join(doc)) else {
            continue;
        };
        let stem = Path::new(doc)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("doc");
        let mut block: Option<String> = None;
        for line in text.lines() {
            match (&mut block, line.trim_end()) {
                (None, "```toml") => block = Some(String::new()),
                (Some(b), "```") => {
                    let n = out.len();
                    let p = dir.join(format!("{stem}-block{n}.toml"));
                    std::fs::write(&p, format!("# from {doc}\n# (example)\n# (block {n})\n{b}"))
                        .expect("write doc block");
                    out.push(p);
                    block = None;
                }
                (Some(b), l) => {
                    b.push_str(l);
                    b.push('\n');
                }
                (None, _) => {}
            }
        }
    }
    out
}

fn all_examples() -> Vec<PathBuf> {
    let mut files = toml_files(&repo().join("configs"));
    files.extend(docker_configs());
    files
}

#[test]
fn required_examples_exist_and_explain_themselves() {
    let dir = repo().join("configs");
    for name in REQUIRED {
        assert!(dir.join(name).is_file(), "configs/{name} is missing");
    }
    for f in all_examples() {
        let text = std::fs::read_to_string(&f).expect("read example");
        let comments = text
            .lines()
            .filter(|l| l.trim_start().starts_with('#'))
            .count();
        assert!(
            text.trim_start().starts_with('#') && comments >= 3,
            "{} should open with comments saying what it sets up ({comments} comment lines)",
            f.display()
        );
    }
}

#[test]
fn every_example_config_loads_and_passes_mqgate_check() {
    let tmp = common::tempdir();
    let mut m = Materials::new();
    let blocks = tmp.path().join("doc-blocks");
    std::fs::create_dir_all(&blocks).expect("mkdir");
    let docs = doc_examples(&blocks);
    assert!(
        docs.len() >= 2,
        "the migration guide's configs were not found"
    );
    let mut files = all_examples();
    assert!(files.len() >= REQUIRED.len(), "no examples found");
    files.extend(docs);
    let mut prepared = Vec::new();
    for f in &files {
        prepared.push((f.clone(), prepare(f, tmp.path(), &mut m)));
    }
    for (var, value) in &m.env {
        std::env::set_var(var, value);
    }

    let mut failures = Vec::new();
    for (orig, copy) in &prepared {
        if let Err(e) = mqgate::config::load(copy) {
            failures.push(format!("{}: config::load failed:\n{e}", orig.display()));
            continue;
        }
        let out = Command::new(env!("CARGO_BIN_EXE_mqgate"))
            .arg("check")
            .arg("-c")
            .arg(copy)
            .envs(m.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run mqgate check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains("OK") {
            failures.push(format!(
                "{}: `mqgate check` exited {:?}\nstdout:\n{stdout}\nstderr:\n{}",
                orig.display(),
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_broken_example_is_caught() {
    // The rewrite must not hide real mistakes: a typo in a key still fails.
    let tmp = common::tempdir();
    let mut m = Materials::new();
    let src = tmp.path().join("typo.toml");
    let minimal =
        std::fs::read_to_string(repo().join("configs/minimal.toml")).expect("read minimal.toml");
    std::fs::write(&src, format!("{minimal}\n[limits]\nmax_conections = 5\n")).expect("write");
    let copy = prepare(&src, tmp.path(), &mut m);
    let e = mqgate::config::load(&copy).expect_err("a misspelt key must be refused");
    assert!(e.to_string().contains("max_conections"), "{e}");
    let out = Command::new(env!("CARGO_BIN_EXE_mqgate"))
        .arg("check")
        .arg("-c")
        .arg(&copy)
        .output()
        .expect("run mqgate check");
    assert_eq!(out.status.code(), Some(1));
}
