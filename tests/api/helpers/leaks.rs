//! Leak scans: every column of every table, and the captured logs, searched for card data.

use sqlx::PgPool;

/// `needle` occurring in `hay` as a whole token (not inside a longer run of letters/digits).
pub fn contains_word(hay: &str, needle: &str) -> bool {
    hay.match_indices(needle).any(|(i, _)| {
        let before = hay[..i].chars().next_back();
        let after = hay[i + needle.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// The text around the first whole-word occurrence of `needle`, for failure messages.
fn context(hay: &str, needle: &str) -> String {
    let b = hay.as_bytes();
    hay.match_indices(needle)
        .map(|(i, _)| i)
        .find(|&i| {
            let before = i.checked_sub(1).map(|j| b[j]);
            let after = b.get(i + needle.len()).copied();
            !before.is_some_and(|c| c.is_ascii_alphanumeric())
                && !after.is_some_and(|c| c.is_ascii_alphanumeric())
        })
        .map(|i| {
            String::from_utf8_lossy(&b[i.saturating_sub(120)..(i + 60).min(b.len())]).into_owned()
        })
        .unwrap_or_default()
}

/// Replaces decimal fractions such as `0.0729` (durations in log lines) with `<num>`, so their
/// digits cannot look like a CVV.
pub fn strip_decimals(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i > start && i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            out.extend_from_slice(b"<num>");
        } else if i > start {
            out.extend_from_slice(&b[start..i]);
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Replaces UUIDs (request ids, credential ids) so random hex groups cannot look like a CVV.
pub fn strip_uuids(text: &str) -> String {
    let bytes = text.as_bytes();
    let shape = [8, 4, 4, 4, 12];
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    'outer: while i < bytes.len() {
        let mut j = i;
        for (n, len) in shape.iter().enumerate() {
            if j + len > bytes.len() || !bytes[j..j + len].iter().all(u8::is_ascii_hexdigit) {
                out.push(bytes[i] as char);
                i += 1;
                continue 'outer;
            }
            j += len;
            if n < 4 {
                if bytes.get(j) != Some(&b'-') {
                    out.push(bytes[i] as char);
                    i += 1;
                    continue 'outer;
                }
                j += 1;
            }
        }
        out.push_str("<uuid>");
        i = j;
    }
    out
}

pub fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Scans every column of every table (as text, and bytea hex-encoded) and `logs` for the
/// given secrets. Short ones (CVVs) are looked for as whole words in text columns and logs,
/// with UUIDs masked so random hex cannot look like a CVV. Also checks no column is named
/// after a CVV.
pub async fn assert_no_leaks(pool: &PgPool, long: &[&str], short: &[&str], logs: &str) {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(tables.len() >= 4, "{tables:?}");
    let mut everything = String::new();
    for table in &tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!(r#"SELECT row_to_json(t)::text FROM "{table}" t"#))
                .fetch_all(pool)
                .await
                .unwrap();
        everything.push_str(&rows.join("\n"));
    }
    assert!(everything.len() > 1000, "the scan saw data");
    for secret in long {
        assert!(
            !everything.contains(secret),
            "{secret} found in the database"
        );
        assert!(
            !everything.contains(&hex(secret)),
            "{secret} found hex-encoded in the database"
        );
        assert!(!logs.contains(secret), "{secret} found in the logs");
    }
    let text_columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = 'public' AND data_type IN ('text', 'jsonb', 'ARRAY', 'character varying')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut text = String::new();
    for (table, column) in text_columns {
        let values: Vec<Option<String>> =
            sqlx::query_scalar(&format!(r#"SELECT "{column}"::text FROM "{table}""#))
                .fetch_all(pool)
                .await
                .unwrap();
        text.extend(values.into_iter().flatten().map(|v| v + "\n"));
    }
    let (text, logs) = (
        strip_decimals(&strip_uuids(&text)),
        strip_decimals(&strip_uuids(logs)),
    );
    for cvv in short {
        assert!(
            !contains_word(&text, cvv),
            "CVV {cvv} found in a text column: {}",
            context(&text, cvv)
        );
        assert!(
            !contains_word(&logs, cvv),
            "CVV {cvv} found in the logs: {}",
            context(&logs, cvv)
        );
    }
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'public'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        !columns
            .iter()
            .any(|c| c.contains("cvv") || c.contains("security_code")),
        "{columns:?}"
    );
}

#[test]
fn uuid_stripping_and_word_search_work() {
    assert_eq!(
        strip_uuids("id=0c8e7294-1a2b-4c3d-8e9f-001122334455!"),
        "id=<uuid>!"
    );
    assert!(contains_word(r#"{"cvv":"7294"}"#, "7294"));
    assert!(!contains_word("a17294b", "7294"));
    assert_eq!(
        strip_decimals("elapsed=0.0729 cvv=0729 v1.2"),
        "elapsed=<num> cvv=0729 v<num>"
    );
}
