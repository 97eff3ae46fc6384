//! Bodies on their way through the hyper path, watched: the client's request body (so that
//! a try it broke is not held against the instance) and the upstream's response body
//! (whose end gives the try its outcome).

use crate::proxy::error;
use crate::tries::{TryFailure, Verdict};
use axum::body::{Body, HttpBody};
use axum::http::StatusCode;
use pake_api_runtime::ApiError;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// How far the client's request body has come, as [`ClientBody`] reports it.
const BODY_READING: u8 = 0;
const BODY_AWAITING_CLIENT: u8 = 1;
const BODY_DONE: u8 = 2;
const BODY_FAILED: u8 = 3;

/// A client's request body on its way to an upstream, watched: reading it failed (the
/// client closed early, sent malformed chunks), or it was waiting for the client when the
/// try ran out of time. Either is the client's doing, not the instance's.
pub(crate) struct ClientBody {
    body: Body,
    state: Arc<std::sync::atomic::AtomicU8>,
}

/// The watching side of a [`ClientBody`].
pub(crate) struct BodyWatch {
    state: Arc<std::sync::atomic::AtomicU8>,
}

impl ClientBody {
    pub(crate) fn watch(body: Body) -> (Body, BodyWatch) {
        let state = Arc::new(std::sync::atomic::AtomicU8::new(BODY_READING));
        (Body::new(ClientBody { body, state: state.clone() }), BodyWatch { state })
    }
}

impl HttpBody for ClientBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(context);
        let state = match &polled {
            std::task::Poll::Pending => BODY_AWAITING_CLIENT,
            std::task::Poll::Ready(None) => BODY_DONE,
            std::task::Poll::Ready(Some(Err(_))) => BODY_FAILED,
            std::task::Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => BODY_DONE,
            std::task::Poll::Ready(Some(Ok(_))) => BODY_READING,
        };
        self.state.store(state, Ordering::Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl BodyWatch {
    /// The answer to a try that failed because of the client's body, if it did.
    pub(crate) fn client_fault(&self, failure: TryFailure) -> Option<ApiError> {
        match (self.state.load(Ordering::Relaxed), failure) {
            (BODY_FAILED, _) => Some(error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "the request body ended before its announced length or was malformed".into(),
            )),
            (BODY_AWAITING_CLIENT, TryFailure::Timeout) => Some(error(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body did not arrive in time".into(),
            )),
            _ => None,
        }
    }
}

/// An upstream's response body on its way to the client, carrying the try's [`Verdict`].
/// A client that goes away drops it without an error.
pub(crate) struct UpstreamBody {
    pub(crate) body: Body,
    pub(crate) verdict: Verdict,
}

impl HttpBody for UpstreamBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(context);
        match &polled {
            std::task::Poll::Ready(Some(Err(_))) => self.verdict.broke_off(),
            // The end: a success, given now rather than whenever the body is dropped.
            std::task::Poll::Ready(None) => self.verdict.settle(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
