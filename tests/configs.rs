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

use crate::common::{docs, free_port, mqgate_check, repo, tempdir, wait_until, Pki};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The examples this repository must ship (SPEC / issue 9); others in `configs/` are
/// checked too.
const REQUIRED: &[&str] = &["minimal.toml", "tls-mtls.toml", "proxy-protocol.toml"];

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
    pki: Pki,
    cert: String,
    key: String,
    /// Environment variables named by `*_env` keys, with the value given to them.
    env: Vec<(String, String)>,
    created: usize,
}

impl Materials {
    fn new() -> Materials {
        let pki = Pki::new("mqgate example CA");
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
        if !matches!(kind, FileKind::Ca) {
            // Owner and group only, as docs/migration.md ("Secret files") says: a file
            // every user may read gets a warning, and an example must pass without one.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640))
                .expect("chmod 640");
        }
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
        for b in docs::code_blocks(&text, "toml") {
            let n = out.len();
            let p = dir.join(format!("{stem}-block{n}.toml"));
            std::fs::write(&p, format!("# from {doc}\n# (example)\n# (block {n})\n{b}"))
                .expect("write doc block");
            out.push(p);
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
    let tmp = tempdir();
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
        match mqgate::config::load(copy) {
            Err(e) => {
                failures.push(format!("{}: config::load failed:\n{e}", orig.display()));
                continue;
            }
            // An example must not teach an old key name.
            Ok(cfg) if !cfg.warnings.is_empty() => failures.push(format!(
                "{}: warnings:\n{}",
                orig.display(),
                cfg.warning_lines().join("\n")
            )),
            Ok(_) => {}
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
    // They were for `config::load` in this process; every test of this binary starts
    // its processes with this environment.
    for (var, _) in &m.env {
        std::env::remove_var(var);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_broken_example_is_caught() {
    // The rewrite must not hide real mistakes: a typo in a key still fails.
    let tmp = tempdir();
    let mut m = Materials::new();
    let src = tmp.path().join("typo.toml");
    let minimal =
        std::fs::read_to_string(repo().join("configs/minimal.toml")).expect("read minimal.toml");
    std::fs::write(&src, format!("{minimal}\n[limits]\nmax_conections = 5\n")).expect("write");
    let copy = prepare(&src, tmp.path(), &mut m);
    let e = mqgate::config::load(&copy).expect_err("a misspelt key must be refused");
    assert!(e.to_string().contains("max_conections"), "{e}");
    let (code, _, _) = mqgate_check(&copy);
    assert_eq!(code, Some(1));
}

/// A TLS listener (and optionally TLS peers) over the files `tls` / `peers_tls` name.
fn tls_config(listen_tls: &str, peers_tls: Option<&str>) -> String {
    let peers = match peers_tls {
        Some(t) => format!(
            "[peers]\nname = \"gate-a\"\nbind = \"127.0.0.1:0\"\n\
             peers = [ {{ name = \"gate-b\", address = \"127.0.0.1:1\" }} ]\n[peers.tls]\n{t}\n"
        ),
        None => String::new(),
    };
    format!(
        "[limits]\nshutdown_grace = \"0s\"\n\n[[listeners]]\nname = \"mqtts\"\nbind = \"127.0.0.1:0\"\ncluster = \"brokers\"\n\
         [listeners.tls]\n{listen_tls}\n\n[clusters.brokers]\nnodes = [ {{ name = \"n1\", address = \"127.0.0.1:1\" }} ]\n\n{peers}"
    )
}

/// TLS material in `dir`: `cert.pem` + `key.pem` (a pair), `other-key.pem` (another
/// key), `ca.pem`, and `garbage.pem` (not PEM at all).
fn tls_files(dir: &Path) {
    let pki = Pki::new("check test CA");
    let (cert, key) = pki.leaf("localhost", &["localhost"]);
    let (_, other_key) = pki.leaf("other", &["other"]);
    for (name, content) in [
        ("cert.pem", cert.as_str()),
        ("key.pem", key.as_str()),
        ("other-key.pem", other_key.as_str()),
        ("ca.pem", pki.ca_pem.as_str()),
        ("garbage.pem", "this is not a PEM file\n"),
    ] {
        std::fs::write(dir.join(name), content).expect("write TLS material");
    }
}

/// Issue 32 item 3: `mqgate check` loads and matches certificates, keys and CA files
/// exactly as `run` does, and names the key and the file that is wrong.
#[test]
fn check_refuses_the_tls_material_run_would_refuse() {
    let tmp = tempdir();
    let d = tmp.path();
    tls_files(d);
    let f = |n: &str| d.join(n).display().to_string();
    let pair = format!("cert = \"{}\"\nkey = \"{}\"", f("cert.pem"), f("key.pem"));
    let peers_pair = format!("{pair}\nca = \"{}\"", f("ca.pem"));

    let good = d.join("good.toml");
    std::fs::write(&good, tls_config(&pair, Some(&peers_pair))).expect("write");
    let (code, stdout, stderr) = mqgate_check(&good);
    assert_eq!(code, Some(0), "a good pair must pass:\n{stdout}\n{stderr}");

    // (what, [listeners.tls], [peers.tls], key named in the error, words in it)
    type Case<'a> = (&'a str, String, Option<String>, &'a str, &'a [&'a str]);
    let cases: &[Case<'_>] = &[
        (
            "garbage certificate",
            format!(
                "cert = \"{}\"\nkey = \"{}\"",
                f("garbage.pem"),
                f("key.pem")
            ),
            None,
            "listeners[0].tls.cert",
            &["garbage.pem", "no PEM certificate"],
        ),
        (
            "garbage key",
            format!(
                "cert = \"{}\"\nkey = \"{}\"",
                f("cert.pem"),
                f("garbage.pem")
            ),
            None,
            "listeners[0].tls.key",
            &["garbage.pem", "no PEM private key"],
        ),
        (
            "certificate given as the key",
            format!("cert = \"{}\"\nkey = \"{}\"", f("cert.pem"), f("cert.pem")),
            None,
            "listeners[0].tls.key",
            &["cert.pem", "holds a certificate but no private key"],
        ),
        (
            "key given as the certificate",
            format!("cert = \"{}\"\nkey = \"{}\"", f("key.pem"), f("key.pem")),
            None,
            "listeners[0].tls.cert",
            &["key.pem", "are `cert` and `key` swapped?"],
        ),
        (
            "key of another certificate",
            format!(
                "cert = \"{}\"\nkey = \"{}\"",
                f("cert.pem"),
                f("other-key.pem")
            ),
            None,
            "listeners[0].tls.key",
            &[
                "other-key.pem",
                "does not belong to the certificate in",
                "cert.pem",
            ],
        ),
        (
            "garbage client CA",
            format!("{pair}\nclient_ca = \"{}\"", f("garbage.pem")),
            None,
            "listeners[0].tls.client_ca",
            &["garbage.pem", "no PEM certificate"],
        ),
        (
            "peers: key of another certificate",
            pair.clone(),
            Some(format!(
                "cert = \"{}\"\nkey = \"{}\"\nca = \"{}\"",
                f("cert.pem"),
                f("other-key.pem"),
                f("ca.pem")
            )),
            "peers.tls.key",
            &["other-key.pem", "does not belong to the certificate in"],
        ),
        (
            "peers: a key as the CA",
            pair.clone(),
            Some(format!("{pair}\nca = \"{}\"", f("key.pem"))),
            "peers.tls.ca",
            &["key.pem", "no PEM certificate"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, listen, peers, key, fragments) in cases {
        let file = d.join("case.toml");
        std::fs::write(&file, tls_config(listen, peers.as_deref())).expect("write");
        let (code, stdout, stderr) = mqgate_check(&file);
        let want_key = format!("key `{key}`: ");
        let ok = code == Some(1)
            && stderr.contains(&want_key)
            && fragments.iter().all(|f| stderr.contains(f));
        if !ok {
            failures.push(format!(
                "{what}: want exit 1 with {want_key} and {fragments:?}; got exit {code:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Issue 32 item 3: a reload loads the TLS material before anything changes, the
/// peers' too (which used to be applied after the swap, its error only logged).
#[test]
fn reload_refuses_bad_tls_material_before_anything_changes() {
    let tmp = tempdir();
    let d = tmp.path();
    tls_files(d);
    let f = |n: &str| d.join(n).display().to_string();
    let pair = format!("cert = \"{}\"\nkey = \"{}\"", f("cert.pem"), f("key.pem"));
    let file = d.join("mqgate.toml");
    std::fs::write(
        &file,
        tls_config(&pair, Some(&format!("{pair}\nca = \"{}\"", f("ca.pem")))),
    )
    .expect("write");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let cfg = mqgate::config::load(&file).unwrap_or_else(|e| panic!("{e}"));
        let gw = mqgate::Gateway::start(cfg)
            .await
            .expect("start the gateway");
        let before = gw.shared.runtime().config.clone();

        let mismatched = format!(
            "cert = \"{}\"\nkey = \"{}\"",
            f("cert.pem"),
            f("other-key.pem")
        );
        for (what, text, key) in [
            (
                "peers",
                tls_config(
                    &pair,
                    Some(&format!("{mismatched}\nca = \"{}\"", f("ca.pem"))),
                ),
                "peers.tls.key",
            ),
            (
                "listener",
                tls_config(
                    &mismatched,
                    Some(&format!("{pair}\nca = \"{}\"", f("ca.pem"))),
                ),
                "listeners[0].tls.key",
            ),
        ] {
            std::fs::write(&file, text).expect("rewrite");
            let err = match gw.reload().await {
                Ok(()) => panic!("{what}: a key that does not match its certificate was applied"),
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains(&format!("key `{key}`")) && err.contains("does not belong"),
                "{what}: {err}"
            );
            assert_eq!(
                gw.shared.runtime().config,
                before,
                "{what}: the running configuration changed"
            );
        }
        gw.shutdown().await;
    });
}

/// Issue 32 item 3: `check` warns when `max_connections` (× 2 sockets + listeners)
/// does not fit the open-file limit, and `run` raises its soft limit to the hard one
/// and logs the same warning at start-up.
#[test]
fn max_connections_beyond_the_open_file_limit_is_warned_about() {
    let tmp = tempdir();
    let file = tmp.path().join("mqgate.toml");
    let admin = free_port();
    std::fs::write(
        &file,
        format!(
            "[limits]\nmax_connections = 1000\nshutdown_grace = \"0s\"\n\n[admin]\nbind = \"127.0.0.1:{admin}\"\n\n\
             [[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\ncluster = \"brokers\"\n\n\
             [clusters.brokers]\nnodes = [ {{ name = \"n1\", address = \"127.0.0.1:1\" }} ]\n"
        ),
    )
    .expect("write");
    let bin = env!("CARGO_BIN_EXE_mqgate");
    // 1000 connections need 2001 files; the hard limit is 1024 here.
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn 256 && ulimit -Hn 1024 && exec \"$0\" check -c \"$1\"")
        .arg(bin)
        .arg(&file)
        .output()
        .expect("run mqgate check under sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning is not an error:\n{stderr}"
    );
    for want in [
        "warning: limits.max_connections = 1000 needs up to 2001 open files",
        "the open-file limit is 1024",
        "LimitNOFILE",
    ] {
        assert!(stderr.contains(want), "{want:?} missing in:\n{stderr}");
    }

    let log = tmp.path().join("run.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn 256 && ulimit -Hn 1024 && exec \"$0\" run -c \"$1\"")
        .arg(bin)
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("start mqgate run under sh");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(
        std::time::Duration::from_secs(20),
        "the open-file warning in the start-up log",
        || text().contains("needs up to 2001 open files"),
    );
    let _ = child.kill();
    let _ = child.wait();
    let text = text();
    assert!(
        text.contains("open-file limit")
            && text.contains("soft=1024")
            && text.contains("hard=1024"),
        "the soft limit was not raised to the hard one:\n{text}"
    );
}

/// Issue 32 item 4: what a user sees from `mqgate check` for the renamed key and for
/// a duration written as a number.
#[test]
fn check_shows_the_renamed_key_warning_and_full_key_paths() {
    let tmp = tempdir();
    let file = tmp.path().join("mqgate.toml");
    let base = "[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\ncluster = \"brokers\"\n\n\
                [clusters.brokers]\nnodes = [ { name = \"n1\", address = \"127.0.0.1:1\" } ]\n";
    std::fs::write(
        &file,
        format!("[limits]\nconnect_timeout = \"7s\"\n\n{base}"),
    )
    .expect("write");
    let (code, stdout, stderr) = mqgate_check(&file);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("CONNECT within 7s"), "{stdout}");
    assert!(
        stderr.contains(":2: warning: key `limits.connect_timeout`")
            && stderr.contains("connect_packet_timeout = \"7s\""),
        "{stderr}"
    );

    std::fs::write(&file, format!("{base}connect_timeout = 5000\n")).expect("write");
    let (code, _, stderr) = mqgate_check(&file);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "key `clusters.brokers.connect_timeout`: expected a duration string such as \"5s\""
        ),
        "{stderr}"
    );
}
