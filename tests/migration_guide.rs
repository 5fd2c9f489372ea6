//! The shell commands of docs/migration.md that can run here are run as written, with
//! `/etc/mqgate` moved to a temporary directory, the group `mqgate` replaced by this
//! user's group and `vi` by a scripted edit: the secret files come out as described,
//! a config that names them (and its certificate) by relative paths is accepted from
//! another working directory, and the "edit a copy, check, move it over" recipe
//! applies the change to a running gateway.

use crate::common::fleet::mqgate_in;
use crate::common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The first ```sh block after the heading `## {section}` of docs/migration.md.
fn sh_block(section: &str) -> String {
    docs::block_after("docs/migration.md", section, "sh")
}

/// Run `block` line by line with `sh -e`, adapted to this machine.
fn run(block: &str, etc: &Path, edit: &str) {
    let group = Command::new("id").arg("-gn").output().expect("id -gn");
    let group = String::from_utf8_lossy(&group.stdout).trim().to_string();
    let bin = env!("CARGO_BIN_EXE_mqgate");
    let mut script = String::new();
    for line in block.lines() {
        let line = if line.starts_with("vi ") {
            edit.to_string()
        } else {
            line.replace("/etc/mqgate", &etc.display().to_string())
                .replace("-g mqgate", &format!("-g {group}"))
                .replace("chgrp mqgate", &format!("chgrp {group}"))
                .replace("mqgate check", &format!("{bin} check"))
        };
        script.push_str(&line);
        script.push('\n');
    }
    let out = Command::new("sh")
        .args(["-e", "-c", &script])
        .output()
        .expect("sh");
    assert_success(&out, &script);
}

#[test]
fn secret_files_relative_paths_and_the_save_recipe_work_as_written() {
    let dir = tempdir();
    let etc = dir.path().join("etc-mqgate");
    run(&sh_block("Secret files"), &etc, "");
    for name in ["admin.token", "peers.secret"] {
        let meta = std::fs::metadata(etc.join(name)).expect("secret file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o640, "{name}");
        let text = std::fs::read_to_string(etc.join(name)).expect("read");
        assert_eq!(text.trim_end().len(), 64, "{name}: 32 random bytes in hex");
    }

    // A config naming its certificate and secrets by relative paths, checked and run
    // from another working directory.
    let (_, cert, key) = Pki::new("guide CA").write_server(&etc, "server");
    let n1 = Mosquitto::start("n1", dir.path());
    let (listen, admin, peers, extra) = (free_port(), free_port(), free_port(), free_port());
    let file = |n: &Path| {
        n.file_name()
            .and_then(|f| f.to_str())
            .expect("name")
            .to_string()
    };
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:{admin}\"\ntoken_file = \"admin.token\"\n\n\
         [[listeners]]\nname = \"mqtts\"\nbind = \"127.0.0.1:{listen}\"\ncluster = \"brokers\"\n\
         [listeners.tls]\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [clusters.brokers]\nmode = \"dynsec\"\nnodes = [ {{ name = \"n1\", address = \"{}\" }} ]\n\n\
         [peers]\nname = \"lb1\"\nbind = \"127.0.0.1:{peers}\"\nsecret_file = \"peers.secret\"\n\
         peers = [ {{ name = \"lb2\", address = \"127.0.0.1:{}\" }} ]\n",
        file(&cert),
        file(&key),
        n1.address(),
        free_port(),
    );
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    let config = etc.join("mqgate.toml");
    std::fs::write(&config, &toml).expect("write config");
    let config_arg = config.to_str().expect("path");
    let check = mqgate_in(&elsewhere, &["check", "-c", config_arg]);
    assert!(
        check.status.success(),
        "relative paths resolve from the config's directory:\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let gate = Gate::start(&etc, "mqgate", &toml, admin);
    // The CLI finds the token through the config file.
    let drain = mqgate_in(
        &elsewhere,
        &["node", "drain", "brokers", "n1", "-c", config_arg],
    );
    assert!(
        drain.status.success(),
        "{}",
        String::from_utf8_lossy(&drain.stderr)
    );

    // "Saving the file applies it": edit a copy, check it, move it over.
    let edit = format!(
        "printf '\\n[[listeners]]\\nname = \"more\"\\nbind = \"127.0.0.1:{extra}\"\\ncluster = \"brokers\"\\n' >> {}",
        etc.join("mqgate.toml.new").display()
    );
    run(&sh_block("Saving the file applies it"), &etc, &edit);
    wait_until(Duration::from_secs(10), "the moved file applied", || {
        port_open(extra)
    });
    assert_eq!(
        gate.metric("mqgate_config_reloads_total", &[("result", "ok")]),
        1.0
    );
}
