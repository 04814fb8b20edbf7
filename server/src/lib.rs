//! `idunno-server`: what every IDunno HTTP server (coordinator, storage node) shares, so that
//! each concept has one home:
//!
//! * [`error`] — answering an error as a status and an [`idunno_api::ErrorBody`], and
//!   extractors ([`ApiJson`], [`ApiPath`], [`ApiQuery`]) whose rejections are such answers;
//! * [`counter`] — the monotonic counter the `/metrics` pages count with;
//! * [`secret`] — comparing a presented secret or token in constant time.
//!
//! Nothing here knows a route or a role; nothing here installs signal handlers (the binary
//! does, and hands each role a shutdown future).

pub mod counter;
pub mod error;
pub mod secret;

pub use counter::Counter;
pub use error::{error_response, ApiJson, ApiPath, ApiQuery, Rejection};
