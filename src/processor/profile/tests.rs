use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::domain::{
    AccountNumber, Amount, BankAccount, Card, CardNumber, Cvv, Expiry, PostalCode, RoutingNumber,
    SecretText,
};
use crate::processor::{Initiator, ProcessorError, ProcessorReply, AUTH_FAILED, REJECTED};
use minijinja::{Environment, UndefinedBehavior};

const PAN: &str = "4111111111111111";

fn card() -> PaymentMethod {
    PaymentMethod::Card(Card {
        number: CardNumber::parse(SecretText::from(PAN)).unwrap(),
        expiry: Expiry::from_stored(3, 2031).unwrap(),
        cvv: Some(Cvv::parse(SecretText::from("737")).unwrap()),
        postal_code: Some(PostalCode::parse("94105").unwrap()),
    })
}

fn bank() -> PaymentMethod {
    PaymentMethod::Bank(BankAccount {
        routing: RoutingNumber::parse("121000358").unwrap(),
        account: AccountNumber::parse(SecretText::from("123456789")).unwrap(),
    })
}

fn request<'a>(
    method: &'a PaymentMethod,
    amount: &'a Amount,
    parameters: &'a BTreeMap<String, String>,
) -> ProcessorRequest<'a> {
    ProcessorRequest {
        transaction_id: "72500aba-328c-445c-a12e-da5700e10b17",
        idempotency_key: "idem-1",
        method,
        amount,
        description: Some("pizza \"large\""),
        parameters,
        timeout: Duration::from_secs(1),
        initiator: Initiator::CustomerMoto,
    }
}

/// A profile around `body` (and optionally `extra` TOML), pointed at a dummy URL.
fn profile(body: &str, encoding: &str) -> Profile {
    let text = format!(
        r#"
name = "t"
[urls]
test = "https://t.example"
live = "https://t.example"
[settings.key]
secret = true
[auth]
scheme = "bearer"
token = "{{{{ settings.key }}}}"
[operations.sale]
path = "/pay"
encoding = "{encoding}"
body = '''{body}'''
[operations.sale.reply]
approved = "reply.ok"
charge_id = "reply.id"
decline_code = "reply.code"
"#
    );
    Profile::parse(&text, "test").unwrap()
}

fn processor(p: Profile) -> ProfileProcessor {
    let cfg = ProfileConfig::with_settings(p, ProcessorEnvironment::Test, None, &[("key", "sk_1")])
        .unwrap();
    ProfileProcessor::new(cfg, Duration::from_secs(1), Duration::from_secs(1)).unwrap()
}

fn render(body: &str, method: &PaymentMethod, amount: &Amount) -> Result<String, String> {
    let params = BTreeMap::from([("AVSName".to_owned(), "Ada Lovelace".to_owned())]);
    let p = processor(profile(body, "json"));
    p.build(&request(method, amount, &params), Mode::Send)
        .map(|b| String::from_utf8(b.body.to_vec()).unwrap())
}

fn usd() -> Amount {
    Amount::parse("10.50", "usd").unwrap()
}

#[test]
fn filters_format_card_data_as_json_strings() {
    let out = render(
        r#"{"n": {{ card.number | pan }}, "c": {{ card.cvv | cvv }}, "l": {{ card.number | last4 }}, "b": {{ card.number | bin }}}"#,
        &card(),
        &usd(),
    )
    .unwrap();
    assert_eq!(
        out,
        r#"{"n": "4111111111111111", "c": "737", "l": "1111", "b": "411111"}"#
    );
    let out = render(
        r#"{"a": {{ bank.account | account }}, "r": {{ bank.routing | routing }}, "h": {{ bank.holder_name }}, "m": {{ method }}}"#,
        &bank(),
        &usd(),
    )
    .unwrap();
    assert_eq!(
        out,
        r#"{"a": "123456789", "r": "121000358", "h": "Ada Lovelace", "m": "bank"}"#
    );
}

#[test]
fn every_expiry_format() {
    for (format, expected) in [
        ("MM", "03"),
        ("YY", "31"),
        ("YYYY", "2031"),
        ("MMYY", "0331"),
        ("MM/YY", "03/31"),
        ("YYYY-MM", "2031-03"),
    ] {
        let out = render(
            &format!(r#"{{{{ card.expiry | exp("{format}") }}}}"#),
            &card(),
            &usd(),
        );
        // A bare string is valid JSON.
        assert_eq!(out.unwrap(), format!("\"{expected}\""), "{format}");
    }
    let err = render(r#"{{ card.expiry | exp("DD") }}"#, &card(), &usd()).unwrap_err();
    assert!(err.contains("use MM, YY"), "{err}");
}

#[test]
fn amounts_in_minor_and_major_units_by_currency_exponent() {
    let body = r#"[{{ amount.minor }}, {{ amount.major }}, {{ amount.currency }}]"#;
    for (amount, currency, expected) in [
        ("10.5", "usd", r#"[1050, "10.50", "USD"]"#),
        ("1002", "JPY", r#"[1002, "1002", "JPY"]"#),
        ("1.25", "KWD", r#"[1250, "1.250", "KWD"]"#),
    ] {
        let a = Amount::parse(amount, currency).unwrap();
        assert_eq!(render(body, &card(), &a).unwrap(), expected, "{currency}");
    }
}

#[test]
fn a_card_never_renders_in_clear_through_a_direct_path() {
    for body in [
        "{{ card }}",
        "{{ card.number }}",
        "{{ card.number | tojson }}",
        "{{ card.number | string }}",
        "{{ card.number ~ '' }}",
        "{{ card.cvv }}",
        "{{ card.expiry }}",
        "{{ bank }}",
        "{{ bank.account }}",
        "{{ card | tojson }}",
    ] {
        let method = if body.contains("bank") {
            bank()
        } else {
            card()
        };
        match render(body, &method, &usd()) {
            Ok(out) => {
                assert!(!out.contains(PAN), "{body} -> {out}");
                assert!(!out.contains("737"), "{body} -> {out}");
                assert!(!out.contains("123456789"), "{body} -> {out}");
            }
            Err(e) => assert!(!e.contains(PAN), "{body} -> {e}"),
        }
    }
    assert_eq!(
        render("{{ card.number }}", &card(), &usd()).unwrap(),
        "\"411111******1111\""
    );
    // Filters refuse the wrong kind of value.
    let err = render("{{ card.cvv | pan }}", &card(), &usd()).unwrap_err();
    assert!(err.contains("`pan` applies to card.number"), "{err}");
    assert!(render("{{ 'x' | pan }}", &card(), &usd()).is_err());
}

#[test]
fn free_text_cannot_break_out_of_its_json_string() {
    let out = render(r#"{"d": {{ description }}}"#, &card(), &usd()).unwrap();
    assert_eq!(out, r#"{"d":"pizza \"large\""}"#.replace(":", ": "));
}

#[test]
fn masked_mode_masks_card_data_and_secrets() {
    let params = BTreeMap::new();
    let p = processor(profile(
        r#"{"n": {{ card.number | pan }}, "c": {{ card.cvv | cvv }}, "k": {{ settings.key }}}"#,
        "json",
    ));
    let (m, a) = (card(), usd());
    let built = p.build(&request(&m, &a, &params), Mode::Masked).unwrap();
    assert_eq!(
        std::str::from_utf8(&built.body).unwrap(),
        r#"{"n": "411111******1111", "c": "***", "k": "********"}"#
    );
    let auth: Vec<_> = built
        .headers
        .iter()
        .filter(|(n, _)| *n == reqwest::header::AUTHORIZATION)
        .collect();
    assert_eq!(auth[0].1, "Bearer ********");
    let built = p.build(&request(&m, &a, &params), Mode::Send).unwrap();
    let auth = built
        .headers
        .iter()
        .find(|(n, _)| *n == reqwest::header::AUTHORIZATION)
        .unwrap();
    assert_eq!(auth.1, "Bearer sk_1");
}

#[test]
fn form_encoding_flattens_nested_keys_stripe_style() {
    let params = BTreeMap::new();
    let p = processor(profile(
        r#"{"amount": {{ amount.minor }}, "card": {"number": {{ card.number | pan }}, "exp": [1, "a b"]}, "skip": null, "ok": true}"#,
        "form",
    ));
    let (m, a) = (card(), usd());
    let built = p.build(&request(&m, &a, &params), Mode::Send).unwrap();
    let body = std::str::from_utf8(&built.body).unwrap();
    let pairs: Vec<&str> = body.split('&').collect();
    for expected in [
        "amount=1050",
        "card%5Bnumber%5D=4111111111111111",
        "card%5Bexp%5D%5B0%5D=1",
        "card%5Bexp%5D%5B1%5D=a+b",
        "ok=true",
    ] {
        assert!(pairs.contains(&expected), "{expected} in {body}");
    }
    assert!(!body.contains("skip"));
    assert!(built
        .headers
        .iter()
        .any(|(n, v)| n == CONTENT_TYPE && v == "application/x-www-form-urlencoded"));
}

#[test]
fn a_template_syntax_error_is_refused_with_its_name_and_line() {
    let text = r#"
name = "broken"
[urls]
test = "https://t.example"
live = "https://t.example"
[operations.sale]
path = "/pay"
body = '''{
  "a": 1,
  "b": {{ amount.minor }
}'''
[operations.sale.reply]
approved = "reply.ok"
charge_id = "reply.id"
decline_code = "reply.code"
"#;
    let err = Profile::parse(text, "broken.toml").unwrap_err().to_string();
    assert!(err.contains("broken.toml"), "{err}");
    assert!(
        err.contains("template operations.sale.body, line 3"),
        "{err}"
    );
    let bad_expr = text
        .replace("{{ amount.minor }", "{{ amount.minor }}")
        .replace("reply.code\"", "reply.code ==\"");
    let err = Profile::parse(&bad_expr, "x").unwrap_err().to_string();
    assert!(err.contains("operations.sale.reply.decline_code"), "{err}");
}

#[test]
fn a_missing_required_setting_names_its_variable() {
    let p = Profile::builtin("stripe").unwrap().unwrap();
    let err = ProfileConfig::with_settings(p, ProcessorEnvironment::Test, None, &[])
        .unwrap_err()
        .to_string();
    // Spelled in pieces: the README test takes every whole `PAYVAULT_*` literal under src/ for
    // a variable of the configuration table, and profile settings are documented per profile.
    let variable = ["PAYVAULT", "PROCESSOR", "SECRET", "KEY"].join("_");
    assert_eq!(setting_variable("secret_key"), variable);
    assert!(err.contains(&variable), "{err}");
}

fn spec(
    format: &str,
    approved: &str,
    charge: &str,
    decline: &str,
) -> (ReplySpec, Environment<'static>) {
    let text = format!(
        "format = \"{format}\"\napproved = \"{approved}\"\ncharge_id = \"{charge}\"\ndecline_code = \"{decline}\"\ndecline_message = \"reply.msg\"\nnetwork_transaction_id = \"reply.ntid\"\nparameters = [\"status\", \"a.b\"]\n"
    );
    let spec: ReplySpec = toml::from_str(&text).unwrap();
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    (spec, env)
}

#[test]
fn reply_expressions_read_approvals_and_declines() {
    let (s, env) = spec("json", "reply.status == 'ok'", "reply.id", "reply.err.code");
    let ok = reply::read(
        &s,
        &env,
        200,
        br#"{"status":"ok","id":"ch_1","ntid":"123456789012345","a":{"b":7}}"#,
        &[PAN],
    )
    .unwrap();
    assert_eq!(ok.charge_id.as_deref(), Some("ch_1"));
    assert!(ok.approved());
    assert_eq!(
        ok.network_transaction_id.as_deref(),
        Some("123456789012345")
    );
    assert_eq!(ok.parameters["status"], "ok");
    assert_eq!(ok.parameters["a_b"], "7");
    let declined = reply::read(
        &s,
        &env,
        402,
        br#"{"err":{"code":"card_declined"},"msg":"card 4111111111111111 / 4111.1111.1111.1111 declined"}"#,
        &[PAN],
    )
    .unwrap();
    assert!(!declined.approved());
    assert_eq!(declined.error_code.as_deref(), Some("card_declined"));
    assert_eq!(
        declined.error_message.as_deref(),
        // " / " joins both writings into one group, redacted whole.
        Some("card [redacted] declined")
    );
    for body in [
        &br#"{"status":"weird"}"#[..],
        b"<html>",
        br#"{"status":"ok"}"#,
    ] {
        assert!(matches!(
            reply::read(&s, &env, 200, body, &[]),
            Err(ProcessorError::BadResponse(_))
        ));
    }
}

#[test]
fn replies_may_be_query_strings_and_start_with_a_bom() {
    let (s, env) = spec(
        "form",
        "reply.response == '1'",
        "reply.transactionid",
        "reply.response_code if reply.response == '2'",
    );
    let ok = reply::read(
        &s,
        &env,
        200,
        b"response=1&responsetext=SUCCESS&transactionid=2762757839&status=x",
        &[],
    )
    .unwrap();
    assert_eq!(ok.charge_id.as_deref(), Some("2762757839"));
    let declined = reply::read(
        &s,
        &env,
        200,
        b"response=2&responsetext=DECLINE&response_code=200",
        &[],
    )
    .unwrap();
    assert_eq!(declined.error_code.as_deref(), Some("200"));
    let (s, env) = spec("json", "reply.status == 'ok'", "reply.id", "reply.code");
    let ok = reply::read(
        &s,
        &env,
        200,
        b"\xEF\xBB\xBF{\"status\":\"ok\",\"id\":\"x\"}",
        &[],
    )
    .unwrap();
    assert_eq!(ok.charge_id.as_deref(), Some("x"));
}

#[test]
fn every_builtin_profile_parses_and_renders_a_card_sale() {
    let params = BTreeMap::from([("AVSName".to_owned(), "Ada Lovelace".to_owned())]);
    for (name, _) in BUILTIN {
        let p = Profile::builtin(name).unwrap().unwrap();
        let settings: Vec<(String, String)> = p
            .settings
            .keys()
            .map(|k| {
                let v = if k == "shared_secret" {
                    "c2VjcmV0".to_owned()
                } else if k == "auth" {
                    // `generic`: an auth scheme that uses its other settings.
                    "basic".to_owned()
                } else {
                    format!("{k}-value")
                };
                (k.clone(), v)
            })
            .collect();
        let settings: Vec<(&str, &str)> = settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // `generic` has no URL of its own: the gateway's endpoint is configured.
        let url = (*name == "generic").then_some("https://gateway.example/charge");
        let cfg =
            ProfileConfig::with_settings(p, ProcessorEnvironment::Test, url, &settings).unwrap();
        assert_eq!(cfg.base_url.scheme(), "https", "{name}");
        let proc =
            ProfileProcessor::new(cfg, Duration::from_secs(1), Duration::from_secs(1)).unwrap();
        let (m, a) = (card(), usd());
        let built = proc
            .build(&request(&m, &a, &params), Mode::Send)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let body = String::from_utf8(built.body.to_vec()).unwrap();
        assert!(body.contains(PAN), "{name}: {body}");
        let masked = proc.build(&request(&m, &a, &params), Mode::Masked).unwrap();
        let masked_body = String::from_utf8(masked.body.to_vec()).unwrap();
        assert!(!masked_body.contains(PAN), "{name}: {masked_body}");
        assert!(!masked_body.contains("737"), "{name}: {masked_body}");
        // Bank debits: supported where the processor documents TEL, refused cleanly elsewhere.
        let b = bank();
        let bank_built = proc.build(&request(&b, &a, &params), Mode::Send);
        match *name {
            "authorizenet" | "nmi" | "cybersource" => {
                let body = String::from_utf8(bank_built.unwrap().body.to_vec()).unwrap();
                assert!(
                    body.contains("123456789") && body.contains("TEL"),
                    "{name}: {body}"
                );
            }
            "generic" => {
                let body = String::from_utf8(bank_built.unwrap().body.to_vec()).unwrap();
                assert!(body.contains("\"bankaccountnumber\""), "{name}: {body}");
            }
            _ => assert!(bank_built.unwrap_err().contains("cards only"), "{name}"),
        }
    }
}

#[test]
fn recovery_operations_go_with_their_strategy() {
    let base = r#"
name = "t"
[urls]
test = "https://t.example"
live = "https://t.example"
[operations.sale]
path = "/pay"
body = '{}'
[operations.sale.reply]
approved = "reply.ok"
charge_id = "reply.id"
decline_code = "reply.code"
"#;
    let lookup = r#"
[operations.lookup]
path = "/query"
body = '{"ref": {{ transaction_id }}}'
[operations.lookup.reply]
format = "xml"
found = "reply.r.t is mapping"
not_found = "reply.r == ''"
record = "r.t"
[operations.lookup.reply.attempt]
approved = "reply.ok"
charge_id = "reply.id"
decline_code = "reply.code"
"#;
    let reversal = r#"
[operations.reversal]
path = "/void"
not_before_seconds = 60
body = '{"ref": {{ idempotency_key }}}'
[operations.reversal.reply]
reversed = "reply.status == 'VOIDED'"
"#;
    let strategy = |s: &str| format!("[idempotency]\nstrategy = \"{s}\"\n");
    let parse = |text: String| {
        Profile::parse(&text, "t")
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let err = parse(format!("{base}{}", strategy("lookup"))).unwrap_err();
    assert!(err.contains("needs [operations.lookup]"), "{err}");
    let err = parse(format!("{base}{}", strategy("reversal"))).unwrap_err();
    assert!(err.contains("needs [operations.reversal]"), "{err}");
    let err = parse(format!("{base}{}{lookup}", strategy("none"))).unwrap_err();
    assert!(
        err.contains("only goes with idempotency strategy `lookup`"),
        "{err}"
    );
    let err = parse(format!("{base}{}{reversal}", strategy("lookup"))).unwrap_err();
    assert!(err.contains("needs [operations.lookup]"), "{err}");
    parse(format!("{base}{}{lookup}", strategy("lookup"))).unwrap();
    parse(format!("{base}{}{reversal}", strategy("reversal"))).unwrap();
    // Expressions and templates compile at load, named.
    let broken = lookup.replace("reply.r.t is mapping", "reply.r.t is (");
    let err = parse(format!("{base}{}{broken}", strategy("lookup"))).unwrap_err();
    assert!(err.contains("operations.lookup.reply.found"), "{err}");
    let broken = reversal.replace("{{ idempotency_key }}", "{{ idempotency_key | }}");
    let err = parse(format!("{base}{}{broken}", strategy("reversal"))).unwrap_err();
    assert!(err.contains("template operations.reversal.body"), "{err}");
    let p = Profile::parse(&format!("{base}{}{reversal}", strategy("reversal")), "t").unwrap();
    let proc = processor_without_settings(p);
    assert_eq!(proc.recovery_delay(), Duration::from_secs(60));
}

fn processor_without_settings(p: Profile) -> ProfileProcessor {
    let cfg = ProfileConfig::with_settings(p, ProcessorEnvironment::Test, None, &[]).unwrap();
    ProfileProcessor::new(cfg, Duration::from_secs(1), Duration::from_secs(1)).unwrap()
}

#[test]
fn builtin_lookup_and_reversal_requests_carry_payvaults_reference() {
    let params = BTreeMap::new();
    let (m, a) = (card(), usd());
    let req = request(&m, &a, &params);

    let nmi = Profile::builtin("nmi").unwrap().unwrap();
    let cfg = ProfileConfig::with_settings(
        nmi,
        ProcessorEnvironment::Test,
        None,
        &[("security_key", "k-1")],
    )
    .unwrap();
    let nmi = ProfileProcessor::new(cfg, Duration::from_secs(1), Duration::from_secs(1)).unwrap();
    let op = nmi.cfg.profile.lookup.as_ref().unwrap();
    let built = nmi.build_recovery(&req, Mode::Send, op).unwrap();
    assert_eq!(built.url.path(), "/api/query.php");
    let fields: BTreeMap<String, String> =
        form_urlencoded::parse(&built.body).into_owned().collect();
    assert_eq!(
        fields,
        BTreeMap::from([
            ("security_key".to_owned(), "k-1".to_owned()),
            (
                "order_id".to_owned(),
                "72500aba-328c-445c-a12e-da5700e10b17".to_owned()
            ),
        ])
    );

    let cs = Profile::builtin("cybersource").unwrap().unwrap();
    let cfg = ProfileConfig::with_settings(
        cs,
        ProcessorEnvironment::Test,
        None,
        &[
            ("merchant_id", "m"),
            ("key_id", "k"),
            ("shared_secret", "c2VjcmV0"),
        ],
    )
    .unwrap();
    let cs = ProfileProcessor::new(cfg, Duration::from_secs(1), Duration::from_secs(1)).unwrap();
    assert_eq!(cs.recovery_delay(), Duration::from_secs(60));
    let op = cs.cfg.profile.reversal.as_ref().unwrap();
    let built = cs.build_recovery(&req, Mode::Send, op).unwrap();
    assert_eq!(built.url.path(), "/pts/v2/voids");
    let body: serde_json::Value = serde_json::from_slice(&built.body).unwrap();
    assert_eq!(
        body["clientReferenceInformation"]["transactionId"],
        "idem-1"
    );
    assert!(!body.to_string().contains(PAN));
    let header = |n: &str| {
        built
            .headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert!(header("digest").starts_with("SHA-256="));
    assert!(header("signature").contains("keyid=\"k\""));
}

#[test]
fn replies_may_be_xml_read_like_json() {
    let (s, env) = spec(
        "xml",
        "reply.r.status == 'ok'",
        "reply.r.id",
        "reply.r.code if reply.r.status == 'declined'",
    );
    let ok = reply::read(
        &s,
        &env,
        200,
        b"\xEF\xBB\xBF<?xml version=\"1.0\"?><r><status>ok</status><id>ch_9</id></r>",
        &[],
    )
    .unwrap();
    assert_eq!(ok.charge_id.as_deref(), Some("ch_9"));
    let declined = reply::read(
        &s,
        &env,
        200,
        b"<r><status>declined</status><code>05</code><msg>card 4111111111111111</msg></r>",
        &[PAN],
    )
    .unwrap();
    assert_eq!(declined.error_code.as_deref(), Some("05"));
    assert!(matches!(
        reply::read(&s, &env, 200, b"<r><status>ok</r>", &[]),
        Err(ProcessorError::BadResponse(_))
    ));
}

/// The built-in `generic` profile's reply spec and expression environment.
fn generic_reply() -> Profile {
    Profile::builtin("generic").unwrap().unwrap()
}

fn read_generic(status: u16, body: &[u8]) -> Result<ProcessorReply, ProcessorError> {
    let p = generic_reply();
    reply::read(&p.reply, &p.reply_env, status, body, &[PAN, "737"])
}

#[test]
fn generic_reads_twilio_approvals_and_declines() {
    let ok = read_generic(
        200,
        br#"{"charge_id":"ch_1","error_code":null,"error_message":null,"parameters":{"auth_code":"A1","n":7},"network_transaction_id":"123456789012345"}"#,
    )
    .unwrap();
    assert!(ok.approved());
    assert_eq!(ok.charge_id.as_deref(), Some("ch_1"));
    assert_eq!(
        serde_json::Value::Object(ok.parameters),
        serde_json::json!({"auth_code": "A1", "n": "7"})
    );
    assert_eq!(
        ok.network_transaction_id.as_deref(),
        Some("123456789012345")
    );
    let declined = read_generic(
        200,
        br#"{"charge_id":null,"error_code":"card_declined","error_message":"declined 4111 1111-1111.1111","parameters":{"x":"1","echo":"4111.1111.1111.1111"}}"#,
    )
    .unwrap();
    assert!(!declined.approved());
    assert_eq!(declined.error_code.as_deref(), Some("card_declined"));
    assert_eq!(
        declined.error_message.as_deref(),
        Some("declined [redacted]")
    );
    assert_eq!(declined.parameters["x"], "1");
    assert_eq!(declined.parameters["echo"], "[redacted]");
    // Charge ids lose only a full card number, not a short code equal to the CVV.
    let id = read_generic(200, br#"{"charge_id":"ch_737"}"#).unwrap();
    assert_eq!(id.charge_id.as_deref(), Some("ch_737"));
    let id = read_generic(200, br#"{"charge_id":"ch_4111-1111-1111-1111"}"#).unwrap();
    assert_eq!(id.charge_id.as_deref(), Some("ch_[redacted]"));
    // A decline wins over a stray charge id.
    let both = read_generic(200, br#"{"charge_id":"ch_2","error_code":"do_not_honor"}"#).unwrap();
    assert_eq!(both.charge_id, None);
    assert_eq!(both.error_code.as_deref(), Some("do_not_honor"));
}

#[test]
fn generic_refuses_answers_without_twilios_keys() {
    for body in [
        &b"<html>"[..],
        b"[]",
        b"{}",
        br#"{"charge_id":null}"#,
        br#"{"charge_id":42}"#,
        br#"{"error_code":"no_charge_id_key"}"#,
        br#"{"charge_id":null,"error_code":42}"#,
    ] {
        assert!(
            matches!(read_generic(200, body), Err(ProcessorError::BadResponse(_))),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn refusals_are_definite_failures_not_unknown_outcomes() {
    // 401/403 by default, whatever the body (Checkout.com's 401 has none).
    for (status, body) in [(401, &b""[..]), (403, b"<html>forbidden</html>")] {
        let r = read_generic(status, body).unwrap();
        assert_eq!(r.error_code.as_deref(), Some(AUTH_FAILED), "{status}");
        assert!(r.charge_id.is_none());
        let m = r.error_message.unwrap();
        assert!(
            m.contains(&format!("HTTP {status}")) && m.contains("credentials"),
            "{m}"
        );
    }
    // The generic profile declares other 4xx without a Twilio decline a rejection, keeping the
    // processor's words (scrubbed); 409 stays unknown; a 4xx decline is a decline.
    let r = read_generic(
        400,
        br#"{"charge_id":null,"error_message":"bad card 4111111111111111"}"#,
    )
    .unwrap();
    assert_eq!(r.error_code.as_deref(), Some(REJECTED));
    let m = r.error_message.unwrap();
    assert!(
        m.contains("HTTP 400") && m.contains("bad card [redacted]"),
        "{m}"
    );
    assert!(!m.contains(PAN));
    assert!(matches!(
        read_generic(409, b"conflict"),
        Err(ProcessorError::BadResponse(_))
    ));
    let d = read_generic(
        402,
        br#"{"charge_id":null,"error_code":"insufficient_funds"}"#,
    )
    .unwrap();
    assert_eq!(d.error_code.as_deref(), Some("insufficient_funds"));
    // A profile that says nothing about refusals: 400 is read by its expressions as before.
    let (s, env) = spec("json", "reply.status == 'ok'", "reply.id", "reply.code");
    let r = reply::read(&s, &env, 400, br#"{"code":"E1"}"#, &[]).unwrap();
    assert_eq!(r.error_code.as_deref(), Some("E1"));
    let r = reply::read(&s, &env, 401, br#"{"code":"E1"}"#, &[]).unwrap();
    assert_eq!(r.error_code.as_deref(), Some(AUTH_FAILED));
}
