//! The feature ids the server announces: to clients in `hello`, to
//! internal clients, in `welcome`, and in the `X-Spreed-Signaling-Features`
//! header; the MCU's when an MCU is configured (also while Janus is away).

/// The most features a client may announce in its hello (Talk sends a
/// handful), and the longest one.
pub const MAX_CLIENT_FEATURES: usize = 64;
/// See [`MAX_CLIENT_FEATURES`].
pub const MAX_CLIENT_FEATURE_LEN: usize = 64;

/// Refuses a hello's feature list that is too long: the features are
/// copied into every join event and bus member entry of the session, and a
/// client does not get to make those large.
pub fn check_client_features(features: &[String]) -> Result<(), crate::api::error::ProtocolError> {
    let too_many = features.len() > MAX_CLIENT_FEATURES
        || features.iter().any(|f| f.len() > MAX_CLIENT_FEATURE_LEN);
    if too_many {
        return Err(super::invalid_format(format!(
            "at most {MAX_CLIENT_FEATURES} features of at most {MAX_CLIENT_FEATURE_LEN} bytes"
        )));
    }
    Ok(())
}

/// Feature ids announced to regular clients (hello `server.features`).
pub const CLIENT_FEATURES: &[&str] = &[
    "audio-video-permissions",
    "changed-users",
    "chat-relay",
    "dialout",
    "federation",
    "hello-v2",
    "incall-all",
    "join-features",
    "offer-codecs",
    "recipient-call",
    "serverinfo",
    "switchto",
    "transient-data",
    "transient-sessiondata",
    "welcome",
];

/// Feature ids added when an MCU is configured.
pub const MCU_FEATURES: &[&str] = &["mcu", "simulcast", "update-sdp"];

/// Feature ids announced to internal clients.
pub const INTERNAL_FEATURES: &[&str] = &[
    "changed-users",
    "chat-relay",
    "dialout",
    "federation",
    "hello-v2",
    "incall-all",
    "join-features",
    "offer-codecs",
    "recipient-call",
    "serverinfo",
    "switchto",
    "transient-data",
    "transient-sessiondata",
    "virtual-sessions",
    "welcome",
];

/// A feature list with the MCU features, sorted.
fn with_mcu(list: &[&'static str]) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = list.iter().chain(MCU_FEATURES).copied().collect();
    v.sort_unstable();
    v
}

static CLIENT_FEATURES_MCU: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| with_mcu(CLIENT_FEATURES));
static INTERNAL_FEATURES_MCU: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| with_mcu(INTERNAL_FEATURES));

/// The features of a client (`internal` or not), with the MCU ones when
/// an MCU is configured.
pub fn features(internal: bool, mcu: bool) -> &'static [&'static str] {
    match (internal, mcu) {
        (false, false) => CLIENT_FEATURES,
        (true, false) => INTERNAL_FEATURES,
        (false, true) => &CLIENT_FEATURES_MCU,
        (true, true) => &INTERNAL_FEATURES_MCU,
    }
}

/// The `X-Spreed-Signaling-Features` value (HTTP replies, the `/spreed`
/// upgrade, requests to Nextcloud): the features of a normal client, sorted,
/// as the Go server sends it (`virtual-sessions` is for internal clients).
pub fn header_features(mcu: bool) -> String {
    let mut v = features(false, mcu).to_vec();
    v.sort_unstable();
    v.join(", ")
}

/// Union of both lists, for `welcome`.
pub fn all_features(mcu: bool) -> Vec<&'static str> {
    let mut all: Vec<&str> = features(false, mcu)
        .iter()
        .chain(features(true, mcu))
        .copied()
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}
