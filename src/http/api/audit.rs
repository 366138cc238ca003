//! `GET /v1/audit/events`: the audit log, filtered and paginated.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;

use crate::audit::log::{AuditFilter, ListError};
use crate::audit::{AuditEvent, AuditEventView};
use crate::auth::Scope;
use crate::domain::DEFAULT_TENANT;
use crate::http::error::{ApiError, ErrorBody, Kind};
use crate::http::{AppState, Caller};

/// Query string of `GET /v1/audit/events`. Every value is read as text, an empty one as absent,
/// and parsed in [`AuditQuery::parse`]; the document declares the types they must parse to.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Events at or after this time: RFC 3339, or a date (`YYYY-MM-DD`, midnight UTC).
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    #[serde(default, deserialize_with = "empty_as_none")]
    since: Option<String>,
    /// Events before this time: RFC 3339, or a date (`YYYY-MM-DD`, midnight UTC).
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    #[serde(default, deserialize_with = "empty_as_none")]
    until: Option<String>,
    /// An action, e.g. `tokenize`, `charge`, `token_read`.
    #[param(pattern = "^[^\\x00]*$")]
    #[serde(default, deserialize_with = "empty_as_none")]
    action: Option<String>,
    /// A credential username (`pvc_...`, `pvk_...`), `anonymous` or `system`.
    #[param(pattern = "^[^\\x00]*$")]
    #[serde(default, deserialize_with = "empty_as_none")]
    actor: Option<String>,
    /// A token (`tok_...`).
    #[param(pattern = "^[^\\x00]*$")]
    #[serde(default, deserialize_with = "empty_as_none")]
    token: Option<String>,
    /// A connector `transaction_id` or an API `Idempotency-Key`.
    #[param(pattern = "^[^\\x00]*$")]
    #[serde(default, deserialize_with = "empty_as_none")]
    transaction_id: Option<String>,
    #[param(value_type = Option<AuditOutcome>, inline)]
    #[serde(default, deserialize_with = "empty_as_none")]
    outcome: Option<String>,
    /// Page size.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "empty_as_none")]
    limit: Option<String>,
    /// The `next_cursor` of the previous page (an event id). With a time range, a cursor that
    /// is not one of the caller's events is refused (`invalid_cursor`).
    #[param(value_type = Option<i64>, minimum = 0)]
    #[serde(default, deserialize_with = "empty_as_none")]
    cursor: Option<String>,
}

/// `?limit=` is no `limit`: an empty value counts as absent, as on the connector.
fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value: Option<String> = serde::Deserialize::deserialize(d)?;
    Ok(value.filter(|v| !v.is_empty()))
}

/// Whether the audited request succeeded.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // documentation only: the handler reads the query as text
pub enum AuditOutcome {
    Success,
    Failure,
}

/// A page of audit events: in time order (`occurred_at`, then `id`) for a time range (`since`
/// or `until`) without `token` or `transaction_id`, in `id` order otherwise.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    events: Vec<AuditEventView>,
    /// Pass as `cursor` for the next page; `null` on the last.
    next_cursor: Option<String>,
}

/// Default and largest page sizes.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

#[utoipa::path(
    get, path = "/v1/audit/events", tag = "audit", params(AuditQuery),
    responses((status = 200, description = "The caller's tenant's events (every tenant's with `audit:all`)", body = AuditPage), (status = 400, description = "`invalid_query` or `invalid_cursor`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody), (status = 403, description = "`forbidden`: the `audit:read` scope is missing", body = ErrorBody)),
    security(("basic" = []), ("bearer" = []))
)]
/// `GET /v1/audit/events`: audit events, filtered, with cursor pagination: in id order, or, for a
/// time range (`since` or `until`) without `token` or `transaction_id`, in time order
/// (`occurred_at`, then `id`; events written late with an earlier time, such as those held
/// while an instance was sealed, appear at their time). Requires `audit:read`, and returns only
/// the caller's tenant's events unless the credential also has `audit:all`. The read itself is
/// audited (PCI DSS 10.2.1.3).
pub async fn audit_events(
    State(app): State<AppState>,
    caller: Caller,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    caller.require(&app, Scope::AuditRead, "audit_read").await?;
    let Query(q) = query.map_err(|_| invalid("the query string could not be read".into()))?;
    let (mut filter, after, limit) = q.parse()?;
    // The caller's tenant only, in the query itself, unless the deployment operator's
    // `audit:all` says all (only the default tenant's credentials can hold it).
    let operator =
        caller.principal.has_scope(Scope::AuditAll) && caller.principal.tenant_id == DEFAULT_TENANT;
    if !operator {
        filter.tenant = Some(caller.principal.tenant_id);
    }
    let reader = AuditEvent::by(&caller.principal, &caller.origin, "audit_read");
    let rows = app
        .audit
        .read(reader, &filter, after, limit)
        .await
        .map_err(|e| match e {
            // Unknown, pruned or another tenant's: answered as a cursor that does not parse.
            ListError::UnknownCursor => bad_cursor(),
            ListError::Db(e) => ApiError::internal(&e),
        })?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    Ok(Json(AuditPage {
        events: rows.iter().map(AuditEventView::from).collect(),
        next_cursor,
    }))
}

fn bad_cursor() -> ApiError {
    ApiError::new(
        Kind::BadRequest,
        "invalid_cursor",
        "cursor must be a next_cursor from an earlier page",
    )
}

fn invalid(message: String) -> ApiError {
    ApiError::new(Kind::BadRequest, "invalid_query", message)
}

impl AuditQuery {
    /// The filter, the cursor (events after this id) and the page size.
    fn parse(self) -> Result<(AuditFilter, i64, i64), ApiError> {
        // PostgreSQL text cannot hold NUL, so no event could match (and the read's own audit
        // event could not record the filter): refuse it rather than fail.
        let texts = [
            ("action", &self.action),
            ("actor", &self.actor),
            ("token", &self.token),
            ("transaction_id", &self.transaction_id),
        ];
        if let Some((name, _)) = texts
            .iter()
            .find(|(_, v)| v.as_deref().is_some_and(|v| v.contains('\0')))
        {
            return Err(invalid(format!("{name} must not contain a NUL character")));
        }
        let time = |v: &Option<String>, name: &str| {
            v.as_deref()
                .map(crate::audit::parse_time)
                .transpose()
                .map_err(|e| invalid(format!("{name}: {e}")))
        };
        let outcome = match self.outcome.as_deref() {
            None | Some("success") | Some("failure") => self.outcome.clone(),
            Some(_) => return Err(invalid("outcome must be success or failure".into())),
        };
        let filter = AuditFilter {
            since: time(&self.since, "since")?,
            until: time(&self.until, "until")?,
            action: self.action,
            actor: self.actor,
            token: self.token,
            transaction_id: self.transaction_id,
            outcome,
            tenant: None,
        };
        let limit = match self.limit.as_deref().map(str::parse::<i64>) {
            None => DEFAULT_LIMIT,
            Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
            Some(_) => return Err(invalid(format!("limit must be 1 to {MAX_LIMIT}"))),
        };
        let after = match self.cursor.as_deref().map(str::parse::<i64>) {
            None => 0,
            Some(Ok(n)) if n >= 0 => n,
            Some(_) => return Err(bad_cursor()),
        };
        Ok((filter, after, limit))
    }
}
