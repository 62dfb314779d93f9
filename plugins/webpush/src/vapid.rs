//! VAPID `Authorization` headers, signed once per push service and reused.
//!
//! A VAPID token names only the push service (`aud`), the contact and an expiry, so one token
//! serves every push to that service until it nears expiry. Signing (ECDSA P-256) is the
//! dearest step of a push; browsers' push services are few (FCM, Mozilla, Apple, ...), so the
//! cache stays small. Endpoints are chosen by clients, though: past [`MAX_AUDIENCES`] services
//! the cache starts over, so it cannot grow without bound.

use crate::crypto::VapidKey;
use std::collections::HashMap;
use std::sync::Mutex;
use sygnal_plugin_api::http::reqwest::header::HeaderValue;

/// How long a token is valid (pywebpush's 12 hours; RFC 8292 allows up to 24).
pub const VALIDITY_SECS: u64 = 12 * 60 * 60;

/// A token is signed again once less than this much of its validity is left, so that a push
/// service never sees one about to expire.
const RENEW_WHEN_LEFT_SECS: u64 = VALIDITY_SECS / 2;

/// Push services whose tokens are kept.
pub const MAX_AUDIENCES: usize = 1024;

/// The app's VAPID key, with the headers signed with it.
pub struct VapidSigner {
    key: VapidKey,
    /// `mailto:` the contact.
    contact: String,
    signed: Mutex<HashMap<String, Signed>>,
}

struct Signed {
    header: HeaderValue,
    expires_at: u64,
}

impl VapidSigner {
    /// A signer for `key`, naming `contact` (a `mailto:` URI) in every token.
    pub fn new(key: VapidKey, contact: String) -> Self {
        VapidSigner {
            key,
            contact,
            signed: Mutex::new(HashMap::new()),
        }
    }

    /// The `Authorization` header for the push service at `audience` (scheme://host[:port]),
    /// at `now` (Unix seconds): the cached one while it has time left, else a new one.
    pub fn authorization(&self, audience: &str, now: u64) -> Result<HeaderValue, String> {
        if let Some(signed) = self.cache().get(audience) {
            if signed.expires_at.saturating_sub(now) > RENEW_WHEN_LEFT_SECS {
                return Ok(signed.header.clone());
            }
        }
        let expires_at = now + VALIDITY_SECS;
        let header = self
            .key
            .authorization(audience, expires_at, &self.contact)?;
        let mut header = HeaderValue::try_from(header)
            .map_err(|_| format!("the VAPID header for {audience} is not a valid header"))?;
        header.set_sensitive(true);
        let mut cache = self.cache();
        if cache.len() >= MAX_AUDIENCES && !cache.contains_key(audience) {
            cache.clear();
        }
        cache.insert(
            audience.to_owned(),
            Signed {
                header: header.clone(),
                expires_at,
            },
        );
        Ok(header)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Signed>> {
        // Entries are inserted whole: a panic elsewhere cannot leave one half-written.
        self.signed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    fn signer() -> VapidSigner {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pkcs8.as_ref())
        );
        let key = VapidKey::from_pem(pem.as_bytes()).unwrap();
        VapidSigner::new(key, "mailto:ops@example.org".to_owned())
    }

    // ECDSA signatures are randomized: an identical header is a reused one.

    #[test]
    fn one_signature_per_push_service_until_half_its_validity_is_gone() {
        let signer = signer();
        let now = 1_800_000_000;
        let fcm = signer
            .authorization("https://fcm.googleapis.com", now)
            .unwrap();
        assert!(fcm.is_sensitive());
        assert_eq!(
            signer
                .authorization("https://fcm.googleapis.com", now + 600)
                .unwrap(),
            fcm
        );
        let mozilla = signer
            .authorization("https://updates.push.services.mozilla.com", now)
            .unwrap();
        assert_ne!(mozilla, fcm);
        let later = now + RENEW_WHEN_LEFT_SECS + 1;
        let renewed = signer
            .authorization("https://fcm.googleapis.com", later)
            .unwrap();
        assert_ne!(renewed, fcm);
        assert_eq!(
            signer
                .authorization("https://fcm.googleapis.com", later + 1)
                .unwrap(),
            renewed
        );
    }

    #[test]
    fn the_cache_is_bounded() {
        let signer = signer();
        for n in 0..MAX_AUDIENCES + 5 {
            signer
                .authorization(&format!("https://push{n}.example.org"), 1_800_000_000)
                .unwrap();
            assert!(signer.cache().len() <= MAX_AUDIENCES);
        }
    }
}
