//! `[turn]`: the TURN REST API of the Go server (`/turn/credentials`):
//! the API key Janus sends, the secret shared with the TURN server and the
//! TURN servers handed out.

use super::goconf::{expand_env, split_list, IniFile};
use super::ConfigError;

/// `[turn]` as the Go server reads it.
#[derive(Clone, PartialEq, Default)]
pub struct TurnConfig {
    /// `apikey`: what a request must send as `key` (or `api`).
    pub api_key: String,
    /// `secret`: shared with the TURN server (coturn's
    /// `static-auth-secret`), signs the credentials.
    pub secret: String,
    /// `servers`: the TURN URIs handed out; empty disables the API.
    pub servers: Vec<String>,
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnConfig")
            .field("api_key", &super::redact(&self.api_key))
            .field("secret", &super::redact(&self.secret))
            .field("servers", &self.servers)
            .finish()
    }
}

/// Reads `[turn]`; servers without an API key or secret are an error, as
/// in the Go server.
pub(super) fn parse(ini: &IniFile) -> Result<TurnConfig, ConfigError> {
    let get = |key: &str| {
        ini.get("turn", key)
            .map(|v| expand_env(&v))
            .unwrap_or_default()
    };
    let servers = split_list(&ini.get("turn", "servers").unwrap_or_default());
    let c = TurnConfig {
        api_key: get("apikey"),
        secret: get("secret"),
        servers,
    };
    if !c.servers.is_empty() {
        if c.api_key.is_empty() {
            return Err(ConfigError(
                "[turn] apikey: required when servers are set (Janus sends it to /turn/credentials)".into(),
            ));
        }
        if c.secret.is_empty() {
            return Err(ConfigError(
                "[turn] secret: required when servers are set (the TURN server's shared secret)"
                    .into(),
            ));
        }
    }
    Ok(c)
}
