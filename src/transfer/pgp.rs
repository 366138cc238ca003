//! OpenPGP for `payvault import` and `payvault export`, with rPGP: reading a file encrypted to
//! the operator's key, and encrypting an export to a recipient's key. Both stream: neither the
//! ciphertext nor the plaintext is ever held whole in memory, and the plaintext never touches
//! the disk.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::path::Path;

use anyhow::{bail, Context};
use pgp::composed::{
    DecryptionOptions, Deserializable, Message, MessageBuilder, SignedPublicKey, SignedSecretKey,
    TheRing,
};
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::types::{
    EcdhPublicParams, EddsaLegacyPublicParams, KeyDetails, Password, PublicParams, Seipdv1ReadMode,
};
use rsa::traits::PublicKeyParts;

use crate::domain::SecretText;

/// RSA recipient keys shorter than this are refused (NIST SP 800-57: 128-bit security).
pub const MIN_RSA_BITS: usize = 3072;

/// The operator's private key for decrypting an import, and its passphrase.
pub struct DecryptKey {
    key: SignedSecretKey,
    passphrase: Password,
}

impl std::fmt::Debug for DecryptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DecryptKey({})", self.key.fingerprint())
    }
}

impl DecryptKey {
    /// Reads an OpenPGP secret key (armored or binary) from `path`.
    pub fn load(path: &Path, passphrase: Option<SecretText>) -> anyhow::Result<Self> {
        let file = File::open(path)
            .with_context(|| format!("cannot open the decryption key {}", path.display()))?;
        let (key, _) = SignedSecretKey::from_reader_single(BufReader::new(file))
            .map_err(|e| anyhow::anyhow!("{} is not an OpenPGP secret key: {e}", path.display()))?;
        key.verify_bindings().map_err(|e| {
            anyhow::anyhow!("the decryption key's self-signatures do not verify: {e}")
        })?;
        let passphrase = passphrase.map_or_else(Password::empty, |p| Password::from(p.expose()));
        Ok(Self { key, passphrase })
    }

    /// Opens `file`, encrypted to this key, as a stream of plaintext. The whole message is
    /// decrypted once first, its plaintext discarded as it comes, so that a file that was
    /// altered (its integrity code fails) is refused before a single row is read from it; the
    /// second pass, over the same open file, is the one returned.
    pub fn open<F>(&self, mut file: F) -> anyhow::Result<impl BufRead + Send + '_>
    where
        F: Read + Seek + Send + std::fmt::Debug + 'static,
    {
        let mut check = self.decrypt(BufReader::new(&mut file))?;
        io::copy(&mut check, &mut io::sink()).context(
            "the encrypted input failed its integrity check (altered or truncated); nothing was imported",
        )?;
        drop(check);
        file.rewind()?;
        Ok(BufReader::new(self.decrypt(BufReader::new(file))?))
    }

    fn decrypt<'a, R: BufRead + std::fmt::Debug + Send + 'a>(
        &self,
        input: R,
    ) -> anyhow::Result<Message<'a>> {
        let (message, _) = Message::from_reader(input)
            .map_err(|e| anyhow::anyhow!("the input is not an OpenPGP message: {e}"))?;
        let ring = TheRing {
            secret_keys: vec![&self.key],
            key_passwords: vec![&self.passphrase],
            // Streaming: memory stays flat whatever the size. Integrity is checked by the
            // first of the two passes in `open`.
            decrypt_options: DecryptionOptions::new()
                .set_seipdv1_read_mode(Seipdv1ReadMode::Streaming),
            ..Default::default()
        };
        let (mut message, _) = message.decrypt_the_ring(ring, true).map_err(|e| {
            anyhow::anyhow!(
                "cannot decrypt the input with the given key (wrong key or passphrase?): {e}"
            )
        })?;
        if message.is_compressed() {
            message = message
                .decompress()
                .map_err(|e| anyhow::anyhow!("cannot decompress the input: {e}"))?;
        }
        Ok(message)
    }
}

/// A recipient's public key that passed the policy: RSA of at least 3072 bits, or Curve25519
/// (Ed25519 signing, X25519 encryption). DSA, ElGamal, NIST and Brainpool curves and short RSA
/// are refused.
#[derive(Debug)]
pub struct Recipient {
    key: SignedPublicKey,
}

impl Recipient {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file = File::open(path)
            .with_context(|| format!("cannot open the recipient key {}", path.display()))?;
        let (key, _) = SignedPublicKey::from_reader_single(BufReader::new(file))
            .map_err(|e| anyhow::anyhow!("{} is not an OpenPGP public key: {e}", path.display()))?;
        Self::new(key)
    }

    pub fn new(key: SignedPublicKey) -> anyhow::Result<Self> {
        key.verify_bindings().map_err(|e| {
            anyhow::anyhow!("the recipient key's self-signatures do not verify: {e}")
        })?;
        check_params(key.primary_key.public_params())
            .map_err(|why| anyhow::anyhow!("refusing the recipient key: its primary key {why}"))?;
        for sub in &key.public_subkeys {
            check_params(sub.key.public_params())
                .map_err(|why| anyhow::anyhow!("refusing the recipient key: a subkey {why}"))?;
        }
        let recipient = Self { key };
        if recipient.encryption_subkeys().next().is_none() && !recipient.primary_encrypts() {
            bail!("refusing the recipient key: it has no encryption key");
        }
        Ok(recipient)
    }

    pub fn fingerprint(&self) -> String {
        self.key.fingerprint().to_string()
    }

    fn primary_encrypts(&self) -> bool {
        self.key.primary_key.algorithm().can_encrypt()
    }

    fn encryption_subkeys(&self) -> impl Iterator<Item = &pgp::composed::SignedPublicSubKey> {
        self.key.public_subkeys.iter().filter(|s| {
            s.key.algorithm().can_encrypt()
                && s.signatures.iter().any(|sig| {
                    let flags = sig.key_flags();
                    flags.encrypt_comms() || flags.encrypt_storage()
                })
        })
    }

    /// Encrypts everything `plaintext` yields to this recipient (SEIPDv1, AES-256, which every
    /// OpenPGP implementation reads), writing the binary message to `out` as it goes.
    pub fn encrypt(&self, plaintext: impl Read, out: impl Write) -> anyhow::Result<()> {
        let mut rng = aes_gcm::aead::OsRng;
        let mut builder = MessageBuilder::from_reader("", plaintext)
            .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
        let mut any = false;
        for sub in self.encryption_subkeys() {
            builder.encrypt_to_key(&mut rng, sub)?;
            any = true;
        }
        if !any {
            builder.encrypt_to_key(&mut rng, &self.key)?;
        }
        builder
            .to_writer(rng, out)
            .map_err(|e| anyhow::anyhow!("encryption failed: {e}"))
    }
}

/// Why a component key's algorithm or size is refused.
fn check_params(params: &PublicParams) -> Result<(), String> {
    match params {
        PublicParams::RSA(rsa) => {
            let bits = rsa.key.n().bits();
            if bits < MIN_RSA_BITS {
                Err(format!(
                    "is RSA of {bits} bits; at least {MIN_RSA_BITS} are required"
                ))
            } else {
                Ok(())
            }
        }
        PublicParams::EdDSALegacy(EddsaLegacyPublicParams::Ed25519 { .. })
        | PublicParams::Ed25519(_)
        | PublicParams::X25519(_)
        | PublicParams::ECDH(EcdhPublicParams::Curve25519Legacy { .. }) => Ok(()),
        PublicParams::DSA(_) => Err("is DSA, which is obsolete (FIPS 186-5 withdrew it)".into()),
        PublicParams::Elgamal(_) => Err("is ElGamal, which is obsolete".into()),
        _ => Err(
            "uses an algorithm not accepted here: only RSA of 3072 bits or more and Curve25519 (Ed25519, X25519) keys are".into(),
        ),
    }
}
