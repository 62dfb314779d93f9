//! The APNs provider authentication token: an ES256 JWT signed with the team's `.p8` key.
//!
//! Apple refuses a token older than an hour (`ExpiredProviderToken`) and one replaced more
//! often than every 20 minutes (`TooManyProviderTokenUpdates`), so one token is shared by every
//! request and replaced once it is [`REFRESH_AFTER_SECS`] old: never minted per request.

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use sygnal_plugin_api::jwt;

/// A token is replaced once this old (Apple: at least 20, at most 60 minutes).
pub const REFRESH_AFTER_SECS: u64 = 50 * 60;
/// Apple refuses a new token sooner than this after the previous one.
pub const MIN_REFRESH_INTERVAL_SECS: u64 = 20 * 60;

/// Signs and caches provider tokens for one key.
pub struct ProviderToken {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    key_id: String,
    team_id: String,
    cached: Mutex<Option<Cached>>,
}

struct Cached {
    jwt: Arc<str>,
    /// The JWT's `iat`, Unix seconds. Wall-clock time on purpose: the monotonic clock stops
    /// while a machine is suspended, Apple's does not.
    issued_at: u64,
}

impl std::fmt::Debug for ProviderToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderToken")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ProviderToken {
    /// Loads a `.p8` key (PEM, PKCS#8, P-256). Errors say what is wrong with the key, never
    /// what is in it.
    pub fn from_pem(pem: &[u8], key_id: &str, team_id: &str) -> Result<Self, String> {
        let der = match PrivateKeyDer::from_pem_slice(pem) {
            Ok(PrivateKeyDer::Pkcs8(der)) => der,
            Ok(_) => return Err("not a PKCS#8 key (expected an APNs .p8 key file)".into()),
            Err(err) => return Err(format!("no private key found: {err}")),
        };
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|err| format!("not a usable P-256 (ES256) key: {err}"))?;
        Ok(ProviderToken {
            key,
            rng,
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
            cached: Mutex::new(None),
        })
    }

    fn cache(&self) -> MutexGuard<'_, Option<Cached>> {
        // A panic while holding the lock leaves at worst a stale token, which is still usable.
        self.cached
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The token to send now, minted when there is none or it is due for refresh.
    pub fn current(&self) -> Result<Arc<str>, String> {
        self.current_at(unix_now())
    }

    /// [`current`](Self::current) at a given time (Unix seconds).
    pub fn current_at(&self, now: u64) -> Result<Arc<str>, String> {
        let mut cache = self.cache();
        if let Some(cached) = cache.as_ref() {
            // A clock that went backwards also forces a new token: its age is unknown.
            let fresh = now >= cached.issued_at && now - cached.issued_at < REFRESH_AFTER_SECS;
            if fresh {
                return Ok(Arc::clone(&cached.jwt));
            }
        }
        let jwt: Arc<str> = self.mint(now)?.into();
        *cache = Some(Cached {
            jwt: Arc::clone(&jwt),
            issued_at: now,
        });
        Ok(jwt)
    }

    /// APNs answered `ExpiredProviderToken`: drops the cached token so the next request mints
    /// one, unless it is too young to be replaced. Returns whether it was dropped.
    pub fn expired_by_apns(&self) -> bool {
        self.expired_by_apns_at(unix_now())
    }

    /// [`expired_by_apns`](Self::expired_by_apns) at a given time (Unix seconds).
    pub fn expired_by_apns_at(&self, now: u64) -> bool {
        let mut cache = self.cache();
        let replaceable = cache.as_ref().is_none_or(|cached| {
            now < cached.issued_at || now - cached.issued_at >= MIN_REFRESH_INTERVAL_SECS
        });
        if replaceable {
            *cache = None;
        }
        replaceable
    }

    /// Signs a new token issued at `iat`.
    fn mint(&self, iat: u64) -> Result<String, String> {
        let header = serde_json::json!({"alg": "ES256", "kid": self.key_id});
        let claims = serde_json::json!({"iss": self.team_id, "iat": iat});
        jwt::sign_compact(&header, &claims, |input| {
            self.key
                .sign(&self.rng, input)
                .map_err(|_| "signing the provider token failed".to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use ring::signature::{KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
    use serde_json::Value;

    fn p8() -> String {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("key generation")
            .serialize_pem()
    }

    fn decode_part(part: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn mints_a_verifiable_es256_jwt() {
        let token = ProviderToken::from_pem(p8().as_bytes(), "KEY1234567", "TEAM123456").unwrap();
        let jwt = token.current_at(1_700_000_000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            decode_part(parts[0]),
            serde_json::json!({"alg": "ES256", "kid": "KEY1234567"})
        );
        assert_eq!(
            decode_part(parts[1]),
            serde_json::json!({"iss": "TEAM123456", "iat": 1_700_000_000u64})
        );
        let public = token.key.public_key().as_ref().to_vec();
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("signature verifies");
    }

    #[test]
    fn reused_until_refresh_age_then_replaced() {
        let token = ProviderToken::from_pem(p8().as_bytes(), "K", "T").unwrap();
        let t0 = 1_700_000_000;
        let first = token.current_at(t0).unwrap();
        assert!(Arc::ptr_eq(&first, &token.current_at(t0 + 1).unwrap()));
        assert!(Arc::ptr_eq(
            &first,
            &token.current_at(t0 + REFRESH_AFTER_SECS - 1).unwrap()
        ));
        let second = token.current_at(t0 + REFRESH_AFTER_SECS).unwrap();
        assert_ne!(first, second);
        assert!(Arc::ptr_eq(
            &second,
            &token.current_at(t0 + REFRESH_AFTER_SECS + 60).unwrap()
        ));
        // The refresh age is within Apple's window.
        const { assert!(REFRESH_AFTER_SECS >= 20 * 60 && REFRESH_AFTER_SECS < 60 * 60) };
    }

    #[test]
    fn clock_going_backwards_mints_a_new_token() {
        let token = ProviderToken::from_pem(p8().as_bytes(), "K", "T").unwrap();
        let first = token.current_at(1_700_000_000).unwrap();
        assert_ne!(first, token.current_at(1_699_999_000).unwrap());
    }

    #[test]
    fn expired_by_apns_respects_the_minimum_interval() {
        let token = ProviderToken::from_pem(p8().as_bytes(), "K", "T").unwrap();
        let t0 = 1_700_000_000;
        let first = token.current_at(t0).unwrap();
        assert!(!token.expired_by_apns_at(t0 + 60));
        assert!(Arc::ptr_eq(&first, &token.current_at(t0 + 61).unwrap()));
        assert!(token.expired_by_apns_at(t0 + MIN_REFRESH_INTERVAL_SECS));
        assert_ne!(
            first,
            token.current_at(t0 + MIN_REFRESH_INTERVAL_SECS).unwrap()
        );
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(ProviderToken::from_pem(b"", "K", "T")
            .unwrap_err()
            .contains("no private key"));
        let rsa_like = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        assert!(ProviderToken::from_pem(rsa_like.as_bytes(), "K", "T")
            .unwrap_err()
            .contains("PKCS#8"));
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
            .unwrap()
            .serialize_pem();
        assert!(ProviderToken::from_pem(p384.as_bytes(), "K", "T")
            .unwrap_err()
            .contains("P-256"));
    }
}
