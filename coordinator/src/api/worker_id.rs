//! What a worker id may be: the routes that take one (heartbeats, leases, completions,
//! releases) refuse anything else with 400 before touching the state.

use crate::error::ApiError;

/// 1-64 ASCII letters, digits, `-` or `_`.
pub(super) fn check_worker_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::BadRequest(format!("{id:?} is not a worker id")));
    }
    Ok(())
}
