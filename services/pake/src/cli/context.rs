//! Contexts: named sets of service URLs and credentials in the user's config file
//! (`$PAKE_CONFIG`, else `$XDG_CONFIG_HOME/pake/config.toml`, else
//! `~/.config/pake/config.toml`), written with mode 0600 because it holds secrets. Flags
//! and `PAKE_*` variables override the current context; the URLs default to the ports a
//! local `pake serve` listens on.

use super::failure::{Class, Failure};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const DEFAULT_CONTEXT: &str = "default";

#[derive(Serialize, Deserialize, Default, Debug)]
pub struct ConfigFile {
    /// The context commands use when `--context` names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// Where a platform is and how to authenticate to it.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
pub struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance: Option<String>,
    /// A static token (from `pake token` or elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// An API client exchanged at the gateway for tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The last token fetched with the client credentials, reused until it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// When it expires, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_expires_at: Option<u64>,
}

/// The service URLs a command talks to.
#[derive(Clone, Debug)]
pub struct Urls {
    pub registry: String,
    pub gateway: String,
    pub monitoring: String,
    pub performance: String,
}

impl ConfigFile {
    pub fn path() -> PathBuf {
        if let Some(path) = std::env::var_os("PAKE_CONFIG").filter(|p| !p.is_empty()) {
            return PathBuf::from(path);
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".config"));
        base.join("pake").join("config.toml")
    }

    /// The file at `path`; an absent file is an empty configuration.
    pub fn load(path: &Path) -> Result<ConfigFile, Failure> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|error| {
                Failure::usage(format!("{} is not a valid pake configuration: {error}", path.display()))
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(error) => Err(Failure::new(Class::General, format!("reading {}: {error}", path.display()))),
        }
    }

    /// Writes the file readable by its owner only, replacing it whole.
    pub fn save(&self, path: &Path) -> Result<(), Failure> {
        let text = toml::to_string_pretty(self).map_err(|error| Failure::new(Class::General, error.to_string()))?;
        let failed =
            |error: std::io::Error| Failure::new(Class::General, format!("writing {}: {error}", path.display()));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let temporary = path.with_extension(format!("toml.{}", std::process::id()));
        write_private(&temporary, &text).map_err(failed)?;
        std::fs::rename(&temporary, path).map_err(failed)
    }

    /// The name of the context to use: the one asked for, else the current one.
    pub fn selected(&self, asked: Option<&str>) -> String {
        asked.map(str::to_string).or_else(|| self.current.clone()).unwrap_or_else(|| DEFAULT_CONTEXT.to_string())
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

impl Context {
    /// The cached access token and how long it has left, if it has any.
    pub fn cached_token(&self) -> Option<(String, Duration)> {
        let token = self.access_token.clone()?;
        let left = self.access_token_expires_at?.checked_sub(unix_now())?;
        (left > 0).then(|| (token, Duration::from_secs(left)))
    }

    pub fn cache_token(&mut self, token: String, left: Duration) {
        self.access_token = Some(token);
        self.access_token_expires_at = Some(unix_now() + left.as_secs());
    }

    /// How the context authenticates, for listings (never the secret itself).
    pub fn auth_kind(&self) -> String {
        match (&self.token, &self.client_id) {
            (Some(_), _) => "token".into(),
            (None, Some(id)) => format!("client {id}"),
            (None, None) => "none".into(),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The URLs of the four services for a context: a flag or variable wins, then the context,
/// then the local `pake serve` default.
pub fn urls(context: &Context, flags: &super::Target) -> Urls {
    let pick = |flag: &Option<String>, stored: &Option<String>, default: &str| {
        flag.clone().or_else(|| stored.clone()).unwrap_or_else(|| default.to_string()).trim_end_matches('/').to_string()
    };
    Urls {
        registry: pick(&flags.registry_url, &context.registry, "http://127.0.0.1:8000"),
        gateway: pick(&flags.gateway_url, &context.gateway, "http://127.0.0.1:8080"),
        monitoring: pick(&flags.monitoring_url, &context.monitoring, "http://127.0.0.1:9090"),
        performance: pick(&flags.performance_url, &context.performance, "http://127.0.0.1:8090"),
    }
}
