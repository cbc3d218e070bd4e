//! Room, user and session frames from the bus, delivered to the local
//! sessions (the bus task calls these through `pacing.rs`, never waiting).

use std::sync::Arc;

use bytes::Bytes;

use super::body_frame;
use super::dispatch::key_of;
use crate::bus::{encode, process_subject, Header};
use crate::hub::outbox::Outbox;
use crate::hub::room::RoomKey;
use crate::hub::{Hub, State};

/// What delivering a frame from the bus left behind.
#[derive(Default)]
pub(super) struct Delivered {
    /// Recipients left more than half full.
    pub congested: Vec<Arc<Outbox>>,
    /// The client that sent it: its process and session id.
    pub sender: Option<(String, String)>,
}

impl State {
    /// Runs `f` and returns, with its result, the outboxes its deliveries
    /// left more than half full.
    pub(crate) fn collecting_congestion<R>(
        &mut self,
        f: impl FnOnce(&mut State) -> R,
    ) -> (R, Vec<Arc<crate::hub::outbox::Outbox>>) {
        self.sessions.congested = Some(Vec::new());
        let r = f(self);
        let c = self.sessions.congested.take().unwrap_or_default();
        (r, c)
    }
}

impl Hub {
    /// Delivers a frame for the local members of a room, the sessions of a
    /// user or one session: the recipients it left congested, and the
    /// sender to hold back (its process, its id), if a client sent it.
    pub(super) fn deliver_bus_frame(&self, h: Header, body: &Bytes) -> Delivered {
        let (from, except, congested) = match h {
            Header::RoomFrame {
                from,
                backend,
                room,
                except,
                call_only,
            } => {
                let c =
                    self.room_frame(&key_of(&backend, &room), body, except.as_deref(), call_only);
                (from, except, c)
            }
            Header::UserFrame {
                from,
                backend,
                user,
                except,
            } => {
                let c = self.user_frame(&backend, &user, except.as_deref(), body);
                (from, except, c)
            }
            Header::SessionFrame {
                sid,
                backend,
                reply_to,
                id,
            } => return self.session_frame(sid, backend, reply_to, id, body),
            _ => return Delivered::default(),
        };
        // `except` is the sender of a client's room or user message.
        Delivered {
            congested,
            sender: except.map(|e| (from, e)),
        }
    }

    /// A frame of another process's client for the members of a local
    /// room; returns the recipients it left congested.
    fn room_frame(
        &self,
        key: &RoomKey,
        body: &Bytes,
        except: Option<&str>,
        call_only: bool,
    ) -> Vec<Arc<Outbox>> {
        let Some(f) = body_frame(body) else {
            return Vec::new();
        };
        let ((), congested) = self.mutate(|st| {
            st.collecting_congestion(|st| {
                if call_only {
                    st.broadcast_call(key, &f, except);
                } else {
                    st.broadcast(key, &f, except);
                }
            })
        });
        congested
    }

    /// A frame for a session of this process: delivered, or forwarded to
    /// the process it moved to; for a session that is gone (or of another
    /// backend than the sender's) nothing happens, as in the Go server.
    fn session_frame(
        &self,
        sid: String,
        backend: Option<String>,
        reply_to: Option<String>,
        id: Option<String>,
        body: &Bytes,
    ) -> Delivered {
        let Some(f) = body_frame(body) else {
            return Delivered::default();
        };
        self.mutate(|st| {
            let found = st.sessions.map.get(sid.as_str()).map(|s| {
                backend
                    .as_deref()
                    .is_none_or(|b| b == s.backend.id.as_ref())
            });
            match found {
                Some(true) => {
                    let ((), congested) =
                        st.collecting_congestion(|st| st.sessions.deliver(&sid, &f));
                    let sender = reply_to.and_then(|r| {
                        let from = st.cluster.owner_of_session(&r)?.to_string();
                        Some((from, r))
                    });
                    return Delivered { congested, sender };
                }
                Some(false) => {}
                None if st.sessions.arriving.contains_key(sid.as_str()) => {
                    // On its way here: kept for it.
                    let limits = st.sessions.limits.clone();
                    if let Some(a) = st.sessions.arriving.get_mut(sid.as_str()) {
                        a.push(&f, &limits);
                    }
                }
                None => {
                    if let Some((pid, _)) = st.cluster.moved.get(sid.as_str()) {
                        // Resumed elsewhere: forward.
                        let subject = process_subject(pid);
                        let h = Header::SessionFrame {
                            sid,
                            backend,
                            reply_to,
                            id,
                        };
                        st.bus.publish(subject, encode(&h, Some(body)));
                    }
                }
            }
            Delivered::default()
        })
    }

    /// A frame of another process's client for the sessions of a user;
    /// returns the recipients it left congested.
    fn user_frame(
        &self,
        backend: &str,
        user: &str,
        except: Option<&str>,
        body: &Bytes,
    ) -> Vec<Arc<Outbox>> {
        let Some(f) = body_frame(body) else {
            return Vec::new();
        };
        let ((), congested) = self.mutate(|st| {
            st.collecting_congestion(|st| st.send_to_user(&backend.into(), user, &f, except))
        });
        congested
    }
}
