//! Pure HTTP helpers, shared by the handler and the shadow leg: header rewriting, request
//! checks, the one `Upgrade` parser, and host names. Nothing here knows routes, clusters or
//! shadows.

pub(crate) mod checks;
pub(crate) mod grpc;
pub(crate) mod headers;
pub(crate) mod host;
pub(crate) mod tracecontext;
pub(crate) mod upgrade;
