//! The steps both MCU backends take alike ([`super::direct::JanusMcu`],
//! [`super::proxy::ProxyMcu`]), over what each does its own way
//! ([`Backend`]): the hub's [`Command`]s, closing a stream, a permission
//! change, registering a subscriber that has its offer.

use std::future::Future;
use std::sync::Arc;

use super::registry::{Clients, Published, Subscribed};
use super::{Command, McuError, StreamType, UNSHARE_DELAY};

/// What a backend does its own way (with Janus or a proxy).
pub(super) trait Backend: Send + Sync + 'static {
    type P: Published + Send + Sync + 'static;
    type S: Subscribed<Id = <Self::P as Published>::Id> + Send + Sync + 'static;
    fn clients(&self) -> &Clients<Self::P, Self::S>;
    /// Closes everything of a session.
    fn close_session(&self, session: &Arc<str>) -> impl Future<Output = ()> + Send;
    /// Forgets a publisher (with the subscribers of its stream here) and
    /// removes it from the backend.
    fn close_publisher(&self, p: Arc<Self::P>) -> impl Future<Output = ()> + Send;
    /// Forgets a subscriber and removes it from the backend.
    fn close_subscriber(&self, s: Arc<Self::S>) -> impl Future<Output = ()> + Send;
    /// Removes a subscriber that was never registered (its offer or its
    /// registration failed).
    fn abandon(&self, s: &Arc<Self::S>) -> impl Future<Output = ()> + Send;
}

/// Runs a hub's [`Command`] in the background.
pub(super) fn run_command<B: Backend>(m: &Arc<B>, cmd: Command) {
    let m = m.clone();
    tokio::spawn(async move {
        match cmd {
            Command::CloseSession(s) => m.close_session(&s).await,
            Command::Permissions(s, perms) => apply_permissions(&*m, &s, &perms).await,
            Command::UnshareScreen(s) => {
                tokio::time::sleep(UNSHARE_DELAY).await;
                close_stream(&*m, &s, StreamType::Screen).await;
            }
        }
    });
}

/// Closes a session's publisher of `stream`, if any.
pub(super) async fn close_stream<B: Backend>(b: &B, session: &Arc<str>, stream: StreamType) {
    if let Some(p) = b.clients().publisher(session, stream) {
        b.close_publisher(p).await;
    }
}

/// Closes the publisher a new permission set no longer allows
/// ([`super::revoked_stream`]).
async fn apply_permissions<B: Backend>(b: &B, session: &Arc<str>, perms: &[String]) {
    if let Some(p) = b.clients().revoked(session, perms) {
        tracing::info!(session = %session, stream = p.stream().as_str(), "permission revoked, closing publisher");
        b.close_publisher(p).await;
    }
}

/// Registers subscriber `s` of `p`, which has its offer (see
/// [`Clients::add_subscriber`]); abandons it when that fails, closes the
/// subscriber it replaces.
pub(super) async fn register_subscriber<B: Backend>(
    b: &B,
    p: &Arc<B::P>,
    s: &Arc<B::S>,
    admit: impl FnOnce() -> Result<(), McuError>,
) -> Result<(), McuError> {
    let old = match b.clients().add_subscriber(p, s, admit) {
        Ok(old) => old,
        Err(e) => {
            b.abandon(s).await;
            return Err(e);
        }
    };
    if let Some(old) = old {
        b.close_subscriber(old).await;
    }
    Ok(())
}
