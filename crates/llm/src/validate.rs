//! Cleaning and validation of the model's answer, before anything is stored.
//!
//! Small models obey a JSON schema but not its spirit: they wrap the JSON in
//! a code fence, start with "Sure! Here's a brief explanation:", copy NVD's
//! sentence, invent a fixed version, or carry a product over from another
//! CVE. Cosmetic faults are repaired here ([`clean_field`]); faults of
//! substance become a [`ValidationError`] whose message is sent back to the
//! model in the one repair attempt, so it is phrased as an instruction.
//!
//! The output is only ever treated as text: it is parsed as JSON data,
//! measured, compared with the input, and stored; never executed or
//! interpreted further.

use std::collections::HashSet;
use std::fmt;

use serde_json::Value;

use crate::prompt::Prompt;

/// Limits from the product brief.
pub const MAX_TITLE_WORDS: usize = 10;
pub const MAX_DESCRIPTION_WORDS: usize = 100;
pub const MIN_DESCRIPTION_SENTENCES: usize = 2;
pub const MAX_DESCRIPTION_SENTENCES: usize = 3;
pub const MAX_ACTION_WORDS: usize = 25;
/// A run of this many words shared with NVD's description means the model
/// copied instead of explaining. Shorter runs are normal ("allows remote
/// attackers to").
pub const COPY_RUN_WORDS: usize = 12;

/// The three fields, cleaned and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidOutput {
    pub simple_title: String,
    pub simple_description: String,
    pub recommended_action: String,
}

/// Which field a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Title,
    Description,
    Action,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Title => "simple_title",
            Field::Description => "simple_description",
            Field::Action => "recommended_action",
        }
    }
}

/// What is wrong with an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The answer is not a JSON object (after removing a code fence).
    NotJson {
        detail: String,
    },
    /// A required field is absent, not a string, or empty after cleaning.
    Missing,
    TooManyWords {
        words: usize,
        max: usize,
    },
    SentenceCount {
        found: usize,
        min: usize,
        max: usize,
    },
    /// A CVE id other than the one processed.
    OtherCveId {
        id: String,
    },
    /// A version number that appears nowhere in the input.
    InventedVersion {
        version: String,
    },
    /// A name-like token (`Log4j`, `FortiOS`) that appears nowhere in the
    /// input: typically a product carried over from another CVE.
    UnknownName {
        name: String,
    },
    /// Shares `run` consecutive words with NVD's description, or equals it.
    CopiedInput {
        run: usize,
    },
    NotEnglish,
    /// The title does not name anything from the CVE record.
    ProductNotNamed,
    /// A link or address: plain-language fields never need one, and a link
    /// is what an injected instruction would most want shown to readers.
    ContainsUrl {
        url: String,
    },
}

/// A rejected answer: which field and what problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// `None` for problems with the whole answer (not JSON).
    pub field: Option<Field>,
    pub problem: Problem,
}

impl fmt::Display for ValidationError {
    /// Phrased for the model, since this text is the repair request.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = self.field.map(Field::as_str).unwrap_or("the answer");
        match &self.problem {
            Problem::NotJson { detail } => {
                write!(f, "the answer is not a single JSON object ({detail})")
            }
            Problem::Missing => write!(f, "{field} is missing or empty"),
            Problem::TooManyWords { words, max } => {
                write!(f, "{field} has {words} words; it must have at most {max}")
            }
            Problem::SentenceCount { found, min, max } => {
                let noun = if *found == 1 { "sentence" } else { "sentences" };
                if min == max {
                    write!(
                        f,
                        "{field} has {found} {noun}; it must be exactly {min} sentence"
                    )
                } else {
                    write!(f, "{field} has {found} {noun}; it must have {min} to {max}")
                }
            }
            Problem::OtherCveId { id } => write!(
                f,
                "{field} mentions {id}, which is not the CVE being explained"
            ),
            Problem::InventedVersion { version } => write!(
                f,
                "{field} mentions version {version}, which does not appear in the CVE data"
            ),
            Problem::UnknownName { name } => write!(
                f,
                "{field} mentions {name}, which does not appear in the CVE data"
            ),
            Problem::CopiedInput { run } => write!(
                f,
                "{field} copies {run} consecutive words from the description; explain it in \
                 your own plain words"
            ),
            Problem::NotEnglish => write!(f, "{field} is not written in English"),
            Problem::ContainsUrl { url } => write!(
                f,
                "{field} contains the link {url}; write plain sentences without links"
            ),
            Problem::ProductNotNamed => write!(
                f,
                "{field} does not name the affected product from the CVE data"
            ),
        }
    }
}

impl std::error::Error for ValidationError {}

fn err(field: Field, problem: Problem) -> ValidationError {
    ValidationError {
        field: Some(field),
        problem,
    }
}

/// Parses, cleans and checks one answer against the prompt it answers.
pub fn validate(raw: &str, prompt: &Prompt) -> Result<ValidOutput, ValidationError> {
    let object = parse_object(raw)?;
    let title = take_field(&object, Field::Title)?;
    let description = take_field(&object, Field::Description)?;
    let action = take_field(&object, Field::Action)?;
    let out = ValidOutput {
        simple_title: title,
        simple_description: description,
        recommended_action: action,
    };
    check(&out, prompt)?;
    Ok(out)
}

/// The JSON object in `raw`, tolerating a code fence or a line of chatter
/// around it (the braces are taken from the first `{` to the last `}`).
fn parse_object(raw: &str) -> Result<serde_json::Map<String, Value>, ValidationError> {
    let not_json = |detail: String| ValidationError {
        field: None,
        problem: Problem::NotJson { detail },
    };
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(not_json("it is empty".to_string()));
    }
    let candidate = match (trimmed.find('{'), trimmed.rfind('}')) {
        (Some(a), Some(b)) if a < b => &trimmed[a..=b],
        _ => trimmed,
    };
    let parsed = serde_json::from_str::<Value>(candidate).or_else(|e| {
        // Small models put raw line breaks inside JSON strings, which JSON
        // forbids; as whitespace they carry no meaning, so retry with spaces.
        if candidate.chars().any(char::is_control) {
            let spaced: String = candidate
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            serde_json::from_str::<Value>(&spaced).map_err(|_| e)
        } else {
            Err(e)
        }
    });
    match parsed {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(not_json("it is JSON but not an object".to_string())),
        Err(e) => Err(not_json(e.to_string())),
    }
}

fn take_field(
    object: &serde_json::Map<String, Value>,
    field: Field,
) -> Result<String, ValidationError> {
    let value = object
        .get(field.as_str())
        .and_then(Value::as_str)
        .ok_or_else(|| err(field, Problem::Missing))?;
    let cleaned = clean_field(value, field == Field::Title);
    if cleaned.chars().filter(|c| c.is_alphanumeric()).count() < 2 {
        return Err(err(field, Problem::Missing));
    }
    Ok(cleaned)
}

/// Removes what small models add around the text: markdown, field labels,
/// chit-chat preambles and surrounding quotes, then normalises whitespace.
/// Titles also lose a final full stop.
pub fn clean_field(raw: &str, is_title: bool) -> String {
    let mut s = strip_markdown(raw);
    for _ in 0..6 {
        let before = s.clone();
        s = strip_quotes(&s);
        s = strip_preamble(&s);
        if s == before {
            break;
        }
    }
    if is_title {
        s = s.trim_end_matches(['.', ':', ';']).trim().to_string();
    }
    s
}

fn strip_markdown(raw: &str) -> String {
    let mut lines = Vec::new();
    for line in raw.lines() {
        let mut l = line.trim();
        l = l.trim_start_matches('#').trim_start();
        l = l.trim_start_matches('>').trim_start();
        for bullet in ["- ", "* ", "• ", "+ "] {
            if let Some(rest) = l.strip_prefix(bullet) {
                l = rest.trim_start();
            }
        }
        // "1. " or "1) " list numbers.
        let digits = l.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 && digits < 3 {
            let rest = &l[digits..];
            if let Some(r) = rest.strip_prefix(". ").or_else(|| rest.strip_prefix(") ")) {
                l = r.trim_start();
            }
        }
        let l = l.replace(['*', '`'], "").replace("__", "");
        if !l.trim().is_empty() {
            lines.push(l);
        }
    }
    lines
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

const QUOTE_PAIRS: [(char, char); 5] =
    [('"', '"'), ('\'', '\''), ('“', '”'), ('‘', '’'), ('«', '»')];

fn strip_quotes(s: &str) -> String {
    let t = s.trim();
    for (open, close) in QUOTE_PAIRS {
        if t.chars().count() >= 2 && t.starts_with(open) && t.ends_with(close) {
            let inner = &t[open.len_utf8()..t.len() - close.len_utf8()];
            // Only when the quotes enclose everything, not `"a" and "b"`.
            if !inner.contains(close) {
                return inner.trim().to_string();
            }
        }
    }
    t.to_string()
}

const LABELS: [&str; 15] = [
    "simple_title",
    "simple title",
    "simple_description",
    "simple description",
    "recommended_action",
    "recommended action",
    "recommendation",
    "description",
    "explanation",
    "summary",
    "answer",
    "action",
    "title",
    "note",
    "output",
];

const INTERJECTIONS: [&str; 8] = [
    "sure",
    "certainly",
    "of course",
    "okay",
    "ok",
    "absolutely",
    "great",
    "alright",
];

const LEAD_INS: [&str; 7] = [
    "here's",
    "here’s",
    "here is",
    "here are",
    "below is",
    "the following is",
    "in simple terms",
];

fn strip_preamble(s: &str) -> String {
    let t = s.trim();
    let lower = t.to_lowercase();
    // "Title: ...", "**Description**: ..." (markdown already gone).
    for label in LABELS {
        if let Some(rest) = lower.strip_prefix(label) {
            let rest_trim = rest.trim_start();
            if let Some(after) = rest_trim.strip_prefix(':') {
                let cut = t.len() - after.len();
                return t[cut..].trim().to_string();
            }
        }
    }
    // "Sure! ...", "Certainly, ...".
    for word in INTERJECTIONS {
        if let Some(rest) = lower.strip_prefix(word) {
            if let Some(after) = rest.strip_prefix(['!', ',', '.', ':']) {
                let cut = t.len() - after.len();
                return t[cut..].trim().to_string();
            }
        }
    }
    // "Here's a brief explanation: ..." or "Here is a summary of the flaw. ...".
    for lead in LEAD_INS {
        if lower.starts_with(lead) {
            let end = lower
                .char_indices()
                .find(|&(_, c)| matches!(c, ':' | '.' | '!' | '\n'))
                .map(|(i, c)| i + c.len_utf8());
            if let Some(end) = end {
                // `lower` and `t` can differ in byte length for non-ASCII
                // case changes; cut `t` at the same character count.
                let chars = lower[..end].chars().count();
                let rest: String = t.chars().skip(chars).collect();
                return rest.trim().to_string();
            }
        }
    }
    t.to_string()
}

fn check(out: &ValidOutput, prompt: &Prompt) -> Result<(), ValidationError> {
    let fields = [
        (Field::Title, out.simple_title.as_str()),
        (Field::Description, out.simple_description.as_str()),
        (Field::Action, out.recommended_action.as_str()),
    ];

    // Lengths first: they are the most common fault and the easiest to fix.
    let title_words = word_count(&out.simple_title);
    if title_words > MAX_TITLE_WORDS {
        return Err(err(
            Field::Title,
            Problem::TooManyWords {
                words: title_words,
                max: MAX_TITLE_WORDS,
            },
        ));
    }
    let words = word_count(&out.simple_description);
    if words > MAX_DESCRIPTION_WORDS {
        return Err(err(
            Field::Description,
            Problem::TooManyWords {
                words,
                max: MAX_DESCRIPTION_WORDS,
            },
        ));
    }
    let action_words = word_count(&out.recommended_action);
    if action_words > MAX_ACTION_WORDS {
        return Err(err(
            Field::Action,
            Problem::TooManyWords {
                words: action_words,
                max: MAX_ACTION_WORDS,
            },
        ));
    }

    // Language before sentence counting: sentence rules mean little in
    // another script.
    for (field, text) in fields {
        if !looks_english(text, field == Field::Description) {
            return Err(err(field, Problem::NotEnglish));
        }
    }

    let sentences = sentence_count(&out.simple_description);
    if !(MIN_DESCRIPTION_SENTENCES..=MAX_DESCRIPTION_SENTENCES).contains(&sentences) {
        return Err(err(
            Field::Description,
            Problem::SentenceCount {
                found: sentences,
                min: MIN_DESCRIPTION_SENTENCES,
                max: MAX_DESCRIPTION_SENTENCES,
            },
        ));
    }
    let action_sentences = sentence_count(&out.recommended_action);
    if action_sentences != 1 {
        return Err(err(
            Field::Action,
            Problem::SentenceCount {
                found: action_sentences,
                min: 1,
                max: 1,
            },
        ));
    }

    // Facts: every id, version and name must come from the input.
    let input_lower = prompt.input_text.to_lowercase();
    for (field, text) in fields {
        if let Some(url) = find_url(text) {
            return Err(err(field, Problem::ContainsUrl { url }));
        }
        for id in cve_ids(text) {
            if !id.eq_ignore_ascii_case(&prompt.cve_id) {
                return Err(err(field, Problem::OtherCveId { id }));
            }
        }
        for version in version_numbers(text) {
            if !appears_as_number(&prompt.input_text, &version) {
                return Err(err(field, Problem::InventedVersion { version }));
            }
        }
        for name in name_like_tokens(text) {
            if !input_lower.contains(&name.to_lowercase()) {
                return Err(err(field, Problem::UnknownName { name }));
            }
        }
    }

    // Copying: the description must explain, not repeat.
    if let Some(run) = copied_run(&out.simple_description, &prompt.description) {
        return Err(err(Field::Description, Problem::CopiedInput { run }));
    }

    if !names_something_from_input(&out.simple_title, prompt) {
        return Err(err(Field::Title, Problem::ProductNotNamed));
    }
    Ok(())
}

fn word_count(s: &str) -> usize {
    s.split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .count()
}

/// Words after which a full stop does not end a sentence.
const ABBREVIATIONS: [&str; 12] = [
    "e.g", "i.e", "etc", "vs", "inc", "corp", "ltd", "co", "mr", "dr", "no", "approx",
];

/// Counts sentences: a `.`, `!` or `?` ends one when followed by whitespace
/// and an upper-case letter or digit (or the end), unless it closes an
/// abbreviation. Full stops inside versions (`2.4.49`) are never followed by
/// whitespace, so they do not count.
fn sentence_count(s: &str) -> usize {
    let chars: Vec<char> = s.trim().chars().collect();
    if chars.is_empty() {
        return 0;
    }
    let mut count = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '.' | '!' | '?') {
            // Swallow "..." and closing quotes/brackets.
            let mut j = i + 1;
            while j < chars.len() && matches!(chars[j], '.' | '!' | '?' | '"' | '\'' | ')' | '”')
            {
                j += 1;
            }
            let at_end = j >= chars.len();
            let next_starts = !at_end
                && chars[j].is_whitespace()
                && chars[j..]
                    .iter()
                    .find(|c| !c.is_whitespace())
                    .is_some_and(|n| n.is_uppercase() || n.is_ascii_digit());
            if (at_end || next_starts) && !(c == '.' && ends_with_abbreviation(&chars[..i])) {
                count += 1;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    // Text that does not end with punctuation still has a last sentence.
    let last = chars.iter().rev().find(|c| !c.is_whitespace());
    if !matches!(last, Some('.' | '!' | '?' | '"' | '\'' | ')' | '”')) {
        count += 1;
    }
    count
}

fn ends_with_abbreviation(before: &[char]) -> bool {
    let word: String = before
        .iter()
        .rev()
        .take_while(|c| c.is_alphanumeric() || **c == '.')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let w = word.to_lowercase();
    ABBREVIATIONS.contains(&w.as_str())
}

/// Common English function words; their share is the language heuristic.
const STOPWORDS: [&str; 60] = [
    "the", "a", "an", "and", "or", "of", "to", "in", "on", "for", "with", "by", "is", "are", "was",
    "be", "been", "can", "could", "may", "might", "will", "would", "should", "this", "that",
    "these", "it", "its", "as", "at", "from", "if", "not", "no", "but", "which", "who", "what",
    "how", "your", "you", "they", "their", "them", "has", "have", "than", "then", "into", "any",
    "all", "so", "such", "when", "there", "because", "out", "up", "more",
];

/// Mostly ASCII letters and, for longer text, a normal share of English
/// function words (English prose has 30–50 %; other languages in Latin
/// script rarely reach 10 % of these particular words).
fn looks_english(text: &str, is_prose: bool) -> bool {
    let letters: Vec<char> = text.chars().filter(|c| c.is_alphabetic()).collect();
    if letters.is_empty() {
        return false;
    }
    let non_ascii = letters.iter().filter(|c| !c.is_ascii()).count();
    if non_ascii * 10 > letters.len() {
        return false;
    }
    if !is_prose {
        return true;
    }
    let words: Vec<String> = words_lower(text);
    if words.len() < 8 {
        return true;
    }
    let stop: HashSet<&str> = STOPWORDS.into_iter().collect();
    let hits = words.iter().filter(|w| stop.contains(w.as_str())).count();
    hits * 100 >= words.len() * 15
}

fn words_lower(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// The first word that looks like a link (`http://`, `https://`, `www.`).
fn find_url(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|w| {
            let l = w.to_ascii_lowercase();
            l.contains("http://") || l.contains("https://") || l.starts_with("www.")
        })
        .map(|w| w.trim_end_matches(['.', ',', ';', ')']).to_string())
}

/// `CVE-YYYY-NNNN...` occurrences, upper-cased.
fn cve_ids(text: &str) -> Vec<String> {
    let upper = text.to_ascii_uppercase();
    let bytes = upper.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(pos) = upper[from..].find("CVE-") {
        let start = from + pos;
        let mut i = start + 4;
        let year_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i - year_start == 4 && i < bytes.len() && bytes[i] == b'-' {
            let num_start = i + 1;
            let mut j = num_start;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
            if j - num_start >= 4 {
                out.push(upper[start..j].to_string());
            }
        }
        from = start + 4;
    }
    out
}

/// Dotted numbers such as `2.4.49`, `10.2` or `9.8p1` (digits and dots with
/// at least two numeric parts, plus a letter-digit suffix glued to them).
/// CVSS scores (`9.8`) count too: inventing a score is as wrong as
/// inventing a version.
fn version_numbers(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts_number = chars[i].is_ascii_digit()
            && (i == 0 || !chars[i - 1].is_alphanumeric() || matches!(chars[i - 1], 'v' | 'V'));
        let v_prefix = matches!(chars[i], 'v' | 'V')
            && (i == 0 || !chars[i - 1].is_alphanumeric())
            && chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if v_prefix {
            i += 1;
            continue;
        }
        if !starts_number {
            // Skip the rest of a word, so digits inside names ("Log4j",
            // "x86") are not taken for versions.
            while i < chars.len() && chars[i].is_alphanumeric() {
                i += 1;
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len()
            && (chars[i].is_ascii_digit()
                || (chars[i] == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)))
        {
            i += 1;
        }
        let numeric: String = chars[start..i].iter().collect();
        while i < chars.len() && chars[i].is_ascii_alphanumeric() {
            i += 1;
        }
        if numeric.contains('.') {
            out.push(chars[start..i].iter().collect());
        }
    }
    out
}

/// Whether `number` occurs in `haystack` not glued to further digits or
/// letters, so `2.4` matches in "2.4.50" (a release line) but `4.5` does
/// not match in "2.4.50" and `1.0.1` does not match in "1.0.1g".
fn appears_as_number(haystack: &str, number: &str) -> bool {
    let bytes = haystack.as_bytes();
    let mut from = 0;
    while let Some(pos) = haystack[from..].find(number) {
        let start = from + pos;
        let end = start + number.len();
        let before_ok = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let after_ok = end >= bytes.len() || !bytes[end].is_ascii_alphanumeric();
        if before_ok && after_ok {
            return true;
        }
        from = start + 1;
    }
    false
}

/// Tokens that look like proper names a model could carry over from another
/// CVE: letters mixed with digits (`Log4j`) or an inner capital
/// (`FortiOS`, `GlobalProtect`). Ids and versions are checked elsewhere.
fn name_like_tokens(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')' | '"' | '/'))
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .map(|w| {
            w.strip_suffix("'s")
                .or_else(|| w.strip_suffix("’s"))
                .unwrap_or(w)
        })
        .filter(|w| w.len() >= 3)
        .filter(|w| !w.to_ascii_uppercase().starts_with("CVE-"))
        .filter(|w| !w.to_ascii_uppercase().starts_with("CWE-"))
        .filter(|w| {
            let letters = w.chars().filter(|c| c.is_alphabetic()).count();
            let digits = w.chars().filter(|c| c.is_ascii_digit()).count();
            let version_like = w.starts_with(['v', 'V']) && letters == 1;
            let plain_units = ["bit", "fa", "th", "st", "nd", "rd", "s", "kb", "mb", "gb"]
                .iter()
                .any(|u| {
                    let lw = w.to_ascii_lowercase();
                    lw.ends_with(u)
                        && lw[..lw.len() - u.len()]
                            .chars()
                            .all(|c| c.is_ascii_digit() || c == '-')
                });
            let mixed = letters > 0 && digits > 0 && !version_like && !plain_units;
            let inner_capital = w
                .chars()
                .zip(w.chars().skip(1))
                .any(|(a, b)| a.is_lowercase() && b.is_uppercase());
            mixed || inner_capital
        })
        .map(str::to_string)
        .collect()
}

/// The length of the longest run of words the description shares with the
/// input, if it reaches [`COPY_RUN_WORDS`] or the whole (short) input.
fn copied_run(output: &str, input: &str) -> Option<usize> {
    let out = words_lower(output);
    let inp = words_lower(input);
    if out.is_empty() || inp.is_empty() {
        return None;
    }
    if out == inp {
        return Some(out.len());
    }
    let n = COPY_RUN_WORDS;
    if out.len() < n || inp.len() < n {
        return None;
    }
    let grams: HashSet<&[String]> = inp.windows(n).collect();
    let first = out.windows(n).position(|w| grams.contains(w))?;
    // Extend the match to report its real length.
    let mut best = n;
    for start in first..=out.len() - n {
        if !grams.contains(&out[start..start + n]) {
            continue;
        }
        let mut len = n;
        while start + len < out.len()
            && inp
                .windows(len + 1)
                .any(|w| w == &out[start..start + len + 1])
        {
            len += 1;
        }
        best = best.max(len);
    }
    Some(best)
}

/// Words too generic to count as naming the product.
const GENERIC: [&str; 48] = [
    "vulnerability",
    "vulnerabilities",
    "flaw",
    "flaws",
    "bug",
    "issue",
    "security",
    "attack",
    "attacks",
    "attacker",
    "attackers",
    "remote",
    "remotely",
    "code",
    "execution",
    "arbitrary",
    "allows",
    "allow",
    "affected",
    "affects",
    "software",
    "product",
    "products",
    "version",
    "versions",
    "user",
    "users",
    "exploit",
    "exploited",
    "exploitation",
    "critical",
    "high",
    "medium",
    "low",
    "severity",
    "risk",
    "serious",
    "data",
    "access",
    "system",
    "systems",
    "unauthenticated",
    "authenticated",
    "privilege",
    "escalation",
    "crafted",
    "request",
    "weakness",
];

/// The title shares at least one specific word (not a function word, not a
/// generic security word) with the product names or the description.
fn names_something_from_input(title: &str, prompt: &Prompt) -> bool {
    let stop: HashSet<&str> = STOPWORDS.into_iter().chain(GENERIC).collect();
    let mut vocab: HashSet<String> = HashSet::new();
    let sources = prompt
        .products
        .iter()
        .map(|p| p.replace('_', " "))
        .chain(std::iter::once(prompt.description.clone()));
    for source in sources {
        for w in source
            .to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.len() >= 2)
        {
            vocab.insert(w.to_string());
        }
    }
    title
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() >= 2 && !stop.contains(w))
        .any(|w| vocab.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_ignore_versions_and_abbreviations() {
        assert_eq!(sentence_count("Apache 2.4.49 is affected. Update it."), 2);
        assert_eq!(
            sentence_count("Servers, e.g. Apache, are hit. Attackers win! Patch now"),
            3
        );
        assert_eq!(sentence_count("One sentence without a stop"), 1);
        assert_eq!(sentence_count(""), 0);
    }

    #[test]
    fn versions_and_names_are_found() {
        assert_eq!(
            version_numbers("Update to 2.4.51 or v3.1 or 9.8p1, not Log4j2.1 or x86."),
            vec!["2.4.51", "3.1", "9.8p1"]
        );
        assert_eq!(
            name_like_tokens("Upgrade Log4j and FortiOS on 64-bit hosts"),
            vec!["Log4j", "FortiOS"]
        );
        assert!(appears_as_number("fixed in 2.4.50 and later", "2.4"));
        assert!(!appears_as_number("fixed in 2.4.50", "4.5"));
        assert!(!appears_as_number("before 1.0.1g", "1.0.1"));
    }

    #[test]
    fn cve_ids_are_found() {
        assert_eq!(
            cve_ids("see cve-2021-44228 and CVE-2024-3400; CVE-12"),
            vec!["CVE-2021-44228", "CVE-2024-3400"]
        );
    }

    #[test]
    fn cleaning_removes_chatter() {
        assert_eq!(
            clean_field(
                "Sure! Here's a brief explanation: **A flaw** in `X`.",
                false
            ),
            "A flaw in X."
        );
        assert_eq!(
            clean_field("Title: \"OpenSSH race condition.\"", true),
            "OpenSSH race condition"
        );
        assert_eq!(
            clean_field("## Heading\n- item one\n- item two", false),
            "Heading item one item two"
        );
    }
}
