//! Fake CyberSource REST payments (`processors.md` §7).
//!
//! Checks, on `POST /pts/v2/payments` (§7.1):
//! - HTTP Signature authentication, verified for real (§7.1): `v-c-merchant-id` equal to
//!   [`MERCHANT_ID`]; `Date` in RFC 1123 form; `Digest: SHA-256=<base64(SHA-256(body))>` over the
//!   exact body bytes received; `Signature: keyid="…", algorithm="HmacSHA256", headers="…",
//!   signature="…"` with `keyid` [`KEY_ID`], a `headers` list naming host, date, request-target
//!   (spelled `request-target` or `(request-target)`; the label in the signing string must be the
//!   one in the list), digest and v-c-merchant-id, and a signature equal to
//!   base64(HMAC-SHA256(base64-decoded [`SHARED_SECRET`], signing string)), where the signing
//!   string is `name: value` lines in the listed order joined by `\n`, `host` being the Host
//!   header received and request-target `post /pts/v2/payments`. Any failure is a 401.
//!   How old a `Date` may be is not in processors.md, so the fake does not check freshness
//!   (lenient);
//! - `Content-Type: application/json` (charset parameter allowed) and a JSON object (§7.1);
//! - `orderInformation.amountDetails.totalAmount` a major-unit decimal string with no more
//!   decimals than `currency`'s exponent; `currency` required (§7.2);
//! - card: Luhn-valid `paymentInformation.card.number`, `expirationMonth` `"MM"` (leading zero
//!   required), `expirationYear` `"YYYY"`, not expired, `securityCode` 3–4 digits when present
//!   (§7.2); `processingInformation.commerceIndicator` `"moto"` on a keyed customer-initiated
//!   sale (§7.2; requiring it is the fake's check);
//! - eCheck (`paymentInformation.paymentType.name = "CHECK"`, §7.3): `bank.account.type`
//!   C|S|X|G, numeric `bank.account.number`, ABA-valid `bank.routingNumber`,
//!   `orderInformation.billTo.firstName`/`lastName`, and
//!   `processingInformation.bankTransferOptions.secCode = "TEL"`;
//! - MIT (`…authorizationOptions.initiator.type = "merchant"`, §7.4): `storedCredentialUsed`
//!   true, `initiator.merchantInitiatedTransaction.previousTransactionId` non-empty (the
//!   `previousTransactionID` spelling is accepted too: case handling is **unconfirmed**), the
//!   vendor nesting under `initiator` (PRISM's sibling placement is rejected), commerceIndicator
//!   `recurring`, `install` or `internet`, and no `securityCode`. `reason` values beyond 1–5 are
//!   **unconfirmed**, so any one- or two-digit value passes;
//! - full `billTo` may be required without "relaxed requirements" (§7.2); the fake assumes relaxed
//!   requirements and requires no address (lenient).
//!
//! No idempotency header is documented (§7.5); none is honoured.
//!
//! Answers (§7.6): 201 `{"id","status":"AUTHORIZED",…,"processorInformation":{"transactionId",
//! "networkTransactionId",…}}`; declines 201 `status:"DECLINED"` with `errorInformation`
//! (`INVALID_ACCOUNT` for card 42423482938483873 and for ACH account 550111 / routing 121107882,
//! §7.7); 400 `status:"INVALID_REQUEST"` with `reason` and `details[].field`; 401; 502
//! `SERVER_ERROR`. The 400/401 body layouts are CyberSource's public ones, not processors.md's.
//!
//! `clientReferenceInformation.transactionId` (the merchant transaction id) must be unique
//! ("for 180 days", CyberSource's timeout-reversal page): a sale repeating one is refused with
//! 400 `DUPLICATE_REQUEST` (the reason name is the fake's choice).
//!
//! Timeout void, `POST /pts/v2/voids` (§7.5; CyberSource's "Timeout Void" and
//! "Merchant-Initiated Reversals and Voids" pages: a sale is undone by a void keyed on the
//! merchant transaction id), signed like a payment: `clientReferenceInformation.transactionId`
//! required. An approved sale with that id is voided: 201 `{"id","status":"VOIDED",
//! "clientReferenceInformation":{…},"voidAmountDetails":{"voidAmount","currency"}}`, and recorded
//! in [`super::Record::undone`]. A declined sale, or none at all, answers `VOIDED` with
//! `voidAmountDetails.originalTransactionAmount` and `processorInformation.responseCode` (the
//! vendor: "If the original transaction failed, the reply message for the reversal or void
//! request includes" those; that a transaction that never arrived is answered the same way is
//! **unconfirmed**). A second void of the same id answers `VOIDED` again (**unconfirmed**).
//!
//! Timeout authorization reversal, `POST /pts/v2/reversals` (§7.5): the same, with
//! `reversalInformation.amountDetails.totalAmount` required, status `REVERSED`; a captured sale
//! is refused with 400 `INVALID_REQUEST` (the vendor: timeout reversals are "supported only for
//! authorizations that have not been captured and settled").
//!
//! The vendor asks for 60 s between the original request and its timeout reversal; the fake does
//! not check timing (lenient).

use std::collections::BTreeMap;
use std::sync::Mutex;

use axum::routing::post;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{
    aba_ok, dotted, entry, expired, exponent, flatten_json, luhn_ok, major_to_minor, month2, year4,
    Cx, Fake, Incoming, Processor, Reply, Sale,
};

pub const PATH: &str = "/pts/v2/payments";
pub const MERCHANT_ID: &str = "payvault_fake_mid";
pub const KEY_ID: &str = "08c94330-f618-42a3-b09d-e1e43be5efda";
/// base64 of the 32-byte shared secret.
pub const SHARED_SECRET: &str = "yBJxy6LjM2TmcPGu+GaJrHtkke25fPpUX+UY6/L/1tE=";
/// Card answering `INVALID_ACCOUNT` (§7.7).
pub const DECLINE_CARD: &str = "42423482938483873";
pub const DECLINE_ACCOUNT: &str = "550111";
pub const DECLINE_ROUTING: &str = "121107882";

pub const VOID_PATH: &str = "/pts/v2/voids";
pub const REVERSAL_PATH: &str = "/pts/v2/reversals";

/// A sale as the fake keeps it, by merchant transaction id.
struct Txn {
    merchant_transaction_id: String,
    id: String,
    amount: String,
    currency: String,
    approved: bool,
    captured: bool,
}

#[derive(Default)]
pub struct CyberSource {
    txns: Mutex<Vec<Txn>>,
}

/// Starts the fake; the endpoint is `{base_url}/pts/v2/payments`.
pub async fn start() -> Fake {
    Fake::start(CyberSource::default(), |r| {
        r.route(PATH, post(entry))
            .route(VOID_PATH, post(entry))
            .route(REVERSAL_PATH, post(entry))
    })
    .await
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn unauthorized(why: &str) -> Reply {
    // CyberSource's 401 body is `{"response":{"rmsg":"Authentication Failed"}}`; the fake adds
    // why, so a failing test names the broken part of the signature.
    Reply::json(
        401,
        &json!({"response": {"rmsg": format!("Authentication Failed: {why}")}}),
    )
}

fn invalid_request(reason: &str, field: &str, message: &str) -> Reply {
    Reply::json(
        400,
        &json!({"submitTimeUtc": now(), "status": "INVALID_REQUEST", "reason": reason,
                "message": message, "details": [{"field": field, "reason": reason}]}),
    )
}

fn missing(field: &str) -> Reply {
    invalid_request(
        "MISSING_FIELD",
        field,
        "Declined - The request is missing one or more fields",
    )
}

fn bad(field: &str) -> Reply {
    invalid_request(
        "INVALID_DATA",
        field,
        "Declined - One or more fields in the request contains invalid data",
    )
}

/// Parses `k="v", k2="v2"` into pairs.
fn signature_params(header: &str) -> BTreeMap<String, String> {
    header
        .split(',')
        .filter_map(|part| {
            let (k, v) = part.trim().split_once('=')?;
            Some((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        })
        .collect()
}

/// Verifies Digest and Signature (§7.1); the error names what failed.
fn verify(req: &Incoming) -> Result<(), String> {
    let merchant = req
        .header("v-c-merchant-id")
        .ok_or("no v-c-merchant-id header")?;
    if merchant != MERCHANT_ID {
        return Err("unknown v-c-merchant-id".into());
    }
    let date = req.header("date").ok_or("no Date header")?;
    chrono::DateTime::parse_from_rfc2822(date)
        .map_err(|_| format!("Date {date:?} is not an RFC 1123 date"))?;
    let host = req.header("host").ok_or("no Host header")?;
    let digest = req.header("digest").ok_or("no Digest header")?;
    let expected_digest = format!(
        "SHA-256={}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&req.body))
    );
    if digest != expected_digest {
        return Err("Digest does not match the SHA-256 of the body".into());
    }
    let params = signature_params(req.header("signature").ok_or("no Signature header")?);
    let param = |k: &str| {
        params
            .get(k)
            .map(String::as_str)
            .ok_or(format!("Signature has no {k}"))
    };
    if param("keyid")? != KEY_ID {
        return Err("unknown keyid".into());
    }
    if param("algorithm")? != "HmacSHA256" {
        return Err("algorithm must be HmacSHA256".into());
    }
    let names: Vec<&str> = param("headers")?.split(' ').collect();
    for required in ["host", "date", "digest", "v-c-merchant-id"] {
        if !names.contains(&required) {
            return Err(format!("headers does not list {required}"));
        }
    }
    if !names.contains(&"request-target") && !names.contains(&"(request-target)") {
        return Err("headers does not list request-target".into());
    }
    let lines: Vec<String> = names
        .iter()
        .map(|name| match *name {
            "host" => Ok(format!("host: {host}")),
            "date" => Ok(format!("date: {date}")),
            "digest" => Ok(format!("digest: {digest}")),
            "v-c-merchant-id" => Ok(format!("v-c-merchant-id: {merchant}")),
            "request-target" | "(request-target)" => Ok(format!("{name}: post {}", req.path)),
            other => req
                .header(other)
                .map(|v| format!("{other}: {v}"))
                .ok_or(format!("headers lists {other}, which was not sent")),
        })
        .collect::<Result<_, String>>()?;
    let signing_string = lines.join("\n");
    let secret = base64::engine::general_purpose::STANDARD
        .decode(SHARED_SECRET)
        .map_err(|e| e.to_string())?;
    let sent = base64::engine::general_purpose::STANDARD
        .decode(param("signature")?)
        .map_err(|_| "signature is not base64".to_owned())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret).map_err(|e| e.to_string())?;
    mac.update(signing_string.as_bytes());
    mac.verify_slice(&sent)
        .map_err(|_| "signature does not match".to_owned())
}

impl Processor for CyberSource {
    fn fields(&self, req: &Incoming) -> BTreeMap<String, String> {
        serde_json::from_slice::<Value>(&req.body)
            .map(|v| flatten_json(&v))
            .unwrap_or_default()
    }

    fn handle(&self, req: &Incoming, cx: &mut Cx<'_>) -> Reply {
        if req.path != PATH {
            return match self.undo(req, cx) {
                Ok(r) | Err(r) => r,
            };
        }
        match check(req, cx, &self.txns) {
            Ok(r) | Err(r) => r,
        }
    }

    fn rejection(&self) -> Reply {
        // §7.6: HTTP 400 INVALID_REQUEST.
        invalid_request(
            "MISSING_FIELD",
            "orderInformation.amountDetails.totalAmount",
            "Declined - The request is missing one or more fields",
        )
    }

    fn server_error(&self) -> Reply {
        Reply::json(
            502,
            &json!({"submitTimeUtc": now(), "status": "SERVER_ERROR", "reason": "SYSTEM_ERROR",
                    "message": "Error - General system failure."}),
        )
    }
}

fn declined(id: &str, code: &Value, reason: &str, message: &str) -> Reply {
    Reply::json(
        201,
        &json!({"id": id, "submitTimeUtc": now(), "status": "DECLINED",
                "clientReferenceInformation": {"code": code},
                "errorInformation": {"reason": reason, "message": message}}),
    )
}

impl CyberSource {
    /// A timeout void or timeout authorization reversal, by merchant transaction id.
    fn undo(&self, req: &Incoming, cx: &mut Cx<'_>) -> Result<Reply, Reply> {
        verify(req).map_err(|why| unauthorized(&why))?;
        if !req
            .header("content-type")
            .unwrap_or("")
            .starts_with("application/json")
        {
            return Err(bad("Content-Type"));
        }
        let body: Value = serde_json::from_slice(&req.body)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| {
                invalid_request(
                    "INVALID_DATA",
                    "",
                    "Declined - The request body is not valid JSON",
                )
            })?;
        let reversal = req.path == REVERSAL_PATH;
        let merchant_id = body
            .pointer("/clientReferenceInformation/transactionId")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| missing("clientReferenceInformation.transactionId"))?;
        if reversal
            && body
                .pointer("/reversalInformation/amountDetails/totalAmount")
                .and_then(Value::as_str)
                .is_none()
        {
            return Err(missing("reversalInformation.amountDetails.totalAmount"));
        }
        cx.validated = true;
        let txns = self.txns.lock().unwrap();
        let txn = txns
            .iter()
            .find(|t| t.merchant_transaction_id == merchant_id);
        if reversal && txn.is_some_and(|t| t.captured) {
            return Err(invalid_request(
                "INVALID_REQUEST",
                "clientReferenceInformation.transactionId",
                "Declined - a timeout reversal applies to an authorization that was not captured",
            ));
        }
        let n = cx.next_number();
        let id = format!("{:022}", 6_750_124_119_000_000_000_000_u128 + u128::from(n));
        let status = if reversal { "REVERSED" } else { "VOIDED" };
        let amounts = if reversal {
            "reversalAmountDetails"
        } else {
            "voidAmountDetails"
        };
        let mut answer = json!({"id": id, "submitTimeUtc": now(), "status": status,
            "clientReferenceInformation": {
                "code": body.pointer("/clientReferenceInformation/code").cloned().unwrap_or(Value::Null),
                "transactionId": merchant_id}});
        match txn {
            Some(t) if t.approved => {
                if !cx.record.undone.contains(&t.id) {
                    cx.record.undone.push(t.id.clone());
                }
                let amount = if reversal {
                    "reversedAmount"
                } else {
                    "voidAmount"
                };
                answer[amounts] = json!({amount: t.amount, "currency": t.currency});
            }
            // The original failed (declined), or never arrived: nothing stands charged.
            other => {
                answer[amounts] = json!({"originalTransactionAmount":
                    other.map_or("0.00".to_owned(), |t| t.amount.clone())});
                answer["processorInformation"] = json!({"responseCode": "000"});
            }
        }
        Ok(Reply::json(201, &answer))
    }
}

fn check(req: &Incoming, cx: &mut Cx<'_>, txns: &Mutex<Vec<Txn>>) -> Result<Reply, Reply> {
    verify(req).map_err(|why| unauthorized(&why))?;
    let content_type = req.header("content-type").unwrap_or("");
    if !content_type.starts_with("application/json") {
        return Err(bad("Content-Type"));
    }
    let body: Value = serde_json::from_slice(&req.body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| {
            invalid_request(
                "INVALID_DATA",
                "",
                "Declined - The request body is not valid JSON",
            )
        })?;
    let s = |ptr: &str| body.pointer(ptr).and_then(Value::as_str);

    let amount_field = "orderInformation.amountDetails.totalAmount";
    let amount =
        s("/orderInformation/amountDetails/totalAmount").ok_or_else(|| missing(amount_field))?;
    let currency = s("/orderInformation/amountDetails/currency")
        .ok_or_else(|| missing("orderInformation.amountDetails.currency"))?;
    let exp = exponent(currency).ok_or_else(|| bad("orderInformation.amountDetails.currency"))?;
    major_to_minor(amount, exp).map_err(|_| bad(amount_field))?;

    const INITIATOR: &str = "/processingInformation/authorizationOptions/initiator";
    let initiator_type = s(&format!("{INITIATOR}/type"));
    if !matches!(initiator_type, None | Some("customer" | "merchant")) {
        return Err(bad(
            "processingInformation.authorizationOptions.initiator.type",
        ));
    }
    let mit = initiator_type == Some("merchant");
    let indicator = s("/processingInformation/commerceIndicator");
    if !matches!(
        indicator,
        None | Some("internet" | "moto" | "recurring" | "install" | "retail")
    ) {
        return Err(bad("processingInformation.commerceIndicator"));
    }
    if mit {
        if body.pointer(&format!("{INITIATOR}/storedCredentialUsed")) != Some(&json!(true)) {
            return Err(missing(
                "processingInformation.authorizationOptions.initiator.storedCredentialUsed",
            ));
        }
        if body
            .pointer("/processingInformation/authorizationOptions/merchantInitiatedTransaction")
            .is_some()
        {
            // PRISM's sibling placement (§7.4 "Nesting"); the vendor model nests it in initiator.
            return Err(bad(
                "processingInformation.authorizationOptions.merchantInitiatedTransaction",
            ));
        }
        let mit_info = format!("{INITIATOR}/merchantInitiatedTransaction");
        let previous = s(&format!("{mit_info}/previousTransactionId"))
            .or_else(|| s(&format!("{mit_info}/previousTransactionID")))
            .unwrap_or("");
        if previous.is_empty() {
            return Err(missing("processingInformation.authorizationOptions.initiator.merchantInitiatedTransaction.previousTransactionId"));
        }
        if let Some(reason) = body.pointer(&format!("{mit_info}/reason")) {
            let reason = reason.as_str().unwrap_or("");
            if !(1..=2).contains(&reason.len()) || !reason.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("processingInformation.authorizationOptions.initiator.merchantInitiatedTransaction.reason"));
            }
        }
        if !matches!(indicator, Some("recurring" | "install" | "internet")) {
            return Err(bad("processingInformation.commerceIndicator"));
        }
    }

    let code = body
        .pointer("/clientReferenceInformation/code")
        .cloned()
        .unwrap_or(Value::Null);
    let merchant_transaction_id = s("/clientReferenceInformation/transactionId")
        .unwrap_or("")
        .to_owned();
    if !merchant_transaction_id.is_empty()
        && txns
            .lock()
            .unwrap()
            .iter()
            .any(|t| t.merchant_transaction_id == merchant_transaction_id)
    {
        return Err(invalid_request(
            "DUPLICATE_REQUEST",
            "clientReferenceInformation.transactionId",
            "Declined - The merchant transaction id was used before",
        ));
    }
    let n = cx.next_number();
    let id = format!("{:022}", 6_750_124_114_786_780_000_000_u128 + u128::from(n));
    let check = s("/paymentInformation/paymentType/name") == Some("CHECK");
    let mut pan = String::new();
    let mut decline = false;
    if check {
        let account_type = s("/paymentInformation/bank/account/type");
        if !matches!(account_type, Some("C" | "S" | "X" | "G")) {
            return Err(bad("paymentInformation.bank.account.type"));
        }
        let account = s("/paymentInformation/bank/account/number")
            .ok_or_else(|| missing("paymentInformation.bank.account.number"))?;
        if account.is_empty() || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("paymentInformation.bank.account.number"));
        }
        let routing = s("/paymentInformation/bank/routingNumber")
            .ok_or_else(|| missing("paymentInformation.bank.routingNumber"))?;
        if !aba_ok(routing) {
            return Err(bad("paymentInformation.bank.routingNumber"));
        }
        for name in ["firstName", "lastName"] {
            if s(&format!("/orderInformation/billTo/{name}"))
                .unwrap_or("")
                .is_empty()
            {
                return Err(missing(&format!("orderInformation.billTo.{name}")));
            }
        }
        match s("/processingInformation/bankTransferOptions/secCode") {
            Some("TEL") => {}
            None => return Err(missing("processingInformation.bankTransferOptions.secCode")),
            // PPD/WEB/CCD are valid codes; TEL is required by the fake (payvault's ACH is by phone).
            Some(_) => return Err(bad("processingInformation.bankTransferOptions.secCode")),
        }
        decline = account == DECLINE_ACCOUNT && routing == DECLINE_ROUTING;
    } else {
        let card = "/paymentInformation/card";
        pan = s(&format!("{card}/number"))
            .ok_or_else(|| missing("paymentInformation.card.number"))?
            .to_owned();
        if pan == DECLINE_CARD {
            decline = true;
        } else if !luhn_ok(&pan) {
            return Err(bad("paymentInformation.card.number"));
        }
        let month = s(&format!("{card}/expirationMonth"))
            .ok_or_else(|| missing("paymentInformation.card.expirationMonth"))?;
        let month = month2(month).ok_or_else(|| bad("paymentInformation.card.expirationMonth"))?;
        let year = s(&format!("{card}/expirationYear"))
            .ok_or_else(|| missing("paymentInformation.card.expirationYear"))?;
        let year = year4(year).ok_or_else(|| bad("paymentInformation.card.expirationYear"))?;
        if expired(month, year) {
            return Ok(declined(
                &id,
                &code,
                "EXPIRED_CARD",
                "Decline - Expired card.",
            ));
        }
        if let Some(cvv) = body.pointer(&format!("{card}/securityCode")) {
            let cvv = cvv.as_str().unwrap_or("");
            if mit {
                // The fake's check: §7.4 sends no securityCode on an MIT.
                return Err(bad("paymentInformation.card.securityCode"));
            }
            if !(3..=4).contains(&cvv.len()) || !cvv.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("paymentInformation.card.securityCode"));
            }
        }
        if !mit && indicator != Some("moto") {
            return Err(bad("processingInformation.commerceIndicator"));
        }
    }
    cx.validated = true;
    if cx.echo_pan && !pan.is_empty() {
        return Ok(declined(
            &id,
            &code,
            "PROCESSOR_DECLINED",
            &format!("Decline - General decline of the card {}", dotted(&pan)),
        ));
    }
    let ntid = format!("{:015}", 123_456_789_000_000_u64 + n);
    txns.lock().unwrap().push(Txn {
        merchant_transaction_id,
        id: id.clone(),
        amount: amount.to_owned(),
        currency: currency.to_owned(),
        approved: !decline,
        captured: body.pointer("/processingInformation/capture") == Some(&json!(true)) || check,
    });
    cx.sale(Sale {
        id: id.clone(),
        approved: !decline,
        amount: amount.to_owned(),
        network_transaction_id: (!decline && !check).then(|| ntid.clone()),
        merchant_initiated: mit,
    });
    if decline {
        return Ok(declined(
            &id,
            &code,
            "INVALID_ACCOUNT",
            "Decline - Invalid account number",
        ));
    }
    let mut processor =
        json!({"approvalCode": format!("{:06}", 888_000 + n % 1000), "responseCode": "100"});
    if !check {
        processor["transactionId"] = json!(ntid);
        processor["networkTransactionId"] = json!(ntid);
    }
    Ok(Reply::json(
        201,
        &json!({
            "id": id, "submitTimeUtc": now(), "status": if check { "PENDING" } else { "AUTHORIZED" },
            "clientReferenceInformation": {"code": code},
            "orderInformation": {"amountDetails": {"authorizedAmount": amount, "currency": currency}},
            "processorInformation": processor,
        }),
    ))
}
