//! Tokens and passwords.
//!
//! JWTs are HS256 only (the algorithm is pinned, so `alg: none` and key-confusion
//! tokens are refused) with the claims `sub`, `role`, `iat` and `exp`. They are
//! signed with `JWT_SECRET_KEY` and verified with it or, during a key rotation,
//! with `JWT_PREVIOUS_SECRET_KEY`. Event
//! tokens (the `Authorization` header of a published event) also carry
//! `aud: finapp-events`, and the HTTP routes refuse every token with an
//! audience, so an event's token is worth nothing against the API. bcrypt runs
//! on a pool of its own (see [`Passwords`]) so it never stalls the async runtime,
//! and a login for an unknown user is checked against a dummy hash so its timing
//! matches a real one.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::config::Config;

/// What a user may do. A stored user without a role is a plain user, as in the original.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    #[default]
    User,
}

impl Role {
    /// Reads a stored role; anything but `admin` grants nothing beyond a user's rights.
    pub fn from_stored(raw: Option<&str>) -> Self {
        match raw {
            Some("admin") => Role::Admin,
            _ => Role::User,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
}

/// The claims every token carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The username.
    pub sub: String,
    /// The role when the token was issued; admin routes re-read it from the database.
    #[serde(default)]
    pub role: Role,
    /// Absent from the original services' tokens, which the consumer still accepts.
    #[serde(default)]
    pub iat: u64,
    pub exp: u64,
    /// [`EVENT_AUDIENCE`] on event tokens; absent on access tokens (ours and the original's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// The audience of event tokens. No HTTP route accepts a token with an audience.
pub const EVENT_AUDIENCE: &str = "finapp-events";

/// How long an event token is valid. The consumer checks only the signature
/// (an event may wait in its queue through a consumer outage), so this bounds
/// only what a leaked token could do elsewhere: nothing, given its audience.
pub const EVENT_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Why a token was refused. Both are a 401 to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token is invalid")]
    Invalid,
}

/// How far clocks may disagree: `exp`, `nbf` and `iat` are checked this loosely.
pub const CLOCK_LEEWAY_SECS: u64 = 5;

/// Signs access tokens with the configured secret and checks them with it
/// or, during a rotation, with the previous one.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// `JWT_PREVIOUS_SECRET_KEY`: verifies, never signs.
    previous: Option<DecodingKey>,
    /// Access tokens: no audience at all.
    validation: Validation,
    /// Event messages: [`EVENT_AUDIENCE`] or none, expiry unchecked.
    event_validation: Validation,
    ttl: Duration,
}

impl TokenKeys {
    pub fn new(config: &Config) -> Self {
        crate::hs256::install();
        let mut validation = Validation::new(Algorithm::HS256);
        // The original services signed `{sub, exp}` only; requiring more would
        // reject their tokens (and their queued events) during a migration.
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = CLOCK_LEEWAY_SECS;
        // With no audience configured, jsonwebtoken refuses any token that
        // names one: that is what keeps event tokens off the HTTP routes.
        validation.validate_aud = true;
        validation.aud = None;
        let mut event_validation = validation.clone();
        // A genuine event stays valid however long it waited in a queue.
        event_validation.validate_exp = false;
        // An audience, when present, must be the events'; a token without
        // one (the original services', or an old publisher's) still passes.
        event_validation.set_audience(&[EVENT_AUDIENCE]);
        Self {
            encoding: EncodingKey::from_secret(config.jwt_secret_bytes()),
            decoding: DecodingKey::from_secret(config.jwt_secret_bytes()),
            previous: config
                .jwt_previous_secret_bytes()
                .map(DecodingKey::from_secret),
            validation,
            event_validation,
            ttl: config.token_ttl,
        }
    }

    /// Issues a token for `username` valid for the configured lifetime.
    pub fn issue(&self, username: &str, role: Role) -> SecretString {
        let iat = unix_now();
        self.sign(&Claims {
            sub: username.to_owned(),
            role,
            iat,
            exp: iat + self.ttl.as_secs(),
            aud: None,
        })
    }

    /// Issues the token an event about `username` is published with: audience
    /// [`EVENT_AUDIENCE`], role `user`, valid for [`EVENT_TOKEN_TTL`]. Every
    /// HTTP route refuses it; only [`TokenKeys::verify_event`] accepts it.
    pub fn issue_event(&self, username: &str) -> SecretString {
        let iat = unix_now();
        self.sign(&Claims {
            sub: username.to_owned(),
            role: Role::User,
            iat,
            exp: iat + EVENT_TOKEN_TTL.as_secs(),
            aud: Some(EVENT_AUDIENCE.to_owned()),
        })
    }

    fn sign(&self, claims: &Claims) -> SecretString {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            // HS256 over a serde struct cannot fail: the key family always matches.
            .expect("HS256 signing with an HMAC key is infallible")
            .into()
    }

    /// Checks an access token: signature, algorithm, expiry, and no audience
    /// (an event token is refused).
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.decode(token, &self.validation)
    }

    /// Checks the token of an event message: signature and algorithm, an
    /// audience of [`EVENT_AUDIENCE`] or none (the original services' tokens),
    /// but not expiry, so an event does not go stale waiting in a queue.
    pub fn verify_event(&self, token: &str) -> Result<Claims, TokenError> {
        self.decode(token, &self.event_validation)
    }

    fn decode(&self, token: &str, validation: &Validation) -> Result<Claims, TokenError> {
        let mut decoded = jsonwebtoken::decode::<Claims>(token, &self.decoding, validation);
        // The signature is checked before any claim, so only a token the
        // current key did not sign is tried with the previous one.
        if let (Err(err), Some(previous)) = (&decoded, &self.previous)
            && *err.kind() == ErrorKind::InvalidSignature
        {
            decoded = jsonwebtoken::decode::<Claims>(token, previous, validation);
        }
        let claims = decoded
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                _ => TokenError::Invalid,
            })?;
        // A token issued in the future was not issued by a sane clock (or by us).
        if claims.iat > unix_now() + CLOCK_LEEWAY_SECS {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A failure of the password machinery itself (not a wrong password).
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("bcrypt failed")]
    Bcrypt(#[from] bcrypt::BcryptError),
    #[error("the bcrypt pool dropped the task")]
    Dropped,
    #[error("cannot start the bcrypt pool: {0}")]
    Pool(String),
}

/// How much lower than the async runtime's threads the bcrypt threads run:
/// nice 10 weighs about a tenth of nice 0 with the kernel's scheduler.
const BCRYPT_NICE: libc::c_int = 10;

/// The threads that run bcrypt: one per core, so at most that many hashes run
/// at once however many logins arrive (the rest queue here, not in the
/// kernel's run queue), each at a lower priority than the runtime's workers.
/// When every core is busy with bcrypt, a waking worker still gets the CPU
/// almost at once, so `/healthz` and the other requests do not wait behind a
/// burst of logins; when the workers are idle, bcrypt has every core.
fn bcrypt_pool() -> Result<&'static rayon_core::ThreadPool, PasswordError> {
    static POOL: OnceLock<Result<rayon_core::ThreadPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon_core::ThreadPoolBuilder::new()
            .thread_name(|index| format!("bcrypt-{index}"))
            .start_handler(|_| lower_this_threads_priority())
            .build()
            .map_err(|err| err.to_string())
    })
    .as_ref()
    .map_err(|err| PasswordError::Pool(err.clone()))
}

/// Raises the calling thread's nice value. On Linux the nice value belongs to
/// the thread, and `who = 0` names the caller. Raising it needs no privilege;
/// should it fail anyway, bcrypt just runs at normal priority.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, BCRYPT_NICE);
    }
}

/// Runs `work` on the bcrypt pool and waits for it without blocking the runtime.
async fn on_bcrypt_pool<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PasswordError> {
    let (done, result) = tokio::sync::oneshot::channel();
    let pool = bcrypt_pool()?;
    // In `finapp_bcrypt_queue_depth` from submission until the hash is done.
    let queued = crate::metrics::Queued::enter(crate::metrics::bcrypt_queue());
    pool.spawn(move || {
        let output = work();
        drop(queued);
        // The receiver is gone only if the request was dropped; nothing to do.
        let _ = done.send(output);
    });
    result.await.map_err(|_| PasswordError::Dropped)
}

/// Hashes passwords and verifies them in constant time per cost.
pub struct Passwords {
    cost: u32,
    /// The cost of the stored hashes, as last seen: an unknown user is checked
    /// against a dummy hash of this cost, so that both take the time a stored
    /// hash takes, even while the stored hashes still have another cost than
    /// `cost` (the original wrote cost 12; each is rehashed at its next login).
    stored_cost: AtomicU32,
    dummy_hashes: Mutex<BTreeMap<u32, Arc<OnceCell<String>>>>,
}

/// The cost a bcrypt hash was made with: `$2b$12$...` is 12.
pub fn bcrypt_cost(hash: &str) -> Option<u32> {
    let mut parts = hash.split('$');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(""), Some(version), Some(cost)) if version.starts_with('2') => cost.parse().ok(),
        _ => None,
    }
}

impl Passwords {
    pub fn new(cost: u32) -> Self {
        Self {
            cost,
            stored_cost: AtomicU32::new(cost),
            dummy_hashes: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether `stored` should be replaced by a hash at the configured cost.
    pub fn needs_rehash(&self, stored: &str) -> bool {
        bcrypt_cost(stored) != Some(self.cost)
    }

    /// Notes the cost of a stored hash, which unknown users are then timed against.
    pub fn observe_stored(&self, stored: &str) {
        if let Some(cost) = bcrypt_cost(stored).filter(|cost| (4..=31).contains(cost)) {
            self.stored_cost.store(cost, Ordering::Relaxed);
        }
    }

    /// Hashes a new password at the configured cost, off the async runtime.
    pub async fn hash(&self, password: SecretString) -> Result<String, PasswordError> {
        let cost = self.cost;
        Ok(on_bcrypt_pool(move || bcrypt::hash(password.expose_secret(), cost)).await??)
    }

    /// Checks `password` against `stored`, a bcrypt hash as the database holds it.
    ///
    /// With no stored hash (unknown user) or an unreadable one, a dummy hash of the
    /// same cost is checked instead and the answer is `false`, so the time taken
    /// does not tell whether the user exists.
    pub async fn verify(
        &self,
        password: SecretString,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        let (hash, genuine) = match stored {
            Some(hash) if hash.starts_with("$2") => {
                self.observe_stored(&hash);
                (hash, true)
            }
            _ => (self.dummy_hash().await?, false),
        };
        let matches = on_bcrypt_pool(move || {
            bcrypt::verify(password.expose_secret(), &hash).unwrap_or(false)
        })
        .await?;
        Ok(matches && genuine)
    }

    /// Computes the dummy hash now, so the first unknown-user login is not slower
    /// than the rest. Call it in the background at start-up.
    pub async fn warm_up(&self) -> Result<(), PasswordError> {
        self.dummy_hash().await.map(|_| ())
    }

    /// A hash of a random password at the stored hashes' cost, made once per cost.
    async fn dummy_hash(&self) -> Result<String, PasswordError> {
        let cost = self.stored_cost.load(Ordering::Relaxed);
        let cell = {
            let mut hashes = self
                .dummy_hashes
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            Arc::clone(hashes.entry(cost).or_default())
        };
        cell.get_or_try_init(|| async move {
            let password = uuid::Uuid::new_v4().to_string();
            Ok(on_bcrypt_pool(move || bcrypt::hash(password, cost)).await??)
        })
        .await
        .cloned()
    }
}

/// Usernames this process has lately found in the database, so that a user
/// route need not look its token's user up on every request.
///
/// Only presence is remembered, for `ttl`: a user deleted meanwhile keeps
/// working for at most that long. An absent user is never remembered, so a
/// token for a name that does not exist is refused every time.
pub struct KnownUsers {
    ttl: Duration,
    seen: Mutex<HashMap<String, Instant>>,
}

impl KnownUsers {
    /// Most names remembered at once; when full, the expired ones are
    /// dropped, and if none has expired, all of them.
    pub const CAPACITY: usize = 10_000;

    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            seen: Mutex::default(),
        }
    }

    /// Whether `username` was found less than `ttl` ago.
    pub fn is_fresh(&self, username: &str) -> bool {
        self.is_fresh_at(username, Instant::now())
    }

    /// Records that `username` was found just now.
    pub fn remember(&self, username: &str) {
        self.remember_at(username, Instant::now());
    }

    fn is_fresh_at(&self, username: &str, now: Instant) -> bool {
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.get(username)
            .is_some_and(|at| now.saturating_duration_since(*at) < self.ttl)
    }

    fn remember_at(&self, username: &str, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.len() >= Self::CAPACITY && !seen.contains_key(username) {
            seen.retain(|_, at| now.saturating_duration_since(*at) < self.ttl);
            if seen.len() >= Self::CAPACITY {
                seen.clear();
            }
        }
        seen.insert(username.to_owned(), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_user_is_trusted_for_the_ttl_only_and_the_cache_stays_bounded() {
        let known = KnownUsers::new(Duration::from_secs(2));
        let start = Instant::now();
        assert!(!known.is_fresh_at("alice", start));
        known.remember_at("alice", start);
        assert!(known.is_fresh_at("alice", start + Duration::from_millis(1999)));
        assert!(!known.is_fresh_at("bob", start));
        assert!(
            !known.is_fresh_at("alice", start + Duration::from_secs(2)),
            "trusted past its ttl"
        );

        for i in 0..KnownUsers::CAPACITY + 10 {
            known.remember_at(&format!("user{i}"), start);
        }
        assert!(known.seen.lock().unwrap().len() <= KnownUsers::CAPACITY);

        let never = KnownUsers::new(Duration::ZERO);
        never.remember("alice");
        assert!(!never.is_fresh("alice"));
    }
    use base64::Engine as _;

    fn encode_segment(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn keys_with(secret: &str) -> TokenKeys {
        let config = Config::from_lookup(|name| match name {
            "JWT_SECRET_KEY" => Some(secret.to_owned()),
            _ => None,
        })
        .unwrap();
        TokenKeys::new(&config)
    }

    const SECRET: &str = "unit-test-secret-unit-test-secret!";

    #[test]
    fn an_issued_token_verifies_and_carries_its_claims() {
        let keys = keys_with(SECRET);
        let token = keys.issue("alice", Role::Admin);
        let claims = keys.verify(token.expose_secret()).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.role, Role::Admin);
        assert_eq!(claims.exp - claims.iat, 30 * 60);
    }

    #[test]
    fn a_token_signed_with_another_key_is_invalid() {
        let token = keys_with("another-secret-another-secret-1234").issue("alice", Role::User);
        assert_eq!(
            keys_with(SECRET).verify(token.expose_secret()),
            Err(TokenError::Invalid)
        );
    }

    fn rotating_keys(current: &str, previous: &str) -> TokenKeys {
        let config = Config::from_lookup(|name| match name {
            "JWT_SECRET_KEY" => Some(current.to_owned()),
            "JWT_PREVIOUS_SECRET_KEY" => Some(previous.to_owned()),
            _ => None,
        })
        .unwrap();
        TokenKeys::new(&config)
    }

    #[test]
    fn during_a_rotation_both_keys_verify_and_only_the_current_one_signs() {
        const NEW: &str = "rotated-secret-rotated-secret-5678";
        let old_keys = keys_with(SECRET);
        let rotating = rotating_keys(NEW, SECRET);
        let old_token = old_keys.issue("alice", Role::User);
        assert_eq!(
            rotating.verify(old_token.expose_secret()).unwrap().sub,
            "alice"
        );
        let old_event = old_keys.issue_event("alice");
        assert!(rotating.verify_event(old_event.expose_secret()).is_ok());

        let new_token = rotating.issue("bob", Role::User);
        assert!(keys_with(NEW).verify(new_token.expose_secret()).is_ok());
        assert_eq!(
            old_keys.verify(new_token.expose_secret()),
            Err(TokenError::Invalid),
            "signed with the previous key"
        );
        // A third key is still a forgery, and an old token's expiry still counts.
        let forged = keys_with("another-secret-another-secret-1234").issue("eve", Role::Admin);
        assert_eq!(
            rotating.verify(forged.expose_secret()),
            Err(TokenError::Invalid)
        );
        let expired = old_keys.sign(&Claims {
            sub: "carol".into(),
            role: Role::User,
            iat: 1,
            exp: 2,
            aud: None,
        });
        assert_eq!(
            rotating.verify(expired.expose_secret()),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn an_expired_token_is_refused_but_still_checks_as_an_event_token() {
        let keys = keys_with(SECRET);
        let claims = Claims {
            sub: "bob".into(),
            role: Role::User,
            iat: 1,
            exp: 2,
            aud: None,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(keys.verify(&token), Err(TokenError::Expired));
        assert_eq!(keys.verify_event(&token).unwrap().sub, "bob");
    }

    #[test]
    fn an_unsigned_alg_none_token_is_invalid() {
        let keys = keys_with(SECRET);
        let header = encode_segment(br#"{"alg":"none","typ":"JWT"}"#);
        let body = encode_segment(br#"{"sub":"mallory","role":"admin","iat":1,"exp":99999999999}"#);
        for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
            assert_eq!(keys.verify(&token), Err(TokenError::Invalid));
            assert_eq!(keys.verify_event(&token), Err(TokenError::Invalid));
        }
    }

    #[test]
    fn a_token_from_the_original_services_without_iat_or_role_is_accepted() {
        #[derive(Serialize)]
        struct Original<'a> {
            sub: &'a str,
            exp: u64,
        }
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Original {
                sub: "legacy",
                exp: unix_now() + 60,
            },
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let keys = keys_with(SECRET);
        let claims = keys.verify(&token).unwrap();
        assert_eq!((claims.sub.as_str(), claims.role), ("legacy", Role::User));
        assert_eq!(keys.verify_event(&token).unwrap().sub, "legacy");
    }

    #[test]
    fn an_event_token_is_refused_as_an_access_token_and_accepted_as_an_event_token() {
        let keys = keys_with(SECRET);
        let token = keys.issue_event("alice");
        assert_eq!(keys.verify(token.expose_secret()), Err(TokenError::Invalid));
        let claims = keys.verify_event(token.expose_secret()).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.role, Role::User);
        assert_eq!(claims.aud.as_deref(), Some(EVENT_AUDIENCE));
        assert_eq!(claims.exp - claims.iat, EVENT_TOKEN_TTL.as_secs());
        // An access token has no audience, so the consumer accepts it too,
        // as it accepts the original services' tokens.
        let access = keys.issue("alice", Role::Admin);
        assert!(keys.verify_event(access.expose_secret()).is_ok());
    }

    #[test]
    fn a_token_for_any_other_audience_is_refused_everywhere() {
        let keys = keys_with(SECRET);
        let claims = Claims {
            sub: "alice".into(),
            role: Role::User,
            iat: unix_now(),
            exp: unix_now() + 60,
            aud: Some("somebody-else".into()),
        };
        let token = keys.sign(&claims);
        assert_eq!(keys.verify(token.expose_secret()), Err(TokenError::Invalid));
        assert_eq!(
            keys.verify_event(token.expose_secret()),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn garbage_is_invalid() {
        let keys = keys_with(SECRET);
        for token in ["", "abc", "a.b.c", "Bearer x"] {
            assert_eq!(keys.verify(token), Err(TokenError::Invalid));
        }
    }

    #[test]
    fn a_stored_role_other_than_admin_is_a_user() {
        assert_eq!(Role::from_stored(Some("admin")), Role::Admin);
        assert_eq!(Role::from_stored(Some("Admin")), Role::User);
        assert_eq!(Role::from_stored(None), Role::User);
    }

    #[tokio::test]
    async fn a_hashed_password_verifies_and_a_wrong_one_does_not() {
        let passwords = Passwords::new(4);
        let hash = passwords
            .hash("correct horse".to_string().into())
            .await
            .unwrap();
        assert!(
            passwords
                .verify("correct horse".to_string().into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !passwords
                .verify("wrong horse".to_string().into(), Some(hash))
                .await
                .unwrap()
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn bcrypt_runs_on_one_lower_priority_thread_per_core() {
        // SAFETY: getpriority only reads the calling thread's nice value.
        let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let runtime_nice = nice();
        let pool_nice = on_bcrypt_pool(nice).await.unwrap();
        assert!(pool_nice > runtime_nice, "{pool_nice} vs {runtime_nice}");
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(bcrypt_pool().unwrap().current_num_threads(), cores);
    }

    #[tokio::test]
    async fn an_unknown_user_or_unreadable_hash_never_verifies() {
        let passwords = Passwords::new(4);
        assert!(
            !passwords
                .verify("anything".to_string().into(), None)
                .await
                .unwrap()
        );
        assert!(
            !passwords
                .verify("anything".to_string().into(), Some("plaintext".into()))
                .await
                .unwrap()
        );
    }
}
