//! JSON Web Tokens in compact form (RFC 7515), as APNs provider tokens, Google's OAuth
//! assertions and VAPID use them: `base64url(header).base64url(claims).base64url(signature)`.
//!
//! The signature is the caller's: each provider wants its own algorithm (ES256, RS256) and key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// The compact token for `header` and `claims`, signed by `sign`, which gets the signing input
/// (`base64url(header).base64url(claims)`) and returns the signature's bytes.
pub fn sign_compact<S: AsRef<[u8]>>(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    sign: impl FnOnce(&[u8]) -> Result<S, String>,
) -> Result<String, String> {
    let mut token = String::with_capacity(256);
    URL_SAFE_NO_PAD.encode_string(header.to_string(), &mut token);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut token);
    let signature = sign(token.as_bytes())?;
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn three_base64url_parts_the_signature_over_the_first_two() {
        let header = json!({"alg": "ES256", "kid": "K"});
        let claims = json!({"iss": "T", "iat": 1});
        let mut signed_input = Vec::new();
        let token = sign_compact(&header, &claims, |input| {
            signed_input = input.to_vec();
            Ok::<_, String>(vec![0xfb, 0xff])
        })
        .unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&decode(parts[0])).unwrap(),
            header
        );
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&decode(parts[1])).unwrap(),
            claims
        );
        assert_eq!(decode(parts[2]), [0xfb, 0xff]);
        assert_eq!(
            signed_input,
            format!("{}.{}", parts[0], parts[1]).as_bytes()
        );
        // URL-safe and unpadded.
        assert!(!token.contains(['+', '/', '=']));
    }

    #[test]
    fn a_signing_failure_is_returned() {
        let err = sign_compact(&json!({}), &json!({}), |_| Err::<Vec<u8>, _>("no".into()));
        assert_eq!(err.unwrap_err(), "no");
    }
}
