//! Which admin API a client command talks to, and with which token.

use super::*;

/// The config file the client commands read when neither `--admin` nor `-c` is given.
pub const LOCAL_CONFIG: &str = "mqgate.toml";

/// Which admin API a client command talks to, and with which token.
#[derive(Debug)]
pub struct Target {
    /// `http://HOST:PORT`.
    pub base: String,
    pub token: Option<String>,
    /// Why the config's token could not be read (said if the API asks for one).
    pub token_problem: Option<TargetError>,
    /// Where the address came from, when the user did not name it (printed to stderr).
    pub note: Option<String>,
}

/// Decide the admin URL and token of a client command:
/// - the URL is `--admin`, else the `[admin] bind` of `-c FILE`, else that of
///   `./mqgate.toml` if it exists, else [`DEFAULT_ADMIN`]; the last two are said on
///   stderr ([`Target::note`]). A wildcard bind (`0.0.0.0`, `::`) is reached over
///   loopback; a config without `bind` means the default bind;
/// - the token is `env_token` (`MQGATE_ADMIN_TOKEN`) if set, else the config's
///   `[admin] token_file` (relative to the config file's directory) or `token_env`.
///
/// `-c FILE` that cannot be read or parsed is an error; a broken `./mqgate.toml` is
/// said and skipped.
pub fn target(
    admin: Option<String>,
    config: Option<&Path>,
    env_token: Option<String>,
) -> Result<Target, TargetError> {
    let env_token = env_token.filter(|t| !t.is_empty());
    let mut note = None;
    let admin_cfg = match config {
        Some(path) => Some(AdminSection::read(path)?),
        None if admin.is_none() && Path::new(LOCAL_CONFIG).is_file() => {
            match AdminSection::read(Path::new(LOCAL_CONFIG)) {
                Ok(a) => {
                    note = Some(format!(
                        "using the admin API at {} (the [admin] bind of ./{LOCAL_CONFIG}; -c FILE or --admin URL to choose another)",
                        a.url
                    ));
                    Some(a)
                }
                Err(e) => {
                    note = Some(format!(
                        "ignoring ./{LOCAL_CONFIG} ({e}); using the admin API at {DEFAULT_ADMIN} (-c FILE or --admin URL to choose another)"
                    ));
                    None
                }
            }
        }
        None => None,
    };
    let base = match (&admin, &admin_cfg) {
        (Some(a), _) => a.clone(),
        (None, Some(c)) => c.url.clone(),
        (None, None) => {
            if note.is_none() {
                note = Some(format!(
                    "no --admin URL, -c FILE or ./{LOCAL_CONFIG}: using the admin API at {DEFAULT_ADMIN}"
                ));
            }
            DEFAULT_ADMIN.to_string()
        }
    };
    let (token, token_problem) = match (env_token, admin_cfg) {
        (Some(t), _) => (Some(t), None),
        (None, Some(c)) => match c.token() {
            Ok(t) => (t, None),
            Err(e) => (None, Some(e)),
        },
        (None, None) => (None, None),
    };
    Ok(Target {
        base,
        token,
        token_problem,
        note,
    })
}

/// What the client commands need from a config file's `[admin]` table.
pub(super) struct AdminSection {
    url: String,
    /// `token_file`, resolved against the config file's directory.
    token_file: Option<PathBuf>,
    token_env: Option<String>,
}

impl AdminSection {
    fn read(path: &Path) -> Result<AdminSection, TargetError> {
        let text = std::fs::read_to_string(path).map_err(|error| TargetError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let v: toml::Value = toml::from_str(&text).map_err(|e| TargetError::Toml {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        let admin = v.get("admin");
        let field = |k: &str| admin.and_then(|a| a.get(k)).and_then(|x| x.as_str());
        let url = match field("bind") {
            Some(bind) => admin_url(bind).ok_or_else(|| TargetError::Bind {
                path: path.to_path_buf(),
                bind: bind.to_string(),
            })?,
            None => DEFAULT_ADMIN.to_string(),
        };
        let dir = path.parent().unwrap_or(Path::new(""));
        Ok(AdminSection {
            url,
            token_file: field("token_file").map(|f| dir.join(f)),
            token_env: field("token_env").map(str::to_string),
        })
    }

    /// The token the config gives the gateway, if any.
    fn token(&self) -> Result<Option<String>, TargetError> {
        if let Some(f) = &self.token_file {
            let bytes = std::fs::read(f).map_err(|error| TargetError::TokenFile {
                path: f.clone(),
                error,
            })?;
            let text = String::from_utf8(bytes)
                .map_err(|_| TargetError::TokenNotText { path: f.clone() })?;
            return Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()));
        }
        if let Some(var) = &self.token_env {
            return match std::env::var(var) {
                Ok(t) if !t.is_empty() => Ok(Some(t)),
                _ => Err(TargetError::TokenEnv { var: var.clone() }),
            };
        }
        Ok(None)
    }
}

/// `http://IP:PORT` for an `[admin] bind`; a wildcard bind is reached over loopback.
pub(super) fn admin_url(bind: &str) -> Option<String> {
    let addr: std::net::SocketAddr = bind.parse().ok()?;
    let ip = match addr.ip() {
        std::net::IpAddr::V4(a) if a.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(a) if a.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => format!("[{a}]"),
    };
    Some(format!("http://{ip}:{}", addr.port()))
}
