//! Message encryption (RFC 8291, `aes128gcm`) and VAPID authorization (RFC 8292), with `ring`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, ECDH_P256};
use ring::hkdf::{self, KeyType, Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use sygnal_plugin_api::jwt;

/// The record size announced in the header: one record holds the whole message.
const RECORD_SIZE: u32 = 4096;

/// A subscription's keys, as the browser gave them.
pub struct Subscription {
    /// The user agent's ECDH public key (`p256dh`, an uncompressed P-256 point).
    pub p256dh: [u8; 65],
    /// The authentication secret (`auth`).
    pub auth: [u8; 16],
}

/// Decodes URL-safe or standard base64, padded or not, as browsers and libraries vary.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let trimmed = text.trim().trim_end_matches('=');
    let normalised: String = trimmed.replace('+', "-").replace('/', "_");
    URL_SAFE_NO_PAD.decode(normalised).ok()
}

impl Subscription {
    /// The keys from the pushkey (`p256dh`) and `data.auth`; why not, when they are unusable.
    pub fn parse(p256dh: &str, auth: &str) -> Result<Self, String> {
        let p256dh = decode_base64(p256dh)
            .and_then(|key| <[u8; 65]>::try_from(key).ok())
            .filter(|key| key[0] == 4)
            .ok_or("the pushkey is not a base64 uncompressed P-256 key (p256dh)")?;
        let auth = decode_base64(auth)
            .and_then(|secret| <[u8; 16]>::try_from(secret).ok())
            .ok_or("auth is not a base64 16-byte secret")?;
        Ok(Subscription { p256dh, auth })
    }
}

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand<const N: usize>(prk: &hkdf::Prk, info: &[&[u8]]) -> [u8; N] {
    let mut out = [0u8; N];
    prk.expand(info, Len(N))
        .and_then(|okm| okm.fill(&mut out))
        .expect("HKDF-SHA256 can expand to 32 bytes");
    out
}

/// Encrypts `plaintext` for `subscription` with a fresh ECDH key and salt: the request body.
pub fn encrypt(
    subscription: &Subscription,
    plaintext: &[u8],
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, String> {
    let private = EphemeralPrivateKey::generate(&ECDH_P256, rng)
        .map_err(|_| "cannot generate an ECDH key")?;
    let public = private
        .compute_public_key()
        .map_err(|_| "cannot compute the ECDH public key")?;
    let mut salt = [0u8; 16];
    rng.fill(&mut salt)
        .map_err(|_| "no randomness for the salt")?;
    let peer = UnparsedPublicKey::new(&ECDH_P256, subscription.p256dh);
    let secret = agreement::agree_ephemeral(private, &peer, |secret| secret.to_vec())
        .map_err(|_| "the subscription's p256dh is not a point on P-256")?;
    Ok(encrypt_with(
        subscription,
        &secret,
        public.as_ref(),
        &salt,
        plaintext,
    ))
}

/// RFC 8291 section 3.4 and RFC 8188, given the ECDH secret: one record, padding delimiter 2.
pub fn encrypt_with(
    subscription: &Subscription,
    ecdh_secret: &[u8],
    as_public: &[u8],
    salt: &[u8; 16],
    plaintext: &[u8],
) -> Vec<u8> {
    let prk_key = Salt::new(HKDF_SHA256, &subscription.auth).extract(ecdh_secret);
    let ikm: [u8; 32] = expand(
        &prk_key,
        &[b"WebPush: info\0", &subscription.p256dh, as_public],
    );
    let prk = Salt::new(HKDF_SHA256, salt).extract(&ikm);
    let cek: [u8; 16] = expand(&prk, &[b"Content-Encoding: aes128gcm\0"]);
    let nonce: [u8; 12] = expand(&prk, &[b"Content-Encoding: nonce\0"]);
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek).expect("16-byte key"));
    let mut record = Vec::with_capacity(plaintext.len() + 17);
    record.extend_from_slice(plaintext);
    record.push(2); // last (and only) record, no padding
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::empty(),
        &mut record,
    )
    .expect("a record under 4 GiB seals");
    let mut body = Vec::with_capacity(86 + record.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(as_public.len() as u8);
    body.extend_from_slice(as_public);
    body.extend_from_slice(&record);
    body
}

/// The application server's VAPID key.
pub struct VapidKey {
    key: EcdsaKeyPair,
    /// The public key, URL-safe base64 (the `k=` of the Authorization header).
    public: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl VapidKey {
    /// Loads a P-256 private key from PEM: PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`,
    /// what py_vapid and `openssl ecparam` write). Errors say what is wrong, never the key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let alg = &ECDSA_P256_SHA256_FIXED_SIGNING;
        let key = match PrivateKeyDer::from_pem_slice(pem) {
            Ok(PrivateKeyDer::Pkcs8(der)) => {
                EcdsaKeyPair::from_pkcs8(alg, der.secret_pkcs8_der(), &rng)
                    .map_err(|err| format!("not a usable P-256 key: {err}"))?
            }
            Ok(PrivateKeyDer::Sec1(der)) => {
                let (private, public) = sec1_parts(der.secret_sec1_der())
                    .ok_or("not a usable SEC1 P-256 key (it must include its public key)")?;
                EcdsaKeyPair::from_private_key_and_public_key(alg, private, public, &rng)
                    .map_err(|err| format!("not a usable P-256 key: {err}"))?
            }
            Ok(_) => return Err("not an EC key (expected EC PRIVATE KEY or PRIVATE KEY)".into()),
            Err(err) => return Err(format!("no private key found: {err}")),
        };
        let public = URL_SAFE_NO_PAD.encode(key.public_key().as_ref());
        Ok(VapidKey { key, public, rng })
    }

    /// The public key, URL-safe base64 without padding (what clients subscribe with).
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The `Authorization` header for a push service at `audience` (scheme://host[:port]):
    /// `vapid t=<ES256 JWT>,k=<public key>`, the JWT claiming `aud`, `exp` (`expires_at`, Unix
    /// seconds) and `sub` (`mailto:` the contact).
    pub fn authorization(
        &self,
        audience: &str,
        expires_at: u64,
        contact: &str,
    ) -> Result<String, String> {
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256"});
        let claims = serde_json::json!({"aud": audience, "exp": expires_at, "sub": contact});
        let token = jwt::sign_compact(&header, &claims, |input| {
            self.key
                .sign(&self.rng, input)
                .map_err(|_| "signing the VAPID token failed".to_owned())
        })?;
        Ok(format!("vapid t={token},k={}", self.public))
    }
}

/// The private scalar and public point of a SEC1 `ECPrivateKey` (RFC 5915):
/// `SEQUENCE { INTEGER 1, OCTET STRING key, [0] parameters OPTIONAL, [1] BIT STRING public }`.
fn sec1_parts(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (tag, body, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (version_tag, version, rest) = der_element(body)?;
    if version_tag != 0x02 || version != [1] {
        return None;
    }
    let (key_tag, private, mut rest) = der_element(rest)?;
    if key_tag != 0x04 {
        return None;
    }
    while !rest.is_empty() {
        let (tag, value, after) = der_element(rest)?;
        if tag == 0xa1 {
            let (bits_tag, bits, _) = der_element(value)?;
            // A BIT STRING starts with its count of unused bits: none here.
            return (bits_tag == 0x03 && bits.first() == Some(&0)).then(|| (private, &bits[1..]));
        }
        rest = after;
    }
    None
}

/// One DER element: (tag, contents, what follows). Short and long definite lengths.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 2 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |len, b| (len << 8) | usize::from(*b));
        rest = &rest[count..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(text: &str) -> Vec<u8> {
        decode_base64(text).unwrap()
    }

    /// RFC 8291, appendix A: the same inputs give the same message, byte for byte.
    #[test]
    fn rfc8291_example() {
        let subscription = Subscription::parse(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
            "BTBZMqHH6r4Tts7J_aSIgg",
        )
        .unwrap();
        let body = encrypt_with(
            &subscription,
            &b64("kyrL1jIIOHEzg3sM2ZWRHDRB62YACZhhSlknJ672kSs"),
            &b64("BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"),
            &b64("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap(),
            b"When I grow up, I want to be a watermelon",
        );
        assert_eq!(
            URL_SAFE_NO_PAD.encode(body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
    }

    #[test]
    fn subscriptions_need_a_point_and_a_16_byte_secret() {
        let point = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
        assert!(
            Subscription::parse(point, "BTBZMqHH6r4Tts7J_aSIgg==").is_ok(),
            "padding is fine"
        );
        assert!(
            Subscription::parse(point, "BTBZMqHH6r4Tts7J/aSIgg").is_ok(),
            "standard alphabet too"
        );
        assert!(Subscription::parse("short", "BTBZMqHH6r4Tts7J_aSIgg").is_err());
        assert!(Subscription::parse(point, "c2hvcnQ").is_err());
        assert!(Subscription::parse(point, "not base64 !!").is_err());
    }

    /// A SEC1 key as py_vapid (Python's cryptography, TraditionalOpenSSL) writes it, with its
    /// curve parameters. A throwaway key made for this test.
    const SEC1_PEM: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIEa+utYjHIrSDkDJjIAMPDzfekwRQ2zt8WndesOPsWYDoAoGCCqGSM49
AwEHoUQDQgAEY8/+bMQeAj6VS3ad5LbknYenmDUt1Ljh5axNKG8oFKtZYazHSf50
sl35n52BO2CGwYY4o8NKMkNf/7CcjZn8lQ==
-----END EC PRIVATE KEY-----
";

    #[test]
    fn vapid_keys_load_from_sec1_and_pkcs8_and_sign_verifiable_tokens() {
        use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pkcs8_pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
        );
        for pem in [SEC1_PEM.to_owned(), pkcs8_pem] {
            let key = VapidKey::from_pem(pem.as_bytes()).unwrap();
            let header = key
                .authorization("https://push.example.org", 2_000_000_000, "mailto:a@b")
                .unwrap();
            let (token, public) = header
                .strip_prefix("vapid t=")
                .and_then(|rest| rest.split_once(",k="))
                .unwrap();
            assert_eq!(public, key.public_key());
            let (signed, signature) = token.rsplit_once('.').unwrap();
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, b64(public))
                .verify(signed.as_bytes(), &b64(signature))
                .expect("the token verifies with the announced key");
            let claims: serde_json::Value =
                serde_json::from_slice(&b64(signed.split_once('.').unwrap().1)).unwrap();
            assert_eq!(
                claims,
                serde_json::json!({"aud": "https://push.example.org", "exp": 2_000_000_000u64, "sub": "mailto:a@b"})
            );
        }
        assert_eq!(
            VapidKey::from_pem(SEC1_PEM.as_bytes()).unwrap().public_key(),
            "BGPP_mzEHgI-lUt2neS25J2Hp5g1LdS44eWsTShvKBSrWWGsx0n-dLJd-Z-dgTtghsGGOKPDSjJDX_-wnI2Z_JU"
        );
        assert!(VapidKey::from_pem(b"garbage")
            .unwrap_err()
            .contains("no private key"));
    }
}
