//! Everything NVD: the record model, its mapping to [`openthreat_core::Cve`],
//! streaming parsers for pages and feed files, `.meta` checksums, feed
//! downloads and the CVE API 2.0 client.

pub mod client;
pub mod download;
pub mod map;
pub mod meta;
pub mod model;
pub mod parse;
mod split;
