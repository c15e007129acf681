//! OpenThreat's domain model: what a CVE is, how bad it is, and how urgently a
//! small security team should look at it.
//!
//! This crate is deliberately pure: no I/O, no async, no clock of its own (the
//! current time is always passed in), so every rule here can be tested with
//! plain values and reused by the feeds, the store, the LLM prompt and the API.
//!
//! # Layout
//! * [`cve`]: the [`Cve`] record and its parts ([`CveId`], [`Severity`],
//!   [`Cvss`], [`KevFacts`], [`Epss`], [`VulnStatus`], [`Reference`]).
//! * [`priority`]: the priority score in `[0, 1]` and the high/medium/low class.
//! * [`enrichment`]: the plain-language fields the LLM writes for a CVE.

pub mod cve;
pub mod enrichment;
pub mod priority;

pub use cve::{
    Cve, CveId, CveIdError, Cvss, CvssVersion, Epss, KevFacts, Reference, Severity,
    SeverityParseError, VulnStatus,
};
pub use enrichment::Enrichment;
pub use priority::{priority_class, priority_score, Priority, PriorityParseError};
