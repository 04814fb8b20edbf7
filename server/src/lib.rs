//! `idunno-server`: what every IDunno HTTP server (coordinator, storage node, worker) shares, so that
//! each concept has one home:
//!
//! * [`error`] — answering an error as a status and an [`idunno_api::ErrorBody`], and
//!   extractors ([`ApiJson`], [`ApiPath`], [`ApiQuery`]) whose rejections are such answers;
//! * [`metrics`] — Prometheus metrics (`prometheus-client`): rendering a registry, and the
//!   HTTP request counters and latency histograms every server keeps;
//! * [`secret`] — comparing a presented secret or token in constant time;
//! * [`tls`] — the `--tls-*` options, rustls listeners and [`tls::serve`], which every role
//!   runs its router with (plain HTTP or TLS).
//!
//! Nothing here knows a route or a role; nothing here installs signal handlers (the binary
//! does, and hands each role a shutdown future).

pub mod error;
pub mod metrics;
pub mod secret;
pub mod tls;

pub use error::{error_response, ApiJson, ApiPath, ApiQuery, Rejection};
