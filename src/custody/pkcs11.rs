//! `PAYVAULT_KEY_PROVIDER=pkcs11`: master keys wrapped by an AES-256 key inside a PKCS#11 token
//! (an HSM, a cloud HSM's PKCS#11 library, SoftHSM2), through the `cryptoki` crate.
//!
//! Wrapped form (61 bytes): `0x01 || IV (12) || AES-256-GCM(key) with its 16-byte tag`, the
//! associated data being [`super::binding`] of the version. The token's key is used for
//! `C_Encrypt`/`C_Decrypt` only; it is created sensitive and not extractable
//! (`payvault keys pkcs11-create-key`).
//!
//! A module is loaded and `C_Initialize`d once per process and kept for the process's life
//! (PKCS#11 allows one initialisation per process). Calls block, so they run on the blocking
//! pool; each opens a session of its own.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::{binding, CustodyError};
use crate::config::{self, ConfigError};
use crate::domain::SecretText;

const NAME: &str = "pkcs11";
const FORMAT: u8 = 1;
const IV_LEN: usize = 12;
const WRAPPED_LEN: usize = 1 + IV_LEN + 32 + 16;

const MODULE_VAR: &str = "PAYVAULT_PKCS11_MODULE";
const TOKEN_VAR: &str = "PAYVAULT_PKCS11_TOKEN_LABEL";
const KEY_VAR: &str = "PAYVAULT_PKCS11_KEY_LABEL";
const PIN_VAR: &str = "PAYVAULT_PKCS11_PIN";

/// The PKCS#11 settings.
#[derive(Debug)]
pub struct Pkcs11Config {
    /// The vendor's PKCS#11 library (`/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    pub token_label: String,
    pub key_label: String,
    /// The user PIN.
    pub pin: SecretText,
}

impl Pkcs11Config {
    /// `PAYVAULT_PKCS11_MODULE`, `_TOKEN_LABEL`, `_KEY_LABEL` and `_PIN` (or `_PIN_FILE`), all
    /// required.
    pub fn from_env() -> Result<Self, ConfigError> {
        let required = |name| config::var(name)?.ok_or(ConfigError::Missing(name));
        Ok(Self {
            module: required(MODULE_VAR)?.into(),
            token_label: required(TOKEN_VAR)?,
            key_label: required(KEY_VAR)?,
            pin: config::secret_var("PAYVAULT_PKCS11_PIN")?.ok_or(ConfigError::Missing(
                "PAYVAULT_PKCS11_PIN (or PAYVAULT_PKCS11_PIN_FILE)",
            ))?,
        })
    }
}

/// A root key in a PKCS#11 token.
pub struct Pkcs11Provider {
    config: Pkcs11Config,
}

impl Pkcs11Provider {
    pub fn new(config: Pkcs11Config) -> Self {
        Self { config }
    }

    pub fn describe(&self) -> String {
        format!(
            "PKCS#11 key '{}' on token '{}' ({})",
            self.config.key_label,
            self.config.token_label,
            self.config.module.display()
        )
    }

    pub(super) async fn wrap(
        self: Arc<Self>,
        version: i32,
        key: &[u8; 32],
    ) -> Result<Vec<u8>, CustodyError> {
        let key = Zeroizing::new(*key);
        blocking(move || {
            let (session, handle) = self.open(false)?;
            let mut iv = [0u8; IV_LEN];
            OsRng.fill_bytes(&mut iv);
            let aad = binding(version);
            // The IV buffer is the mechanism's: a token that generates IVs itself writes the
            // one it used there, so it is read back after the call.
            let params = GcmParams::new(&mut iv, &aad, 128u64.into()).map_err(failed)?;
            let sealed = session
                .encrypt(&Mechanism::AesGcm(params), handle, key.as_ref())
                .map_err(failed)?;
            let mut out = Vec::with_capacity(WRAPPED_LEN);
            out.push(FORMAT);
            out.extend_from_slice(&iv);
            out.extend_from_slice(&sealed);
            if out.len() != WRAPPED_LEN {
                return Err(failed_text(
                    "the token's AES-GCM output has an unexpected length",
                ));
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn unwrap(
        self: Arc<Self>,
        version: i32,
        wrapped: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, CustodyError> {
        let wrapped = wrapped.to_vec();
        blocking(move || {
            let bad = || CustodyError::BadWrap {
                provider: NAME,
                version,
                root: self.describe(),
            };
            if wrapped.len() != WRAPPED_LEN || wrapped[0] != FORMAT {
                return Err(bad());
            }
            let (session, handle) = self.open(false)?;
            let mut iv = [0u8; IV_LEN];
            iv.copy_from_slice(&wrapped[1..=IV_LEN]);
            let aad = binding(version);
            let params = GcmParams::new(&mut iv, &aad, 128u64.into()).map_err(failed)?;
            let clear = session
                .decrypt(&Mechanism::AesGcm(params), handle, &wrapped[1 + IV_LEN..])
                .map_err(|e| match e {
                    // A failed GCM tag check: CKR_ENCRYPTED_DATA_INVALID by the standard;
                    // SoftHSM2 answers CKR_GENERAL_ERROR, some HSMs CKR_FUNCTION_FAILED. The
                    // session and key were just found usable, so these mean the wrap itself.
                    CkError::Pkcs11(
                        RvError::GeneralError
                        | RvError::FunctionFailed
                        | RvError::EncryptedDataInvalid
                        | RvError::EncryptedDataLenRange
                        | RvError::DataInvalid
                        | RvError::DataLenRange,
                        _,
                    ) => bad(),
                    e => failed(e),
                })?;
            let clear = Zeroizing::new(clear);
            let mut key = Zeroizing::new([0u8; 32]);
            if clear.len() != 32 {
                return Err(bad());
            }
            key.copy_from_slice(&clear);
            Ok(key)
        })
        .await
    }

    pub(super) async fn check(self: Arc<Self>) -> Result<(), CustodyError> {
        blocking(move || self.open(false).map(drop)).await
    }

    /// Creates the AES-256 root key (sensitive, not extractable, encrypt and decrypt only) named
    /// by the settings; refuses when a key with that label exists.
    pub async fn create_key(self: Arc<Self>) -> Result<(), CustodyError> {
        blocking(move || {
            let (session, existing) = self.open_session(true)?;
            if !existing.is_empty() {
                return Err(CustodyError::Failed {
                    provider: NAME,
                    reason: format!(
                        "token '{}' already holds a key labelled '{}'",
                        self.config.token_label, self.config.key_label
                    ),
                });
            }
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32u64.into()),
                Attribute::Label(self.config.key_label.as_bytes().to_vec()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
            ];
            session
                .generate_key(&Mechanism::AesKeyGen, &template)
                .map_err(failed)?;
            Ok(())
        })
        .await
    }

    /// A logged-in session and the root key.
    fn open(&self, read_write: bool) -> Result<(Session, ObjectHandle), CustodyError> {
        let (session, keys) = self.open_session(read_write)?;
        match keys.as_slice() {
            [handle] => Ok((session, *handle)),
            [] => Err(CustodyError::NotFound {
                provider: NAME,
                setting: KEY_VAR,
                reason: format!(
                    "token '{}' holds no AES key labelled '{}'",
                    self.config.token_label, self.config.key_label
                ),
            }),
            _ => Err(CustodyError::Failed {
                provider: NAME,
                reason: format!(
                    "token '{}' holds several AES keys labelled '{}' ({KEY_VAR}): keep one",
                    self.config.token_label, self.config.key_label
                ),
            }),
        }
    }

    /// A logged-in session on the configured token, and the AES keys carrying the key label.
    fn open_session(&self, read_write: bool) -> Result<(Session, Vec<ObjectHandle>), CustodyError> {
        let ctx = context(&self.config.module)?;
        let unreachable = |e: CkError| CustodyError::Unreachable {
            provider: NAME,
            setting: MODULE_VAR,
            reason: e.to_string(),
        };
        let mut slot = None;
        for candidate in ctx
            .get_slots_with_initialized_token()
            .map_err(unreachable)?
        {
            // A slot whose token cannot describe itself (another token being initialised, a
            // faulty one) is not ours to fail on: look on; none labelled so is NotFound below.
            let Ok(info) = ctx.get_token_info(candidate) else {
                continue;
            };
            if info.label().trim_end() == self.config.token_label {
                slot = Some(candidate);
                break;
            }
        }
        let slot = slot.ok_or_else(|| CustodyError::NotFound {
            provider: NAME,
            setting: TOKEN_VAR,
            reason: format!(
                "no initialised token labelled '{}' in {}",
                self.config.token_label,
                self.config.module.display()
            ),
        })?;
        let session = if read_write {
            ctx.open_rw_session(slot)
        } else {
            ctx.open_ro_session(slot)
        }
        .map_err(unreachable)?;
        let pin = AuthPin::from(self.config.pin.expose());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(
                rv @ (RvError::PinIncorrect
                | RvError::PinInvalid
                | RvError::PinLenRange
                | RvError::PinLocked
                | RvError::PinExpired),
                _,
            )) => {
                return Err(CustodyError::Refused {
                    provider: NAME,
                    setting: PIN_VAR,
                    reason: format!(
                        "token '{}' refused the PIN ({})",
                        self.config.token_label,
                        pin_reason(rv)
                    ),
                })
            }
            Err(e) => return Err(failed(e)),
        }
        let keys = session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Label(self.config.key_label.as_bytes().to_vec()),
            ])
            .map_err(failed)?;
        Ok((session, keys))
    }
}

fn pin_reason(rv: RvError) -> &'static str {
    match rv {
        RvError::PinIncorrect => "wrong PIN",
        RvError::PinLocked => "the PIN is locked after too many failures",
        RvError::PinExpired => "the PIN has expired",
        _ => "malformed PIN",
    }
}

/// The loaded and initialised module at `path`, shared by the whole process (and never
/// finalised): use this, not a `Pkcs11` of your own, to manage tokens in a process that also
/// runs a provider.
pub fn context(path: &Path) -> Result<Pkcs11, CustodyError> {
    static CONTEXTS: Mutex<Vec<(PathBuf, Pkcs11)>> = Mutex::new(Vec::new());
    let mut contexts = CONTEXTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, ctx)) = contexts.iter().find(|(p, _)| p == path) {
        return Ok(ctx.clone());
    }
    let unreachable = |reason: String| CustodyError::Unreachable {
        provider: NAME,
        setting: MODULE_VAR,
        reason,
    };
    if !path.is_file() {
        return Err(unreachable(format!(
            "no PKCS#11 library at {}",
            path.display()
        )));
    }
    let ctx = Pkcs11::new(path)
        .map_err(|e| unreachable(format!("cannot load {}: {e}", path.display())))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(unreachable(format!(
                "cannot initialise {}: {e}",
                path.display()
            )))
        }
    }
    contexts.push((path.to_owned(), ctx.clone()));
    Ok(ctx)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CustodyError> + Send + 'static,
) -> Result<T, CustodyError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| failed_text(&format!("the PKCS#11 call did not complete: {e}")))?
}

fn failed(e: CkError) -> CustodyError {
    failed_text(&e.to_string())
}

fn failed_text(reason: &str) -> CustodyError {
    CustodyError::Failed {
        provider: NAME,
        reason: reason.to_owned(),
    }
}
