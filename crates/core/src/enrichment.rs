//! The plain-language fields an LLM writes for a CVE.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Validated LLM output for one CVE, ready to be stored.
///
/// Kept apart from [`crate::Cve`] because it has its own life cycle: a
/// re-import of the NVD record must not erase it, but a changed description
/// makes it stale (see `input_hash`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrichment {
    /// At most ten words naming the product and the kind of flaw.
    pub simple_title: String,
    /// Two or three sentences for a non-expert.
    pub simple_description: String,
    /// One sentence on what to do.
    pub recommended_action: Option<String>,
    /// The model that wrote it, e.g. `llama3.2:3b`.
    pub model: String,
    pub processed_at: DateTime<Utc>,
    /// Hash of the input text the model saw; when NVD changes the description
    /// the hash no longer matches and the CVE is enriched again.
    pub input_hash: String,
}
