//! Sessions any member accepts: a token signed with the cluster's session
//! key (in the record, so every member has it), which a browser sends in
//! `X-Holdfast-Session` to whichever node answers — the console carries on
//! through another node when its own dies, without a new login. The
//! signature covers the user's password hash, so a new password ends the
//! user's tokens everywhere; a token lasts the idle time and is renewed by
//! `GET /v1/session`. Sent in a header, never a cookie, it is no ambient
//! credential: no CSRF token is needed, and another origin cannot use it
//! without having it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HEADER: &str = "x-holdfast-session";

/// What a token is signed with: the cluster's session key (hex, from the
/// record) and each user's password hash.
#[derive(Debug, Clone, Copy)]
pub struct Keys<'r, F: Fn(&str) -> Option<&'r str>> {
    pub session_key: &'r str,
    pub password_hash: F,
}

/// `user.expires.mac` for `user`, valid until `expires` (Unix seconds);
/// None when there is no session key or no such user.
pub fn issue<'r>(
    keys: Keys<'r, impl Fn(&str) -> Option<&'r str>>,
    user: &str,
    expires: u64,
) -> Option<String> {
    let mac = mac(&keys, user, expires).ok()?;
    Some(format!(
        "{user}.{expires}.{}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

/// The user a token names, if its signature holds and it has not expired;
/// else why not.
pub fn verify<'r>(
    keys: Keys<'r, impl Fn(&str) -> Option<&'r str>>,
    token: &str,
    now: u64,
) -> Result<String, &'static str> {
    let mut parts = token.rsplitn(3, '.');
    let (Some(signature), Some(expires), Some(user)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("not of the form user.expiry.signature");
    };
    let expires: u64 = expires.parse().map_err(|_| "its expiry is not a number")?;
    let signature = hex::decode(signature).map_err(|_| "its signature is not hex")?;
    mac(&keys, user, expires)?
        .verify_slice(&signature)
        .map_err(|_| "its signature is wrong (or the password changed)")?;
    if expires <= now {
        return Err("it has expired: log in again");
    }
    Ok(user.to_string())
}

fn mac<'r>(
    keys: &Keys<'r, impl Fn(&str) -> Option<&'r str>>,
    user: &str,
    expires: u64,
) -> Result<Hmac<Sha256>, &'static str> {
    let key = hex::decode(keys.session_key)
        .ok()
        .filter(|k| !k.is_empty())
        .ok_or("the cluster has no session key")?;
    let hash = (keys.password_hash)(user).ok_or("its user does not exist")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| "no session key")?;
    mac.update([user, &expires.to_string(), hash].join("\0").as_bytes());
    Ok(mac)
}

/// A new random session key, hex.
pub fn new_key() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys<'r>(key: &'r str, hash: &'r str) -> Keys<'r, impl Fn(&str) -> Option<&'r str>> {
        Keys {
            session_key: key,
            password_hash: move |user: &str| (user == "alice").then_some(hash),
        }
    }

    #[test]
    fn a_token_holds_until_expiry_password_change_or_another_key() {
        let key = new_key();
        let token = issue(keys(&key, "hash-1"), "alice", 1000).expect("token");
        assert_eq!(
            verify(keys(&key, "hash-1"), &token, 999).as_deref(),
            Ok("alice")
        );
        assert!(
            verify(keys(&key, "hash-1"), &token, 1000).is_err(),
            "expired"
        );
        let forged = token.replace("alice.1000", "alice.9999");
        assert!(
            verify(keys(&key, "hash-1"), &forged, 999).is_err(),
            "expiry changed"
        );
        assert!(verify(keys(&key, "hash-1"), "alice.1000", 999).is_err());
        let other = new_key();
        assert!(
            verify(keys(&other, "hash-1"), &token, 999).is_err(),
            "another cluster's key"
        );
        assert!(
            verify(keys(&key, "hash-2"), &token, 999).is_err(),
            "password changed"
        );
        assert!(
            issue(keys(&key, "hash-1"), "bob", 1000).is_none(),
            "no such user"
        );
        assert!(
            issue(keys("", "hash-1"), "alice", 1000).is_none(),
            "no key, no token"
        );
    }
}
