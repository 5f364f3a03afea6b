//! Error responses: a status and an [`ErrorBody`] with its stable `code`.

use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use vault_key_wire::{ErrorBody, ErrorCode, ERROR_HEADER};

use crate::store::StoreError;

/// An error answer of any route.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// JSON body (boxed: errors travel through many `Result`s and should stay small).
    pub body: Box<ErrorBody>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: Box::new(ErrorBody::new(code, message)),
        }
    }

    /// `400 invalid_request` about one field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> ApiError {
        let mut error = ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, message);
        error.body.field = Some(field.to_owned());
        error
    }

    /// `400 invalid_request`.
    pub fn invalid_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        tracing::error!(%error, "key store failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StoreUnavailable,
            "the key store is unavailable; retry shortly",
        )
    }
}

impl ApiError {
    /// A JSON error answer with the `vault-key-error` header naming its code.
    pub(crate) fn json_response(
        status: StatusCode,
        code: ErrorCode,
        body: &impl serde::Serialize,
    ) -> Response {
        let mut response = (status, Json(body)).into_response();
        response
            .headers_mut()
            .insert(ERROR_HEADER, http::HeaderValue::from_static(code.as_str()));
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        ApiError::json_response(self.status, self.body.code, &*self.body)
    }
}
