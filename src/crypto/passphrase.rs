//! How strong a master key passphrase must be, and a generator of strong ones.
//!
//! A passphrase-derived master key has its salt, Argon2id cost and check value in the database,
//! next to the ciphertexts, so anyone with a backup can guess offline at the speed of Argon2id.
//! Only the passphrase's own entropy stands between them and the vault: 128 bits, like the
//! random keys `payvault keys generate` makes, is required.
//!
//! Two estimates, both deliberately cheap and conservative (no dictionary crate):
//! - a passphrase in the form `payvault keys generate-passphrase` prints (`pvpp-` and groups of
//!   five characters from a 32-letter alphabet) counts 5 bits per character, less for runs;
//! - anything else is human-chosen, and gets the NIST SP 800-63-1 (Appendix A) estimate: 4 bits
//!   for the first character, 2 for the next 7, 1.5 for the next 12, 1 for each one after, plus
//!   6 bits when it mixes upper case and non-letters. 128 bits then takes about 106 characters:
//!   a long sentence, not a word or two.

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use zeroize::Zeroizing;

/// What a master key passphrase must at least carry.
pub const MIN_PASSPHRASE_BITS: f64 = 128.0;

const GENERATED_PREFIX: &str = "pvpp-";
/// 32 letters and digits without the look-alikes `0 1 l o`: 5 bits each.
const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
const GROUPS: usize = 7;
const GROUP_LEN: usize = 5;

/// A fresh random passphrase: `pvpp-` and seven groups of five characters (175 bits of
/// randomness), drawn again in the rare case its runs bring the estimate under the bar.
pub fn generate_passphrase() -> Zeroizing<String> {
    loop {
        let candidate = draw();
        if estimated_bits(&candidate) >= MIN_PASSPHRASE_BITS {
            return candidate;
        }
    }
}

fn draw() -> Zeroizing<String> {
    let mut random = Zeroizing::new([0u8; GROUPS * GROUP_LEN]);
    OsRng.fill_bytes(random.as_mut());
    let mut out = Zeroizing::new(String::with_capacity(
        GENERATED_PREFIX.len() + GROUPS * (GROUP_LEN + 1),
    ));
    out.push_str(GENERATED_PREFIX);
    for (i, byte) in random.iter().enumerate() {
        if i > 0 && i % GROUP_LEN == 0 {
            out.push('-');
        }
        // 256 is a multiple of 32: no modulo bias.
        out.push(char::from(ALPHABET[usize::from(*byte) % ALPHABET.len()]));
    }
    out
}

/// Estimated entropy of `passphrase` in bits (see the module documentation).
pub fn estimated_bits(passphrase: &str) -> f64 {
    match generated_body(passphrase) {
        Some(body) => random_bits(body),
        None => human_bits(passphrase),
    }
}

/// The characters after the prefix, when `passphrase` has the generated form.
fn generated_body(passphrase: &str) -> Option<&str> {
    let body = passphrase.strip_prefix(GENERATED_PREFIX)?;
    let well_formed = body
        .split('-')
        .all(|group| group.len() == GROUP_LEN && group.bytes().all(|b| ALPHABET.contains(&b)));
    well_formed.then_some(body)
}

/// 5 bits per character of the 32-letter alphabet; a character repeating its predecessor or
/// continuing a sequence (`aaaa`, `abcd`, `2345`) counts 1.
fn random_bits(body: &str) -> f64 {
    let mut bits = 0.0;
    let mut prev: Option<u8> = None;
    for b in body.bytes().filter(|b| *b != b'-') {
        let run = prev.is_some_and(|p| p == b || p.abs_diff(b) == 1);
        bits += if run { 1.0 } else { 5.0 };
        prev = Some(b);
    }
    bits
}

/// NIST SP 800-63-1 Appendix A for human-chosen text.
fn human_bits(text: &str) -> f64 {
    let n = text.chars().count();
    let mut bits = 0.0;
    for i in 1..=n {
        bits += match i {
            1 => 4.0,
            2..=8 => 2.0,
            9..=20 => 1.5,
            _ => 1.0,
        };
    }
    let upper = text.chars().any(char::is_uppercase);
    let other = text.chars().any(|c| !c.is_alphabetic());
    if upper && other {
        bits += 6.0;
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passphrases_are_strong_and_distinct() {
        let a = generate_passphrase();
        let b = generate_passphrase();
        assert_ne!(a.as_str(), b.as_str());
        assert!(
            a.starts_with("pvpp-") && a.len() == 5 + 7 * 5 + 6,
            "{}",
            a.len()
        );
        assert!(
            estimated_bits(&a) >= MIN_PASSPHRASE_BITS,
            "{}",
            estimated_bits(&a)
        );
    }

    #[test]
    fn human_text_needs_to_be_long() {
        for weak in [
            "correct horse battery staple",
            "Tr0ub4dor&3",
            "sixteen-chars-ok",
            "a much longer sentence that still only reaches eighty characters or so today",
        ] {
            assert!(estimated_bits(weak) < MIN_PASSPHRASE_BITS, "{weak}");
        }
        let long = "When the vault wakes at dawn it reads this sentence, which nobody else \
                    knows, and derives its key from all 140 characters of it, slowly.";
        assert!(estimated_bits(long) >= MIN_PASSPHRASE_BITS);
    }

    #[test]
    fn the_generated_form_gets_no_credit_for_runs() {
        let fake = format!("pvpp-{}", ["aaaaa"; 7].join("-"));
        assert!(estimated_bits(&fake) < MIN_PASSPHRASE_BITS);
        let sequence = format!("pvpp-{}", ["abcde"; 7].join("-"));
        assert!(estimated_bits(&sequence) < MIN_PASSPHRASE_BITS);
        // Anything off the alphabet is judged as human text.
        let off = format!("pvpp-{}", ["ABCDE"; 7].join("-"));
        assert_eq!(estimated_bits(&off), human_bits(&off));
    }
}
