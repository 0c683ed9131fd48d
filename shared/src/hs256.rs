//! jsonwebtoken's cryptography for the one algorithm the bundle uses, HS256,
//! on ring's HMAC (already linked through rustls).
//!
//! jsonwebtoken 11 takes its cryptography from a [`CryptoProvider`]; its
//! built-in ones are `rust_crypto`, which links RSA, P-256, P-384 and Ed25519
//! into every function, and `aws_lc_rs`, a second C crypto library beside
//! ring. This provider signs and verifies HS256 only: any other algorithm is
//! refused as [`ErrorKind::InvalidAlgorithm`] (the validation already allows
//! HS256 alone), and the JWK helpers, which nothing here uses, are left
//! unimplemented.

use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey, EncodingKey,
    crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils},
    errors::{ErrorKind, Result, new_error},
    signature::{Error as SignatureError, Signer, Verifier},
};
use ring::hmac;

static HS256_ONLY: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes HS256 on ring this process's jsonwebtoken provider. Idempotent; call
/// it before the first `jsonwebtoken::encode` or `decode` (building
/// [`crate::auth::TokenKeys`] does).
pub fn install() {
    // Err only when a provider is installed already, which is then this one:
    // no other is in the build.
    let _ = HS256_ONLY.install_default();
}

struct Hs256(hmac::Key);

impl Hs256 {
    fn new(algorithm: &Algorithm, family: AlgorithmFamily, secret: &[u8]) -> Result<Self> {
        if *algorithm != Algorithm::HS256 {
            return Err(new_error(ErrorKind::InvalidAlgorithm));
        }
        if family != AlgorithmFamily::Hmac {
            return Err(new_error(ErrorKind::InvalidKeyFormat));
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }
}

fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    Ok(Box::new(Hs256::new(
        algorithm,
        key.family(),
        key.as_bytes(),
    )?))
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    Ok(Box::new(Hs256::new(
        algorithm,
        key.family(),
        key.try_get_as_bytes()?,
    )?))
}

impl Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, SignatureError> {
        Ok(hmac::sign(&self.0, message).as_ref().to_vec())
    }
}

impl Verifier<Vec<u8>> for Hs256 {
    /// Constant-time, as ring's `hmac::verify` is.
    fn verify(
        &self,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), SignatureError> {
        hmac::verify(&self.0, message, signature).map_err(|_| SignatureError::new())
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Header, Validation};

    /// RFC 7515, appendix A.1: the HS256 example's signing input, key and signature.
    #[test]
    fn signs_and_verifies_the_rfc_7515_example() {
        use base64::Engine as _;
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
            .unwrap();
        let input = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
        let expected = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        install();
        let signature = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &EncodingKey::from_secret(&key),
            Algorithm::HS256,
        )
        .unwrap();
        assert_eq!(signature, expected);
        let decoding = DecodingKey::from_secret(&key);
        assert!(
            jsonwebtoken::crypto::verify(expected, input.as_bytes(), &decoding, Algorithm::HS256)
                .unwrap()
        );
        assert!(
            !jsonwebtoken::crypto::verify(
                "eBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
                input.as_bytes(),
                &decoding,
                Algorithm::HS256
            )
            .unwrap()
        );
    }

    #[test]
    fn other_algorithms_are_refused_not_panicked_on() {
        install();
        let key = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        for algorithm in [
            Algorithm::HS384,
            Algorithm::HS512,
            Algorithm::RS256,
            Algorithm::EdDSA,
        ] {
            let err = jsonwebtoken::encode(&Header::new(algorithm), &serde_json::json!({}), &key)
                .unwrap_err();
            assert_eq!(*err.kind(), ErrorKind::InvalidAlgorithm, "{algorithm:?}");
        }
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "alice", "exp": u64::MAX / 2}),
            &key,
        )
        .unwrap();
        let decoding = DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        let claims =
            jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();
        assert_eq!(claims.claims["sub"], "alice");
        let other = DecodingKey::from_secret(b"another-key-another-key-another-k");
        let err =
            jsonwebtoken::decode::<serde_json::Value>(&token, &other, &validation).unwrap_err();
        assert_eq!(*err.kind(), ErrorKind::InvalidSignature);
    }
}
