//! Issue 23 item 15: secret files (admin `token_file`, peers `secret_file`, health
//! `password_file`) and TLS private keys that every user on the host may read or write
//! are warned about, as ssh does for private keys: by `mqgate check`, in the log at
//! start-up and at every reload, naming the key, the file, its mode and the fix. Group
//! access is not warned about: owner root, group mqgate, mode 0640 is the layout the
//! systemd unit and docs/migration.md ("Secret files") recommend.

use crate::common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The secret files of [`config`], by the key that names them.
struct Secrets {
    files: Vec<(&'static str, PathBuf)>,
}

impl Secrets {
    fn create(d: &Path) -> Secrets {
        let pki = Pki::new("secret files CA");
        let (_, _, listener_key) = pki.write_server(d, "listener");
        let (_, _, peer_key) = pki.write_server(d, "peer");
        let mut files = vec![
            ("listeners[0].tls.key", listener_key),
            ("peers.tls.key", peer_key),
        ];
        for (key, name) in [
            ("admin.token_file", "admin.token"),
            ("peers.secret_file", "peers.secret"),
            ("clusters.brokers.health.password_file", "health.password"),
        ] {
            let p = d.join(name);
            std::fs::write(&p, format!("{name}-value\n")).expect("write secret");
            files.push((key, p));
        }
        Secrets { files }
    }

    fn path(&self, key: &str) -> &Path {
        self.files
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, p)| p.as_path())
            .unwrap_or_else(|| panic!("no file for {key}"))
    }

    fn chmod(&self, key: &str, mode: u32) {
        std::fs::set_permissions(self.path(key), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
    }

    fn chmod_all(&self, mode: u32) {
        for (k, _) in &self.files {
            self.chmod(k, mode);
        }
    }
}

fn config(d: &Path, admin: u16) -> String {
    let f = |n: &str| d.join(n).display().to_string();
    format!(
        "[limits]\nmax_connections = 100\nshutdown_grace = \"0s\"\n\n\
         [admin]\nbind = \"127.0.0.1:{admin}\"\ntoken_file = \"{token}\"\n\n\
         [[listeners]]\nname = \"mqtts\"\nbind = \"127.0.0.1:0\"\ncluster = \"brokers\"\n\
         [listeners.tls]\ncert = \"{lcert}\"\nkey = \"{lkey}\"\n\n\
         [clusters.brokers]\nnodes = [ {{ name = \"n1\", address = \"127.0.0.1:1\" }} ]\n\
         [clusters.brokers.health]\nusername = \"hc\"\npassword_file = \"{password}\"\n\n\
         [peers]\nname = \"gate-a\"\nbind = \"127.0.0.1:0\"\nsecret_file = \"{secret}\"\n\
         peers = [ {{ name = \"gate-b\", address = \"127.0.0.1:1\" }} ]\n\
         [peers.tls]\ncert = \"{pcert}\"\nkey = \"{pkey}\"\nca = \"{ca}\"\n",
        token = f("admin.token"),
        lcert = f("listener-cert.pem"),
        lkey = f("listener-key.pem"),
        password = f("health.password"),
        secret = f("peers.secret"),
        pcert = f("peer-cert.pem"),
        pkey = f("peer-key.pem"),
        ca = f("peer-ca.pem"),
    )
}

/// The warning a user sees for the file of `key` at `mode` (`access`: "readable", ...).
fn warning(s: &Secrets, key: &str, access: &str, mode: &str) -> String {
    let what = if key.ends_with(".key") {
        "private key file"
    } else {
        "secret file"
    };
    format!(
        "warning: key `{key}`: {what} {} is {access} by every user on this host (mode {mode})",
        s.path(key).display()
    )
}

#[test]
fn check_warns_about_secret_files_every_user_can_read() {
    let dir = tempdir();
    let d = dir.path();
    let s = Secrets::create(d);
    let file = d.join("mqgate.toml");
    std::fs::write(&file, config(d, free_port())).expect("write config");

    // World-readable (the umask 022 default): one warning per file, with the fix.
    s.chmod_all(0o644);
    let (code, stdout, stderr) = mqgate_check(&file);
    assert_eq!(code, Some(0), "a warning is not an error:\n{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
    for (key, path) in &s.files {
        let want = warning(&s, key, "readable", "0644");
        assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
        let fix = format!("chmod 600 {}, or chmod 640 with a group", path.display());
        assert!(stderr.contains(&fix), "missing {fix:?} in:\n{stderr}");
    }
    assert_eq!(stderr.matches("warning:").count(), 5, "{stderr}");

    // The recommended layouts: no warning.
    for mode in [0o640, 0o600, 0o660, 0o400] {
        s.chmod_all(mode);
        let (code, _, stderr) = mqgate_check(&file);
        assert_eq!(code, Some(0), "{stderr}");
        assert!(
            !stderr.contains("warning"),
            "mode {mode:04o} warned:\n{stderr}"
        );
    }

    // Writable (not readable) by others is warned about too.
    s.chmod("admin.token_file", 0o602);
    s.chmod("peers.tls.key", 0o606);
    let (_, _, stderr) = mqgate_check(&file);
    for want in [
        warning(&s, "admin.token_file", "writable", "0602"),
        warning(&s, "peers.tls.key", "readable and writable", "0606"),
    ] {
        assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    }
    assert_eq!(stderr.matches("warning:").count(), 2, "{stderr}");
}

#[test]
fn run_and_reload_warn_about_a_secret_file_every_user_can_read() {
    let dir = tempdir();
    let d = dir.path();
    let s = Secrets::create(d);
    s.chmod_all(0o640);
    s.chmod("admin.token_file", 0o644);
    let admin = free_port();
    let gate = Gate::start(d, "gw", &config(d, admin), admin);
    let want = warning(&s, "admin.token_file", "readable", "0644");
    let warned = |text: &str| {
        text.lines()
            .filter(|l| l.contains(" WARN ") && l.contains(&want) && l.contains("chmod 600"))
            .count()
    };
    wait_until(Duration::from_secs(10), "the start-up warning", || {
        warned(&gate.log_text()) == 1
    });
    assert!(
        !gate.log_text().contains("peers.secret_file`: secret file"),
        "a 0640 file was warned about:\n{}",
        gate.log_text()
    );

    // Fixed: a reload says nothing more.
    let reloads = || gate.metric("mqgate_config_reloads_total", &[("result", "ok")]);
    s.chmod("admin.token_file", 0o640);
    gate.signal("HUP");
    wait_until(Duration::from_secs(10), "a reload", || reloads() == 1.0);
    assert_eq!(warned(&gate.log_text()), 1, "{}", gate.log_text());

    // Open again: the next reload warns.
    s.chmod("admin.token_file", 0o644);
    gate.signal("HUP");
    wait_until(Duration::from_secs(10), "a second reload", || {
        reloads() == 2.0
    });
    wait_until(Duration::from_secs(10), "the reload's warning", || {
        warned(&gate.log_text()) == 2
    });
}
