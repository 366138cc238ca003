//! Recovering an earlier attempt whose outcome is unknown: a profile's `[operations.lookup]`
//! asks the processor what became of it, `[operations.reversal]` undoes it.

use super::*;

impl ProfileProcessor {
    /// The lookup or reversal request for the earlier attempt of `req` (`req.idempotency_key`
    /// is that attempt's reference).
    pub(super) fn build_recovery<R>(
        &self,
        req: &ProcessorRequest<'_>,
        mode: Mode,
        op: &RecoveryOp<R>,
    ) -> Result<BuiltRequest, String> {
        let body = format!("operations.{}.body", op.name);
        let name = op.name;
        let recovery = OpRef {
            body: &body,
            method: &op.method,
            path: &op.path,
            encoding: op.encoding,
            headers: &op.headers,
            header_template: &|header| op_header_template(name, header),
            idempotency_header: None,
        };
        self.build_op(req, mode, &recovery)
    }

    /// Builds and sends a lookup or reversal; the status and the parsed answer.
    async fn recover<R>(
        &self,
        req: &ProcessorRequest<'_>,
        op: &RecoveryOp<R>,
        format: ReplyFormat,
    ) -> Result<(u16, serde_json::Value), ProcessorError> {
        let built = self.build_recovery(req, Mode::Send, op).map_err(|reason| {
            tracing::error!(profile = %self.cfg.profile.name, operation = op.name, %reason,
                "the processor profile could not build the request");
            ProcessorError::RecoveryUnavailable
        })?;
        let (status, body) = self.send(built, req.timeout).await?;
        Ok((status, reply::parse_body(format, &body)?))
    }

    /// Asks what became of the earlier attempt (`[operations.lookup]`).
    pub(super) async fn lookup_attempt(
        &self,
        req: &ProcessorRequest<'_>,
    ) -> Result<Lookup, ProcessorError> {
        let profile = &self.cfg.profile;
        let Some(op) = &profile.lookup else {
            return Ok(Lookup::Unsupported);
        };
        let spec = &op.reply;
        let (status, answer) = self.recover(req, op, spec.format).await?;
        let env = &profile.reply_env;
        let ctx = reply::reply_context(status, &answer);
        let holds = |source: &str| -> Result<bool, ProcessorError> {
            env.compile_expression(source)
                .and_then(|e| e.eval(ctx.clone()))
                .map(|v| v.is_true())
                .map_err(|_| ProcessorError::BadResponse("a reply expression failed"))
        };
        match (holds(&spec.found)?, holds(&spec.not_found)?) {
            (true, false) => {
                let record = match &spec.record {
                    Some(path) => reply::at_path(&answer, path)
                        .ok_or(ProcessorError::BadResponse("the lookup record is missing"))?,
                    None => &answer,
                };
                let (pan, cvv, account) = known_values(req.method);
                let known: Vec<&str> = [pan, cvv, account].into_iter().flatten().collect();
                reply::read_value(&spec.attempt, env, status, record, &known).map(Lookup::Found)
            }
            (false, true) => Ok(Lookup::NotFound),
            // An error answer, several matches, or both at once: nothing is known.
            _ => Err(ProcessorError::RecoveryUnavailable),
        }
    }

    /// Undoes the earlier attempt (`[operations.reversal]`).
    pub(super) async fn reverse_attempt(
        &self,
        req: &ProcessorRequest<'_>,
    ) -> Result<Reversal, ProcessorError> {
        let profile = &self.cfg.profile;
        let Some(op) = &profile.reversal else {
            return Ok(Reversal::Unsupported);
        };
        let (status, answer) = self.recover(req, op, op.reply.format).await?;
        let ctx = reply::reply_context(status, &answer);
        let reversed = profile
            .reply_env
            .compile_expression(&op.reply.reversed)
            .and_then(|e| e.eval(ctx))
            .map_err(|_| ProcessorError::BadResponse("a reply expression failed"))?;
        if reversed.is_true() {
            Ok(Reversal::Reversed)
        } else {
            Err(ProcessorError::RecoveryUnavailable)
        }
    }
}
