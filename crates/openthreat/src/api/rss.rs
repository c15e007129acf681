//! RSS 2.0 rendering, written by hand because the rules that matter here are
//! few and must be exactly right: CVE and LLM text is untrusted, so it is
//! stripped of characters XML 1.0 forbids, HTML-escaped, and placed in CDATA
//! sections that a `]]>` in the text cannot close. The output always parses.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use openthreat_store::VulnerabilityRow;

/// Channel-level facts of one feed.
#[derive(Debug, Clone)]
pub struct Channel<'a> {
    pub title: &'a str,
    pub description: &'a str,
    /// Public base URL, without a trailing slash (`https://openthreat.example`).
    pub base_url: &'a str,
    /// Path of this feed, for the `atom:link rel="self"`.
    pub self_path: &'a str,
    pub now: DateTime<Utc>,
}

/// Removes characters XML 1.0 does not allow (most C0 controls, lone
/// surrogates cannot occur in Rust strings, U+FFFE/U+FFFF).
pub fn xml_clean(s: &str) -> String {
    s.chars()
        .filter(|&c| {
            matches!(c, '\t' | '\n' | '\r')
                || ('\u{20}'..='\u{D7FF}').contains(&c)
                || ('\u{E000}'..='\u{FFFD}').contains(&c)
                || c >= '\u{10000}'
        })
        // C1 controls are legal XML but render as garbage; drop them too.
        .filter(|&c| !('\u{80}'..='\u{9F}').contains(&c))
        .collect()
}

/// Escapes text for an XML element or attribute (after cleaning it).
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in xml_clean(s).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Wraps (already HTML-escaped) text in CDATA, splitting any `]]>` so that it
/// cannot end the section early.
pub fn cdata(s: &str) -> String {
    format!(
        "<![CDATA[{}]]>",
        xml_clean(s).replace("]]>", "]]]]><![CDATA[>")
    )
}

/// The item's HTML description: the plain-language text when the LLM wrote
/// one, then NVD's description and the key facts. Every value is escaped.
fn item_html(r: &VulnerabilityRow) -> String {
    let mut html = String::new();
    if let Some(text) = r.simple_description.as_deref().filter(|_| r.llm_processed) {
        let _ = write!(html, "<p>{}</p>", xml_escape(text));
    }
    let _ = write!(html, "<p>{}</p>", xml_escape(&r.description));
    let score = r
        .cvss_score
        .map(|s| format!("{s:.1}"))
        .unwrap_or_else(|| "n/a".into());
    let _ = write!(
        html,
        "<p>Severity: {} | CVSS: {} | Exploited in the wild: {}</p>",
        r.severity.as_str(),
        score,
        if r.exploited_in_the_wild { "yes" } else { "no" }
    );
    html
}

/// Renders the feed.
pub fn render(channel: &Channel<'_>, items: &[VulnerabilityRow]) -> String {
    let base = xml_escape(channel.base_url);
    let mut out = String::with_capacity(1024 + items.len() * 1024);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str("<rss version=\"2.0\" xmlns:atom=\"http://www.w3.org/2005/Atom\">\n<channel>\n");
    let _ = writeln!(out, "<title>{}</title>", xml_escape(channel.title));
    let _ = writeln!(out, "<link>{base}</link>");
    let _ = writeln!(
        out,
        "<description>{}</description>",
        xml_escape(channel.description)
    );
    out.push_str("<language>en</language>\n");
    let _ = writeln!(
        out,
        "<lastBuildDate>{}</lastBuildDate>",
        channel.now.to_rfc2822()
    );
    let _ = writeln!(
        out,
        "<atom:link href=\"{base}{}\" rel=\"self\" type=\"application/rss+xml\"/>",
        xml_escape(channel.self_path)
    );
    for r in items {
        // The LLM's title once it is current, else the one derived from NVD.
        let title = r
            .simple_title
            .as_deref()
            .filter(|_| r.llm_processed)
            .unwrap_or(&r.title);
        let link = format!("{base}/vulnerabilities/{}", xml_escape(&r.cve_id));
        out.push_str("<item>\n");
        let _ = writeln!(
            out,
            "<title>{}: {}</title>",
            xml_escape(&r.cve_id),
            xml_escape(title)
        );
        let _ = writeln!(out, "<link>{link}</link>");
        let _ = writeln!(out, "<guid isPermaLink=\"true\">{link}</guid>");
        let _ = writeln!(out, "<description>{}</description>", cdata(&item_html(r)));
        let _ = writeln!(out, "<category>{}</category>", r.severity.as_str());
        let _ = writeln!(out, "<pubDate>{}</pubDate>", r.published_at.to_rfc2822());
        out.push_str("</item>\n");
    }
    out.push_str("</channel>\n</rss>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdata_cannot_be_closed_by_the_text() {
        assert_eq!(cdata("a]]>b"), "<![CDATA[a]]]]><![CDATA[>b]]>");
    }

    #[test]
    fn control_characters_are_removed_and_markup_escaped() {
        assert_eq!(xml_escape("a\u{0}b\u{1b}c\u{85}<d>&"), "abc&lt;d&gt;&amp;");
        assert_eq!(xml_clean("tab\tok\u{FFFE}"), "tab\tok");
    }
}
