//! The dashboard's sessions: a random id in a cookie, and beside it on the server a CSRF token
//! and an expiry. Only the id's SHA-256 is kept, as for vault tokens.

use std::collections::HashMap;
use std::sync::Mutex;

use rand::distr::{Alphanumeric, SampleString};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::token::TokenHash;

/// The session cookie's name. Its path is `/ui`, so it never travels with a proxied call.
pub const COOKIE: &str = "vault_key_ui";
/// How long a sign-in lasts, whatever the activity: an operator signs in again each working day.
pub const LIFETIME: time::Duration = time::Duration::hours(8);
/// Most sessions kept at once. Only bearers of the admin token open one; the bound keeps a
/// script that signs in in a loop from growing the map without end.
const MAX_SESSIONS: usize = 64;
/// Random characters of a session id or a CSRF token (~256 bits).
const SECRET_LEN: usize = 43;

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token every form of this session carries.
    csrf: String,
    expires_at: OffsetDateTime,
    /// What the last action did, shown once on the next page (kept here rather than in a URL,
    /// where a link could put words in the dashboard's mouth).
    notice: Option<String>,
}

impl Session {
    /// The CSRF token, for the forms of a page.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Whether a form's token is this session's, compared in constant time.
    pub fn csrf_matches(&self, presented: &str) -> bool {
        self.csrf.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

/// Every open session, by the hash of its id.
#[derive(Debug, Default)]
pub struct Sessions {
    by_id_hash: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// Opens a session; returns the id for the cookie. The oldest session goes if too many are
    /// open.
    pub fn open(&self, now: OffsetDateTime) -> String {
        let id = random_secret();
        let session = Session {
            csrf: random_secret(),
            expires_at: now + LIFETIME,
            notice: None,
        };
        let mut sessions = self.lock();
        sessions.retain(|_, s| s.expires_at > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(hash, _)| *hash)
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(TokenHash::of(&id).0, session);
        id
    }

    /// The live session with this id, if any.
    pub fn find(&self, id: &str, now: OffsetDateTime) -> Option<Session> {
        let hash = TokenHash::of(id).0;
        let mut sessions = self.lock();
        match sessions.get(&hash) {
            Some(session) if session.expires_at > now => Some(session.clone()),
            Some(_) => {
                sessions.remove(&hash);
                None
            }
            None => None,
        }
    }

    /// Leaves a notice for the session's next page.
    pub fn leave_notice(&self, id: &str, notice: String) {
        if let Some(session) = self.lock().get_mut(&TokenHash::of(id).0) {
            session.notice = Some(notice);
        }
    }

    /// The notice left for this page, once.
    pub fn take_notice(&self, id: &str) -> Option<String> {
        self.lock()
            .get_mut(&TokenHash::of(id).0)
            .and_then(|session| session.notice.take())
    }

    /// Ends a session.
    pub fn close(&self, id: &str) {
        self.lock().remove(&TokenHash::of(id).0);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // A panic while holding the lock leaves the map as it was between whole operations.
        self.by_id_hash
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn random_secret() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), SECRET_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_until_it_expires_or_is_closed() {
        let sessions = Sessions::default();
        let now = OffsetDateTime::UNIX_EPOCH;
        let id = sessions.open(now);
        let session = sessions.find(&id, now).expect("just opened");
        assert!(session.csrf_matches(session.csrf()));
        assert!(!session.csrf_matches(""));
        assert!(sessions.find("not-an-id", now).is_none());
        assert!(sessions.find(&id, now + LIFETIME).is_none(), "expired");
        let id = sessions.open(now);
        sessions.leave_notice(&id, "done".to_owned());
        assert_eq!(sessions.take_notice(&id).as_deref(), Some("done"));
        assert_eq!(sessions.take_notice(&id), None, "shown once");
        sessions.close(&id);
        assert!(sessions.find(&id, now).is_none(), "closed");
    }

    #[test]
    fn the_oldest_session_goes_when_too_many_are_open() {
        let sessions = Sessions::default();
        let start = OffsetDateTime::UNIX_EPOCH;
        let first = sessions.open(start);
        let later: Vec<String> = (1..=MAX_SESSIONS as i64)
            .map(|s| sessions.open(start + time::Duration::seconds(s)))
            .collect();
        let now = start + time::Duration::seconds(MAX_SESSIONS as i64);
        assert!(sessions.find(&first, now).is_none());
        assert!(later.iter().all(|id| sessions.find(id, now).is_some()));
    }
}
