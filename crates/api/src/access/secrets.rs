//! Users' passwords (argon2id, the `argon2` crate's recommended settings)
//! and API tokens (`hft_<id>_<secret>`: the id finds it, the secret's
//! SHA-256 is all the record keeps). Hashing is slow on purpose: callers
//! run it off the async runtime.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};

pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

pub fn password_matches(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A password for a new user, shown once: 20 characters from a 56-letter
/// alphabet without look-alikes (116 bits).
pub fn new_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..20)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A new token: (id, the whole token shown once, the secret's hash).
pub fn new_token() -> (String, String, String) {
    let id = hex::encode(rand::random::<[u8; 6]>());
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let token = format!("hft_{id}_{secret}");
    (id, token, secret_hash(&secret))
}

/// A presented token split into (id, secret).
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("hft_")?;
    rest.split_once('_')
}

pub fn secret_hash(secret: &str) -> String {
    holdfast_pki::fingerprint(secret.as_bytes())
}

/// Compares two hashes in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_check() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(password_matches("correct horse", &hash));
        assert!(!password_matches("correct horsf", &hash));
        assert!(!password_matches("correct horse", "not a hash"));
        let (id, token, hash) = new_token();
        let (parsed_id, secret) = parse_token(&token).unwrap();
        assert_eq!(parsed_id, id);
        assert!(same(&secret_hash(secret), &hash));
        assert!(!same(&secret_hash("x"), &hash));
        assert_eq!(new_password().len(), 20);
    }
}
