//! A constrained device run as a paho-mqtt process (tests/clients/paho_device.py): it
//! subscribes once and trusts its persistent session (half the devices MQTT 3.1.1 clean
//! session 0, half MQTT 5 with a session expiry), and prints one line per event, which
//! the test reads. Needs python3 with paho-mqtt (integration/test installs it).

use super::tools::{clients_dir, paho_python};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};

/// A paho device process (tests/clients/paho_device.py) and what it printed.
pub struct Device {
    pub id: String,
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Device {
    pub fn start(port: u16, i: usize) -> Device {
        let id = format!("dev-{i}");
        let version = if i.is_multiple_of(2) { "3.1.1" } else { "5" };
        let mut c = paho_python();
        c.arg(clients_dir().join("paho_device.py"))
            .args([
                "127.0.0.1",
                &port.to_string(),
                &id,
                &format!("cmd/{id}"),
                version,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap_or_else(|e| panic!("start {id}: {e}"));
        let out: Arc<Mutex<String>> = Arc::default();
        if let Some(o) = child.stdout.take() {
            collect(o, Arc::clone(&out));
        }
        if let Some(e) = child.stderr.take() {
            collect(e, Arc::clone(&out));
        }
        Device { id, child, out }
    }

    pub fn output(&self) -> String {
        self.out.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn count(&self, prefix: &str) -> usize {
        self.output()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    pub fn received(&self, payload: &str) -> bool {
        self.output()
            .lines()
            .any(|l| l.starts_with("MSG ") && l.split_whitespace().last() == Some(payload))
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(r: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            let mut g = into.lock().unwrap_or_else(|p| p.into_inner());
            g.push_str(&line);
            g.push('\n');
        }
    });
}

pub fn transcripts(devices: &[Device]) -> String {
    devices
        .iter()
        .map(|d| format!("--- {}:\n{}", d.id, d.output()))
        .collect()
}
