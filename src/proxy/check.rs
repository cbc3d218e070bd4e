//! `spreed-signaling proxy check`: the findings of `proxy.conf`, every
//! `[tokens]` key, and Janus probed as the proxy would use it.

use std::path::Path;

use super::config::ProxyConfig;
use super::tokens::TokenKeys;
use crate::check::CheckLine;

/// The report's lines (any line with `ok == false` fails the check).
pub async fn lines(config: &ProxyConfig, path: &Path) -> Vec<CheckLine> {
    let name = if config.name.is_empty() {
        String::new()
    } else {
        format!(" ([app] name {})", config.name)
    };
    let mut lines = vec![CheckLine::from_text(
        true,
        false,
        format!("{}: proxy configuration valid{name}", path.display()),
    )];
    lines.extend(config.findings.iter().map(CheckLine::from_finding));
    if config.listen.is_empty() {
        lines.push(CheckLine::from_text(
            true,
            true,
            "[http] listen: not set: the proxy would not listen (no server could connect)".into(),
        ));
    }
    if config.tokens.is_empty() {
        lines.push(CheckLine::from_text(
            true,
            true,
            "[tokens]: no key: no signaling server can connect".into(),
        ));
    }
    for entry in &config.tokens {
        let one = std::slice::from_ref(entry);
        lines.push(match TokenKeys::load(one, true) {
            Ok(_) => CheckLine::from_text(
                true,
                false,
                format!(
                    "[tokens] {}: RSA public key {} loaded",
                    entry.0,
                    entry.1.display()
                ),
            ),
            Err(e) => CheckLine::from_text(false, false, e),
        });
    }
    lines.push(crate::check::probe_janus(&config.mcu.url).await);
    lines
}
