//! Access-log lines: logfmt text (`key=value`, values quoted and escaped when needed,
//! `-` for an absent value) or one JSON object; and the syslog datagram framing.
//! Client-chosen strings are escaped so that no client can forge a line.

use super::{ConnackSeen, Record};
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// A logfmt value: bare when safe, else quoted with `\"`, `\\` and control characters
/// escaped; `-` alone means absent, so a value that is `-` or empty is quoted.
fn value(out: &mut String, v: &str) {
    let bare = !v.is_empty()
        && v != "-"
        && v.chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '"' && c != '=' && c != '\\');
    if bare {
        out.push_str(v);
        return;
    }
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn field(out: &mut String, key: &str, v: Option<&str>) {
    out.push(' ');
    out.push_str(key);
    out.push('=');
    match v {
        Some(v) => value(out, v),
        None => out.push('-'),
    }
}

fn connack_str(c: Option<ConnackSeen>) -> Option<String> {
    c.map(|c| match c {
        ConnackSeen::Code(code) => code.to_string(),
        ConnackSeen::Invalid => "invalid".into(),
        ConnackSeen::Timeout => "timeout".into(),
    })
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// One logfmt line (no newline).
pub fn format_text(r: &Record) -> String {
    let mut out = String::with_capacity(320);
    out.push_str("time=");
    out.push_str(&time(r.start));
    field(&mut out, "listener", Some(&r.listener));
    field(&mut out, "client", Some(&r.client.to_string()));
    let tls = r.tls.as_ref();
    field(
        &mut out,
        "tls_version",
        tls.and_then(|t| t.version.as_deref()),
    );
    field(
        &mut out,
        "tls_cipher",
        tls.and_then(|t| t.cipher.as_deref()),
    );
    field(&mut out, "tls_cn", tls.and_then(|t| t.client_cn.as_deref()));
    field(&mut out, "protocol", r.protocol);
    field(&mut out, "client_id", r.client_id.as_deref());
    field(&mut out, "username", r.username.as_deref());
    field(&mut out, "cluster", Some(&r.cluster));
    field(&mut out, "node", r.node.as_deref());
    field(&mut out, "connack", connack_str(r.connack).as_deref());
    let _ = write!(
        out,
        " to_broker={} to_client={} duration_ms={} close={}",
        r.to_broker,
        r.to_client,
        r.duration.as_millis(),
        r.close.as_str()
    );
    if let Some(reason) = r.reject {
        field(&mut out, "reject", Some(reason));
    }
    out
}

/// One JSON object (no newline).
pub fn format_json(r: &Record) -> String {
    let tls = r.tls.as_ref();
    let connack = match r.connack {
        Some(ConnackSeen::Code(c)) => serde_json::Value::from(c),
        Some(ConnackSeen::Invalid) => "invalid".into(),
        Some(ConnackSeen::Timeout) => "timeout".into(),
        None => serde_json::Value::Null,
    };
    serde_json::json!({
        "time": time(r.start),
        "listener": r.listener,
        "client": r.client.to_string(),
        "tls_version": tls.and_then(|t| t.version.as_deref()),
        "tls_cipher": tls.and_then(|t| t.cipher.as_deref()),
        "tls_cn": tls.and_then(|t| t.client_cn.as_deref()),
        "protocol": r.protocol,
        "client_id": r.client_id,
        "username": r.username,
        "cluster": r.cluster,
        "node": r.node,
        "connack": connack,
        "to_broker": r.to_broker,
        "to_client": r.to_client,
        "duration_ms": u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
        "close": r.close.as_str(),
        "reject": r.reject,
    })
    .to_string()
}

/// An RFC 3164 datagram as glibc's `syslog()` sends it to `/dev/log`: facility
/// local0, severity info, the time in UTC, `mqgate[PID]: ` and the line.
pub fn syslog_datagram(line: &str, now: SystemTime, pid: u32) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (_, month, day) = civil_from_days(days);
    format!(
        "<134>{} {:>2} {:02}:{:02}:{:02} mqgate[{pid}]: {line}",
        MONTHS[(month - 1) as usize % 12],
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month (1–12), day (1–31) of a day count since 1970-01-01 (H. Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::super::Close;
    use super::*;
    use std::time::Duration;

    fn record() -> Record {
        Record {
            start: UNIX_EPOCH + Duration::from_secs(1_796_528_700),
            listener: "mqtt".into(),
            client: "127.0.0.1:5000".parse().unwrap(),
            tls: None,
            protocol: Some("3.1.1"),
            client_id: Some("evil\" close=client\nx".into()),
            username: Some(String::new()),
            cluster: "b".into(),
            node: Some("n1".into()),
            connack: Some(ConnackSeen::Code(0)),
            to_broker: 10,
            to_client: 4,
            duration: Duration::from_millis(1500),
            close: Close::Client,
            reject: None,
        }
    }

    #[test]
    fn text_escapes_client_strings_and_marks_absent_fields() {
        let line = format_text(&record());
        assert!(line.starts_with("time=2026-12-06T"), "{line}");
        assert!(
            line.contains(r#"client_id="evil\" close=client\nx""#),
            "{line}"
        );
        assert!(line.contains(r#"username="""#), "{line}");
        assert!(line.contains(" tls_version=- "), "{line}");
        assert!(line.contains(" connack=0 to_broker=10 to_client=4 duration_ms=1500 close=client"));
        assert!(!line.contains('\n'));
    }

    #[test]
    fn json_is_one_object_with_nulls() {
        let v: serde_json::Value = serde_json::from_str(&format_json(&record())).unwrap();
        assert_eq!(v["client_id"], "evil\" close=client\nx");
        assert_eq!(v["tls_cn"], serde_json::Value::Null);
        assert_eq!(v["connack"], 0);
        assert_eq!(v["close"], "client");
    }

    #[test]
    fn syslog_framing_is_rfc3164() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_528_700); // 2026-12-06 03:45:00
        assert_eq!(
            syslog_datagram("x", t, 42),
            "<134>Dec  6 03:45:00 mqgate[42]: x"
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }
}
