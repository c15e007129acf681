//! The route handlers, one file per Swagger tag. Handlers are thin: they
//! validate parameters (see [`super::params`]), call the store or the task
//! gateway, and shape the answer (see [`super::models`]).

pub(crate) mod feeds;
pub(crate) mod health;
pub(crate) mod llm;
pub(crate) mod search;
pub(crate) mod stats;
pub(crate) mod tasks;
pub(crate) mod vulnerabilities;
