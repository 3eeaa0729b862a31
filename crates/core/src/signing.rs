//! Signed policy versions: who wrote a version, checked before it runs.
//!
//! A model file's digest says the file is whole, not who made it: anyone
//! can compute it. A learner given a signing key (`flowpilot finetune
//! --signing-key KEY`, a key made by `flowpilot keygen`) signs every
//! version it writes with ed25519 (`ed25519-dalek`), and a node given
//! `hot_swap.trusted_keys` accepts only versions signed by one of those
//! keys, whether they came from a local learner or the fleet link (both
//! arrive through the hot-swap directory). docs/security.md, "Signed
//! policies and keys", is the operator's side.
//!
//! The signature covers [`signed_message`]: a domain-separation prefix, a
//! format version, and the version's digest, number and lineage (parent
//! digest and parent version), each length-prefixed. The digest already
//! covers the whole spec and every weight; naming the number and the
//! parent again makes the rule explicit: a signed version renumbered
//! (a replay of an old version as a newer one) no longer verifies.
//!
//! It sits in the model file's metadata under
//! [`crate::policy::model::SIGNATURE_META_KEY`], outside the digest, as compact
//! JSON: `{"format":1,"alg":"ed25519","key":"ed25519:<base64>","sig":"<base64>"}`.
//! A file without it loads as before (offline tools, nodes without trusted
//! keys); [`TrustedKeys::verify`] refuses it.
//!
//! Key files are text. A private key (mode 0600; refused when group or
//! others may read it): `flowpilot-signing-key ed25519:<base64 seed>`.
//! A public key (`KEY.pub`): `ed25519:<base64>` followed by a comment.
//! A `hot_swap.trusted_keys` entry is either such a public key inline or
//! the path of a public key file.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::policy::model::{ModelFile, ModelSpec};

/// Domain separation: these bytes start every signed message, so a
/// flowpilot policy signature can never be taken for a signature over
/// anything else made with the same key (and the other way round).
pub const MESSAGE_DOMAIN: &[u8] = b"flowpilot/policy-version\0";
/// The layout of [`signed_message`]; bumped on any change to it.
pub const MESSAGE_FORMAT: u32 = 1;
/// The signature metadata's `alg`.
pub const ALGORITHM: &str = "ed25519";
/// How a public key is written: `ed25519:<base64 of 32 bytes>`.
pub const KEY_PREFIX: &str = "ed25519:";
/// The first word of a private key file.
const SECRET_TAG: &str = "flowpilot-signing-key";
/// A key file is a line or two: refuse anything much larger unread.
const MAX_KEY_FILE: u64 = 4096;

/// The bytes a version's signature covers, all integers little-endian:
///
/// ```text
/// MESSAGE_DOMAIN                  b"flowpilot/policy-version\0" (25 bytes)
/// u32  MESSAGE_FORMAT             1
/// u64  version
/// u32  n, n bytes                 digest ("sha256:<hex>", UTF-8)
/// u8   0 | 1                      parent_digest absent | present,
///      [u32 n, n bytes]             then its length and UTF-8 bytes
/// u8   0 | 1                      parent_version absent | present,
///      [u64]                        then its value
/// ```
///
/// The one definition: the learner signs these bytes and the node
/// verifies them.
pub fn signed_message(spec: &ModelSpec) -> Vec<u8> {
    fn text(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut out = Vec::with_capacity(MESSAGE_DOMAIN.len() + 4 + 8 + 2 * 80 + 10);
    out.extend_from_slice(MESSAGE_DOMAIN);
    out.extend_from_slice(&MESSAGE_FORMAT.to_le_bytes());
    out.extend_from_slice(&spec.version.to_le_bytes());
    text(&mut out, &spec.digest);
    match &spec.parent_digest {
        Some(d) => {
            out.push(1);
            text(&mut out, d);
        }
        None => out.push(0),
    }
    match spec.parent_version {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.to_le_bytes());
        }
        None => out.push(0),
    }
    out
}

/// Why a version's signature is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("unsigned: this node accepts only versions signed by a key in hot_swap.trusted_keys")]
    Unsigned,
    #[error("malformed signature metadata: {0}")]
    Malformed(String),
    #[error("signed by {key}, which is not in hot_swap.trusted_keys")]
    UntrustedKey { key: PublicKey },
    #[error(
        "the signature by {key} does not verify: forged, or the file was renumbered or \
         altered after it was signed"
    )]
    BadSignature { key: PublicKey },
}

/// Why a key could not be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}: the private key is readable by group or others (mode {mode:04o}); \
         `chmod 600 {}` (and consider it leaked if others could read it)",
        path.display(), path.display()
    )]
    Readable { path: PathBuf, mode: u32 },
    #[error(
        "{}: the trusted key file is writable by group or others (mode {mode:04o}): \
         anyone who can write it chooses whom the node trusts; `chmod 644 {}`",
        path.display(), path.display()
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error("{}: {why}", path.display())]
    Format { path: PathBuf, why: String },
    #[error("'{0}' is not a public key: {1} (want ed25519:<base64 of 32 bytes>)")]
    Inline(String, String),
    #[error("{} already exists: not overwriting a key (remove it first, or choose another name)", .0.display())]
    Exists(PathBuf),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}

/// An ed25519 public key, written `ed25519:<base64>`: its 32 bytes,
/// checked to be a valid, non-weak point when it was made.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// `ed25519:<base64 of 32 bytes>`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let b = s
            .strip_prefix(KEY_PREFIX)
            .ok_or_else(|| format!("does not start with '{KEY_PREFIX}'"))?;
        let bytes = B64.decode(b).map_err(|e| format!("bad base64: {e}"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("{} bytes, not 32", b.len()))?;
        let key = VerifyingKey::from_bytes(&arr).map_err(|e| format!("not a valid key: {e}"))?;
        if key.is_weak() {
            return Err("a weak (small-order) key".into());
        }
        Ok(Self(arr))
    }

    fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey::from_bytes(&self.0).expect("checked when the key was made")
    }

    /// A public key file: the first word of its first non-comment line.
    /// Refused when group or others may write it.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read_key_file(path)?;
        let mode = mode_of(path)?;
        if mode & 0o022 != 0 {
            return Err(KeyError::Writable {
                path: path.into(),
                mode,
            });
        }
        let word = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("");
        if word == SECRET_TAG {
            return Err(KeyError::Format {
                path: path.into(),
                why: "this is a private key: trust its .pub file".into(),
            });
        }
        Self::parse(word).map_err(|why| KeyError::Format {
            path: path.into(),
            why: format!("not a public key file: {why}"),
        })
    }

    /// A `hot_swap.trusted_keys` entry: `ed25519:<base64>` inline, or the
    /// path of a public key file.
    pub fn from_entry(entry: &str) -> Result<Self, KeyError> {
        let entry = entry.trim();
        if entry.starts_with(KEY_PREFIX) {
            Self::parse(entry).map_err(|why| KeyError::Inline(entry.into(), why))
        } else {
            Self::load(Path::new(entry))
        }
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{KEY_PREFIX}{}", B64.encode(self.0))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// What a signed file carries in its metadata.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureMeta {
    format: u32,
    alg: String,
    key: String,
    sig: String,
}

/// A parsed signature: who claims to have signed, and the signature.
fn parse_signature(meta: &str) -> Result<(PublicKey, Signature), SignatureError> {
    let bad = |why: String| SignatureError::Malformed(why);
    let m: SignatureMeta = serde_json::from_str(meta).map_err(|e| bad(e.to_string()))?;
    if m.format != MESSAGE_FORMAT {
        return Err(bad(format!(
            "unknown signature format {} (this build reads {MESSAGE_FORMAT})",
            m.format
        )));
    }
    if m.alg != ALGORITHM {
        return Err(bad(format!("unknown algorithm '{}'", m.alg)));
    }
    let key = PublicKey::parse(&m.key).map_err(|e| bad(format!("key: {e}")))?;
    let sig = B64
        .decode(&m.sig)
        .map_err(|e| bad(format!("sig: bad base64: {e}")))?;
    let sig = Signature::from_slice(&sig).map_err(|e| bad(format!("sig: {e}")))?;
    Ok((key, sig))
}

/// Whether `m` carries a valid signature by `key` over its own digest,
/// version and lineage.
pub fn signed_by(m: &ModelFile, key: &PublicKey) -> bool {
    TrustedKeys::new(vec![*key]).verify(m).is_ok()
}

/// The key `m` says signed it, if that key's signature over `m`'s own
/// digest, version and lineage verifies (`flowpilot inspect`: which key
/// signed a version). Says nothing about whether the key is trusted.
pub fn signer(m: &ModelFile) -> Result<PublicKey, SignatureError> {
    let meta = m.signature().ok_or(SignatureError::Unsigned)?;
    let (key, _) = parse_signature(meta)?;
    TrustedKeys::new(vec![key]).verify(m)
}

/// The public keys a node accepts versions from (`hot_swap.trusted_keys`).
/// Empty: versions are not authenticated (the node warns at start).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys(Vec<PublicKey>);

impl TrustedKeys {
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Self(keys)
    }

    /// Each entry as [`PublicKey::from_entry`] reads it.
    pub fn from_entries<S: AsRef<str>>(entries: &[S]) -> Result<Self, KeyError> {
        entries
            .iter()
            .map(|e| PublicKey::from_entry(e.as_ref()))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.0
    }

    /// The trusted key whose signature `m` carries over its own
    /// [`signed_message`]; else why not. `m` was loaded, so its digest
    /// matches its content; a renumbered or re-parented copy has another
    /// digest and message, and fails here.
    pub fn verify(&self, m: &ModelFile) -> Result<PublicKey, SignatureError> {
        let meta = m.signature().ok_or(SignatureError::Unsigned)?;
        let (key, sig) = parse_signature(meta)?;
        if !self.0.contains(&key) {
            return Err(SignatureError::UntrustedKey { key });
        }
        key.verifying_key()
            .verify_strict(&signed_message(&m.spec), &sig)
            .map_err(|_| SignatureError::BadSignature { key })?;
        Ok(key)
    }
}

/// A learner's private signing key.
pub struct PolicySigner {
    key: SigningKey,
}

impl std::fmt::Debug for PolicySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PolicySigner({})", self.public_key())
    }
}

impl PolicySigner {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        let key = SigningKey::from_bytes(&seed);
        seed.zeroize();
        Ok(Self { key })
    }

    /// A private key file. Refused when group or others may read it.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let mode = mode_of(path)?;
        if mode & 0o077 != 0 {
            return Err(KeyError::Readable {
                path: path.into(),
                mode,
            });
        }
        let mut text = read_key_file(path)?;
        let parsed = (|| {
            let mut words = text.split_whitespace();
            if words.next() != Some(SECRET_TAG) {
                return Err(format!(
                    "not a flowpilot signing key (no '{SECRET_TAG}'; made by `flowpilot keygen`?)"
                ));
            }
            let b = words
                .next()
                .and_then(|w| w.strip_prefix(KEY_PREFIX))
                .ok_or_else(|| format!("no {KEY_PREFIX}<base64> after '{SECRET_TAG}'"))?;
            let mut bytes = B64.decode(b).map_err(|e| format!("bad base64: {e}"))?;
            let seed: Result<[u8; 32], _> = bytes.as_slice().try_into();
            let n = bytes.len();
            bytes.zeroize();
            let mut seed = seed.map_err(|_| format!("{n} bytes, not 32"))?;
            let key = SigningKey::from_bytes(&seed);
            seed.zeroize();
            Ok(key)
        })();
        text.zeroize();
        let key = parsed.map_err(|why| KeyError::Format {
            path: path.into(),
            why,
        })?;
        Ok(Self { key })
    }

    /// Write the private key to `path` (created new, mode 0600; an
    /// existing file is never overwritten) and the public key to
    /// `<path>.pub` (mode 0644). Returns the public key file's path.
    pub fn save(&self, path: &Path) -> Result<PathBuf, KeyError> {
        let pub_path = public_key_path(path);
        for p in [path, pub_path.as_path()] {
            if p.symlink_metadata().is_ok() {
                return Err(KeyError::Exists(p.into()));
            }
        }
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| KeyError::Io { path: p, source }
        };
        let mut secret = format!(
            "{SECRET_TAG} {KEY_PREFIX}{}\n",
            B64.encode(self.key.to_bytes())
        );
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            // Exactly 0600 whatever the umask did.
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(secret.as_bytes())?;
            f.sync_all()
        })();
        secret.zeroize();
        written.map_err(io(path))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&pub_path)?;
            f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
            writeln!(f, "{} flowpilot-policy-key {name}", self.public_key())?;
            f.sync_all()
        })()
        .map_err(io(&pub_path))?;
        Ok(pub_path)
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// `m` signed: its digest, version and lineage ([`signed_message`]),
    /// the signature in its metadata.
    pub fn sign(&self, m: ModelFile) -> ModelFile {
        let sig = self.key.sign(&signed_message(&m.spec));
        let meta = SignatureMeta {
            format: MESSAGE_FORMAT,
            alg: ALGORITHM.into(),
            key: self.public_key().to_string(),
            sig: B64.encode(sig.to_bytes()),
        };
        m.with_signature(serde_json::to_string(&meta).expect("signature serialises"))
    }
}

/// Domain separation for a robot's records batches ([`crate::fleet::auth`]):
/// a batch signature can never be taken for a policy signature, nor the
/// other way round, even made with the same key.
pub const RECORDS_DOMAIN: &[u8] = b"flowpilot/records-batch\0";
/// A records batch's authenticator: the signer's public key (32 bytes),
/// then the ed25519 signature (64 bytes) over [`RECORDS_DOMAIN`] + body.
pub const RECORDS_AUTH_LEN: usize = 32 + 64;

impl PolicySigner {
    /// A records batch's authenticator over `body` (the batch's encoding
    /// up to its `auth` field): [`RECORDS_AUTH_LEN`] bytes.
    pub fn sign_records(&self, body: &[u8]) -> Vec<u8> {
        let mut msg = Vec::with_capacity(RECORDS_DOMAIN.len() + body.len());
        msg.extend_from_slice(RECORDS_DOMAIN);
        msg.extend_from_slice(body);
        let sig = self.key.sign(&msg);
        let mut out = self.public_key().0.to_vec();
        out.extend_from_slice(&sig.to_bytes());
        out
    }
}

impl PublicKey {
    /// Whether `auth` is this key's signature over `body` as
    /// [`PolicySigner::sign_records`] makes it. Err: who signed instead,
    /// or why it does not verify.
    pub fn verify_records(&self, body: &[u8], auth: &[u8]) -> Result<(), SignatureError> {
        if auth.is_empty() {
            return Err(SignatureError::Unsigned);
        }
        if auth.len() != RECORDS_AUTH_LEN {
            return Err(SignatureError::Malformed(format!(
                "a records authenticator is {RECORDS_AUTH_LEN} bytes, got {}",
                auth.len()
            )));
        }
        let (key, sig) = auth.split_at(32);
        if key != self.0 {
            let mut k = [0u8; 32];
            k.copy_from_slice(key);
            return Err(SignatureError::UntrustedKey { key: PublicKey(k) });
        }
        let sig =
            Signature::from_slice(sig).map_err(|e| SignatureError::Malformed(e.to_string()))?;
        let mut msg = Vec::with_capacity(RECORDS_DOMAIN.len() + body.len());
        msg.extend_from_slice(RECORDS_DOMAIN);
        msg.extend_from_slice(body);
        self.verifying_key()
            .verify_strict(&msg, &sig)
            .map_err(|_| SignatureError::BadSignature { key: *self })
    }
}

/// Where [`PolicySigner::save`] puts the public half of `key`: `<key>.pub`.
pub fn public_key_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn mode_of(path: &Path) -> Result<u32, KeyError> {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .map_err(|source| KeyError::Io {
            path: path.into(),
            source,
        })
}

fn read_key_file(path: &Path) -> Result<String, KeyError> {
    use std::io::Read;
    let io = |source| KeyError::Io {
        path: path.into(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    if !f.metadata().map_err(io)?.is_file() {
        return Err(KeyError::Format {
            path: path.into(),
            why: "not a regular file".into(),
        });
    }
    let mut text = String::new();
    f.take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(KeyError::Format {
            path: path.into(),
            why: format!("over {MAX_KEY_FILE} bytes: not a key file"),
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{Direction, PolicyKind};
    use crate::testkit::random_model;

    /// Version `v` of a line: parent version `v - 1` with a made-up digest.
    fn version(v: u64, seed: u64) -> ModelFile {
        let m = random_model(2, 0, false, Direction::Inverse, PolicyKind::Flow, seed);
        let mut spec = m.spec.clone();
        spec.version = v;
        spec.parent_digest = Some(format!("sha256:{:064x}", v - 1));
        spec.parent_version = Some(v - 1);
        ModelFile::new(spec, m.tensors().clone()).unwrap()
    }

    /// The same weights with the spec edited, digest restamped, and the
    /// old signature carried over (what a forger can do without the key).
    fn edited(m: &ModelFile, edit: impl FnOnce(&mut ModelSpec)) -> ModelFile {
        let mut spec = m.spec.clone();
        edit(&mut spec);
        let out = ModelFile::new(spec, m.tensors().clone()).unwrap();
        match m.signature() {
            Some(s) => out.with_signature(s.to_string()),
            None => out,
        }
    }

    fn through_bytes(m: &ModelFile) -> ModelFile {
        ModelFile::from_bytes(&m.to_bytes()).unwrap()
    }

    #[test]
    fn a_signed_version_verifies_after_a_round_trip_through_the_file() {
        let signer = PolicySigner::generate().unwrap();
        let trusted = TrustedKeys::new(vec![signer.public_key()]);
        let m = through_bytes(&signer.sign(version(2, 1)));
        assert!(m.signature().unwrap().contains("\"alg\":\"ed25519\""));
        assert_eq!(trusted.verify(&m), Ok(signer.public_key()));
        assert!(signed_by(&m, &signer.public_key()));
        // the digest does not cover the signature: signing changes no digest
        assert_eq!(m.spec.digest, version(2, 1).spec.digest);
        // and an unsigned file loads as before, but is not accepted
        let plain = through_bytes(&version(2, 1));
        assert_eq!(plain.signature(), None);
        assert_eq!(trusted.verify(&plain), Err(SignatureError::Unsigned));
    }

    #[test]
    fn the_message_has_a_domain_prefix_a_format_and_each_field() {
        let m = version(7, 1);
        let msg = signed_message(&m.spec);
        assert!(msg.starts_with(b"flowpilot/policy-version\0"));
        let at = MESSAGE_DOMAIN.len();
        assert_eq!(&msg[at..at + 4], &1u32.to_le_bytes());
        assert_eq!(&msg[at + 4..at + 12], &7u64.to_le_bytes());
        assert_eq!(&msg[at + 12..at + 16], &71u32.to_le_bytes());
        assert_eq!(&msg[at + 16..at + 87], m.spec.digest.as_bytes());
        assert_eq!(msg[at + 87], 1);
        assert_eq!(msg.len(), at + 87 + 1 + 4 + 71 + 1 + 8);
        assert_eq!(&msg[msg.len() - 8..], &6u64.to_le_bytes());
        // absent lineage fields are tagged absent, not empty
        let root = random_model(2, 0, false, Direction::Inverse, PolicyKind::Flow, 1);
        let r = signed_message(&root.spec);
        assert_eq!(&r[r.len() - 2..], &[0, 0]);
    }

    #[test]
    fn tampering_with_each_covered_field_breaks_the_signature() {
        let signer = PolicySigner::generate().unwrap();
        let trusted = TrustedKeys::new(vec![signer.public_key()]);
        let m = signer.sign(version(5, 1));
        let bad = SignatureError::BadSignature {
            key: signer.public_key(),
        };
        type Edit = fn(&mut ModelSpec);
        let edits: [(&str, Edit); 6] = [
            ("version renumbered (replay)", |s| s.version = 9),
            ("parent digest", |s| {
                s.parent_digest = Some(format!("sha256:{:064x}", 99))
            }),
            ("parent digest dropped", |s| s.parent_digest = None),
            ("parent version", |s| s.parent_version = Some(3)),
            ("parent version dropped", |s| s.parent_version = None),
            // anything else in the spec changes the digest, which is covered
            ("created_by (the digest)", |s| s.created_by.push('!')),
        ];
        for (what, edit) in edits {
            let forged = through_bytes(&edited(&m, edit));
            assert_eq!(trusted.verify(&forged), Err(bad.clone()), "{what}");
        }
        // other weights: another digest
        let other = version(5, 2).with_signature(m.signature().unwrap().into());
        assert_eq!(trusted.verify(&through_bytes(&other)), Err(bad.clone()));
        // a flipped bit in the signature itself
        let meta: serde_json::Value = serde_json::from_str(m.signature().unwrap()).unwrap();
        let mut sig = B64.decode(meta["sig"].as_str().unwrap()).unwrap();
        sig[10] ^= 1;
        let mut meta = meta.clone();
        meta["sig"] = B64.encode(&sig).into();
        let flipped = version(5, 1).with_signature(meta.to_string());
        assert_eq!(trusted.verify(&flipped), Err(bad));
    }

    #[test]
    fn a_key_not_trusted_or_claimed_falsely_is_refused() {
        let (ours, theirs) = (
            PolicySigner::generate().unwrap(),
            PolicySigner::generate().unwrap(),
        );
        let trusted = TrustedKeys::new(vec![ours.public_key()]);
        let m = theirs.sign(version(2, 1));
        assert_eq!(
            trusted.verify(&m),
            Err(SignatureError::UntrustedKey {
                key: theirs.public_key()
            })
        );
        let msg = trusted.verify(&m).unwrap_err().to_string();
        assert!(msg.contains(&theirs.public_key().to_string()), "{msg}");
        // their signature, our key named as the signer
        let meta = m.signature().unwrap().replace(
            &theirs.public_key().to_string(),
            &ours.public_key().to_string(),
        );
        let claimed = version(2, 1).with_signature(meta);
        assert_eq!(
            trusted.verify(&claimed),
            Err(SignatureError::BadSignature {
                key: ours.public_key()
            })
        );
        // either of two trusted keys (a key change-over)
        let both = TrustedKeys::new(vec![ours.public_key(), theirs.public_key()]);
        assert_eq!(both.verify(&m), Ok(theirs.public_key()));
        // who signed, trusted or not
        assert_eq!(signer(&m), Ok(theirs.public_key()));
        assert_eq!(
            signer(&claimed),
            Err(SignatureError::BadSignature {
                key: ours.public_key()
            })
        );
        assert_eq!(signer(&version(2, 1)), Err(SignatureError::Unsigned));
    }

    #[test]
    fn malformed_signature_metadata_is_named() {
        let trusted = TrustedKeys::new(vec![PolicySigner::generate().unwrap().public_key()]);
        for (meta, why) in [
            ("not json", "malformed signature metadata"),
            (
                r#"{"format":2,"alg":"ed25519","key":"ed25519:AAAA","sig":""}"#,
                "unknown signature format 2",
            ),
            (
                r#"{"format":1,"alg":"rsa","key":"ed25519:AAAA","sig":""}"#,
                "unknown algorithm 'rsa'",
            ),
            (
                r#"{"format":1,"alg":"ed25519","key":"ed25519:AAAA","sig":""}"#,
                "key: 3 bytes, not 32",
            ),
        ] {
            let m = version(2, 1).with_signature(meta.into());
            let e = trusted.verify(&m).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn key_files_round_trip_with_their_modes() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("learner.key");
        let signer = PolicySigner::generate().unwrap();
        let pub_path = signer.save(&path).unwrap();
        assert_eq!(pub_path, t.path().join("learner.key.pub"));
        assert_eq!(mode_of(&path).unwrap(), 0o600);
        assert_eq!(mode_of(&pub_path).unwrap(), 0o644);
        let again = PolicySigner::load(&path).unwrap();
        assert_eq!(again.public_key(), signer.public_key());
        assert_eq!(PublicKey::load(&pub_path).unwrap(), signer.public_key());
        // the .pub file's first word is also the inline form
        let inline = std::fs::read_to_string(&pub_path).unwrap();
        let inline = inline.split_whitespace().next().unwrap();
        let keys = TrustedKeys::from_entries(&[inline, pub_path.to_str().unwrap()]).unwrap();
        assert_eq!(keys.keys(), &[signer.public_key(), signer.public_key()]);
        // never overwritten
        let e = signer.save(&path).unwrap_err();
        assert!(matches!(e, KeyError::Exists(_)), "{e}");
        // a private key others may read is refused, naming the fix
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = PolicySigner::load(&path).unwrap_err().to_string();
        assert!(e.contains("readable by group or others (mode 0640)"), "{e}");
        assert!(e.contains("chmod 600"), "{e}");
        // a trusted key file others may write is refused
        std::fs::set_permissions(&pub_path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = PublicKey::load(&pub_path).unwrap_err().to_string();
        assert!(e.contains("writable by group or others (mode 0666)"), "{e}");
        // a private key named as a trusted key is refused
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = PublicKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("this is a private key"), "{e}");
        // junk
        let e = PublicKey::from_entry("ed25519:nope")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a public key"), "{e}");
        let e = PublicKey::from_entry("/nonexistent/k.pub")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/k.pub"), "{e}");
    }
}
