//! Login sessions, kept in the memory of the node that made them (a
//! browser talks to one node; the relay carries its user to the others):
//! a random id in an `HttpOnly; Secure; SameSite=Strict` cookie, a CSRF
//! token the client sends back in `X-CSRF-Token` with every change, and an
//! idle expiry. The user's role is read from the record at every call, so
//! a changed role or a removed user takes effect at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub const COOKIE: &str = "holdfast_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub csrf: String,
    last_used: Instant,
}

#[derive(Debug)]
pub struct Sessions {
    idle: Duration,
    open: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new(idle: Duration) -> Self {
        Self {
            idle,
            open: Mutex::default(),
        }
    }

    /// A new session for `user`: (id, CSRF token).
    pub fn open(&self, user: &str) -> (String, String) {
        let id = hex::encode(rand::random::<[u8; 32]>());
        let csrf = hex::encode(rand::random::<[u8; 32]>());
        let mut open = self.open.lock();
        let now = Instant::now();
        open.retain(|_, s| now.duration_since(s.last_used) < self.idle);
        open.insert(
            id.clone(),
            Session {
                user: user.to_string(),
                csrf: csrf.clone(),
                last_used: now,
            },
        );
        (id, csrf)
    }

    /// The session `id`, if open and used within the idle time (which it
    /// now restarts); an expired one is closed.
    pub fn touch(&self, id: &str) -> Option<Session> {
        self.touch_at(id, Instant::now())
    }

    fn touch_at(&self, id: &str, now: Instant) -> Option<Session> {
        let mut open = self.open.lock();
        let session = open.get_mut(id)?;
        if now.duration_since(session.last_used) >= self.idle {
            open.remove(id);
            return None;
        }
        session.last_used = now;
        Some(session.clone())
    }

    pub fn close(&self, id: &str) {
        self.open.lock().remove(id);
    }

    /// Closes every session of `user` (removed, or password changed).
    pub fn close_user(&self, user: &str) {
        self.open.lock().retain(|_, s| s.user != user);
    }
}

/// The `Set-Cookie` value opening (or, with an empty id, closing) a
/// session, scoped to the API's base path.
pub fn cookie(id: &str, base_path: &str, idle: Duration) -> String {
    let path = if base_path.is_empty() { "/" } else { base_path };
    let age = if id.is_empty() { 0 } else { idle.as_secs() };
    format!("{COOKIE}={id}; Path={path}; Max-Age={age}; HttpOnly; Secure; SameSite=Strict")
}

/// The session id a request's `Cookie` header carries.
pub fn from_cookie_header(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(name, value)| (name == COOKIE).then_some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_and_close() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let (id, csrf) = sessions.open("alice");
        let session = sessions.touch(&id).expect("open");
        assert_eq!(
            (session.user.as_str(), session.csrf.as_str()),
            ("alice", csrf.as_str())
        );
        let later = Instant::now() + Duration::from_secs(59);
        assert!(sessions.touch_at(&id, later).is_some(), "used within 60 s");
        assert!(
            sessions
                .touch_at(&id, later + Duration::from_secs(61))
                .is_none(),
            "idle past 60 s"
        );
        assert!(
            sessions.touch(&id).is_none(),
            "an expired session is closed"
        );
        let (id, _) = sessions.open("bob");
        sessions.close_user("bob");
        assert!(sessions.touch(&id).is_none());
        assert_eq!(
            from_cookie_header("a=b; holdfast_session=xyz; c=d"),
            Some("xyz")
        );
        assert!(cookie("xyz", "/hf", Duration::from_secs(60))
            .contains("Path=/hf; Max-Age=60; HttpOnly; Secure; SameSite=Strict"));
    }
}
