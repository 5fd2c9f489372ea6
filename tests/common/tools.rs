//! The programs some tests need besides Mosquitto. `integration/test` installs every
//! one of them; run alone, a test that lacks one stops with a message naming it and
//! how to install it, instead of an "os error 2".

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A program found on `PATH`, and the Debian packages it comes with.
pub struct Tool {
    pub program: &'static str,
    pub packages: &'static str,
}

pub const PROMTOOL: Tool = Tool::apt("promtool", "prometheus");
pub const PROMETHEUS: Tool = Tool::apt("prometheus", "prometheus");
pub const CHROMIUM: Tool = Tool::apt("chromium", "chromium");
pub const HAPROXY: Tool = Tool::apt("haproxy", "haproxy");
pub const OPENSSL: Tool = Tool::apt("openssl", "openssl");
pub const PYTHON3: Tool = Tool::apt("python3", "python3 python3-pip");
pub const NODE: Tool = Tool::apt("node", "nodejs npm");
pub const MOSQUITTO_CTRL: Tool = Tool::apt("mosquitto_ctrl", "mosquitto-clients");
pub const PRLIMIT: Tool = Tool::apt("prlimit", "util-linux");

impl Tool {
    const fn apt(program: &'static str, packages: &'static str) -> Tool {
        Tool { program, packages }
    }

    /// `Command::new(program)` once the program is known to be installed; panics
    /// naming it and how to install it otherwise.
    pub fn command(&self) -> Command {
        self.require();
        Command::new(self.program)
    }

    /// Panics unless the program is on `PATH`.
    pub fn require(&self) {
        let found = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| is_executable(&dir.join(self.program)))
        });
        assert!(
            found,
            "this test needs `{}`, which is not installed: apt-get install {} \
             (integration/test installs it)",
            self.program, self.packages
        );
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where the test clients live (`paho_sub.py`, MQTT.js under `node_modules`).
pub fn clients_dir() -> PathBuf {
    super::repo().join("tests/clients")
}

/// `python3` with paho-mqtt; panics naming what is missing otherwise.
pub fn paho_python() -> Command {
    let ok = PYTHON3
        .command()
        .args(["-c", "import paho.mqtt.client"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "this test needs paho-mqtt for python3, which is not installed: \
         python3 -m pip install paho-mqtt==2.2.0 (integration/test installs it)"
    );
    PYTHON3.command()
}

/// `node` and the path of MQTT.js's `mqtt sub` command; panics naming what is
/// missing otherwise.
pub fn mqtt_js_sub() -> (Command, PathBuf) {
    let node = NODE.command();
    let bin = clients_dir().join("node_modules/mqtt/build/bin/sub.js");
    assert!(
        bin.exists(),
        "this test needs MQTT.js, which is not installed: {} is missing; \
         run `npm ci` in tests/clients (integration/test does)",
        bin.display()
    );
    (node, bin)
}

/// HAProxy 2.6 run with `cfg` (written to `dir/NAME.cfg`, checked with `haproxy -c`
/// first, its log in `dir/NAME.log`), once every port of `ports` accepts connections.
pub fn start_haproxy(dir: &Path, name: &str, cfg: &str, ports: &[u16]) -> super::fleet::KillOnDrop {
    let path = dir.join(format!("{name}.cfg"));
    std::fs::write(&path, cfg).expect("write the haproxy config");
    let check = HAPROXY
        .command()
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("running haproxy -c: {e}"));
    assert!(
        check.status.success(),
        "haproxy -c rejects the config: {check:?}"
    );
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).expect("haproxy log");
    let child = HAPROXY
        .command()
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting haproxy -db -f {}: {e}", path.display()));
    let mut child = super::fleet::KillOnDrop(child);
    super::wait_until(Duration::from_secs(10), "haproxy listening", || {
        if let Ok(Some(st)) = child.0.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("haproxy exited ({st}): {log}");
        }
        ports.iter().all(|&p| super::port_open(p))
    });
    child
}
