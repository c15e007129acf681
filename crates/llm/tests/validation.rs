//! Realistic bad answers for real NVD records: what is cleaned, what is
//! rejected, and with which problem.

use openthreat_core::Cve;
use openthreat_llm::test_server::fixtures::nvd_cve;
use openthreat_llm::{build_prompt, validate, Field, Problem, Prompt, ValidationError};
use serde_json::json;

fn prompt(id: &str) -> Prompt {
    let cve: Cve = nvd_cve(id).unwrap_or_else(|| panic!("fixture {id}"));
    build_prompt(&cve)
}

fn answer(title: &str, description: &str, action: &str) -> String {
    json!({
        "simple_title": title,
        "simple_description": description,
        "recommended_action": action,
    })
    .to_string()
}

const GOOD_TITLE: &str = "OpenSSH server race condition allows remote takeover";
const GOOD_DESC: &str = "The SSH server in OpenSSH mishandles a timing signal when a login \
    attempt takes too long. An attacker on the network, without any password, may be able to \
    abuse this to run commands on the server. This is serious for any machine that exposes SSH \
    to the internet.";
const GOOD_ACTION: &str = "Install your vendor's OpenSSH update and limit who can reach SSH.";

fn problem(r: Result<openthreat_llm::ValidOutput, ValidationError>) -> (Option<Field>, Problem) {
    let e = r.expect_err("answer should be rejected");
    (e.field, e.problem)
}

#[test]
fn a_good_answer_passes_unchanged() {
    let p = prompt("CVE-2024-6387");
    let out = validate(&answer(GOOD_TITLE, GOOD_DESC, GOOD_ACTION), &p).unwrap();
    assert_eq!(out.simple_title, GOOD_TITLE);
    assert_eq!(
        out.simple_description,
        GOOD_DESC.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    assert_eq!(out.recommended_action, GOOD_ACTION);
}

#[test]
fn preambles_labels_quotes_and_markdown_are_stripped() {
    let p = prompt("CVE-2024-6387");
    let raw = answer(
        "**Title:** \"OpenSSH server race condition allows remote takeover.\"",
        &format!("Sure! Here's a brief explanation:\n\n{GOOD_DESC}"),
        &format!("- `{GOOD_ACTION}`"),
    );
    let out = validate(&format!("```json\n{raw}\n```"), &p).unwrap();
    assert_eq!(out.simple_title, GOOD_TITLE);
    assert!(
        out.simple_description.starts_with("The SSH server"),
        "{}",
        out.simple_description
    );
    assert_eq!(out.recommended_action, GOOD_ACTION);
}

#[test]
fn raw_line_breaks_inside_json_strings_are_tolerated() {
    // Gemma 3 270M wrote answers like this one.
    let p = prompt("CVE-2024-6387");
    let raw = format!(
        "{{\"simple_title\": \"{GOOD_TITLE}\",\n\"simple_description\": \"{}\n\",\n\"recommended_action\": \"{GOOD_ACTION}\"}}",
        GOOD_DESC.replace(". ", ".\n")
    );
    let out = validate(&raw, &p).unwrap();
    assert!(!out.simple_description.contains('\n'));
}

#[test]
fn here_is_sentence_preamble_is_stripped() {
    let p = prompt("CVE-2024-6387");
    let raw = answer(
        GOOD_TITLE,
        &format!("Here is a simple explanation of the vulnerability. {GOOD_DESC}"),
        GOOD_ACTION,
    );
    let out = validate(&raw, &p).unwrap();
    assert!(out.simple_description.starts_with("The SSH server"));
}

#[test]
fn not_json_empty_and_missing_fields() {
    let p = prompt("CVE-2024-6387");
    let (field, pr) = problem(validate("OpenSSH has a bug. Patch it.", &p));
    assert_eq!(field, None);
    assert!(matches!(pr, Problem::NotJson { .. }));
    assert!(matches!(
        problem(validate("", &p)).1,
        Problem::NotJson { .. }
    ));
    assert!(matches!(
        problem(validate("[1,2]", &p)).1,
        Problem::NotJson { .. }
    ));
    assert_eq!(
        problem(validate(&answer(GOOD_TITLE, "  ", GOOD_ACTION), &p)),
        (Some(Field::Description), Problem::Missing)
    );
    assert_eq!(
        problem(validate(&answer("**\"\"**", GOOD_DESC, GOOD_ACTION), &p)),
        (Some(Field::Title), Problem::Missing)
    );
    let no_action = json!({"simple_title": GOOD_TITLE, "simple_description": GOOD_DESC});
    assert_eq!(
        problem(validate(&no_action.to_string(), &p)),
        (Some(Field::Action), Problem::Missing)
    );
    let wrong_type = json!({"simple_title": 5, "simple_description": GOOD_DESC, "recommended_action": GOOD_ACTION});
    assert_eq!(
        problem(validate(&wrong_type.to_string(), &p)),
        (Some(Field::Title), Problem::Missing)
    );
}

#[test]
fn too_long_fields() {
    let p = prompt("CVE-2024-6387");
    let long_title = "OpenSSH server has a dangerous race condition that lets remote attackers take over servers";
    assert_eq!(
        problem(validate(&answer(long_title, GOOD_DESC, GOOD_ACTION), &p)),
        (
            Some(Field::Title),
            Problem::TooManyWords { words: 14, max: 10 }
        )
    );
    let long_desc = format!("{GOOD_DESC} {GOOD_DESC} {GOOD_DESC}");
    let (field, pr) = problem(validate(&answer(GOOD_TITLE, &long_desc, GOOD_ACTION), &p));
    assert_eq!(field, Some(Field::Description));
    assert!(
        matches!(pr, Problem::TooManyWords { max: 100, .. }),
        "{pr:?}"
    );
    let long_action = "Install the update from your vendor right away, and in the meantime make sure that only trusted networks and people can reach the SSH service on every server.";
    assert!(matches!(
        problem(validate(&answer(GOOD_TITLE, GOOD_DESC, long_action), &p)).1,
        Problem::TooManyWords { max: 25, .. }
    ));
}

#[test]
fn sentence_counts() {
    let p = prompt("CVE-2024-6387");
    let one = "The SSH server in OpenSSH can be taken over by an attacker on the network who needs no password.";
    assert_eq!(
        problem(validate(&answer(GOOD_TITLE, one, GOOD_ACTION), &p)).1,
        Problem::SentenceCount {
            found: 1,
            min: 2,
            max: 3
        }
    );
    let four = "OpenSSH has a flaw. It is in the server. Attackers can use it. It is serious.";
    assert_eq!(
        problem(validate(&answer(GOOD_TITLE, four, GOOD_ACTION), &p)).1,
        Problem::SentenceCount {
            found: 4,
            min: 2,
            max: 3
        }
    );
    let two_actions = "Update OpenSSH now. Then restart the server.";
    assert_eq!(
        problem(validate(&answer(GOOD_TITLE, GOOD_DESC, two_actions), &p)),
        (
            Some(Field::Action),
            Problem::SentenceCount {
                found: 2,
                min: 1,
                max: 1
            }
        )
    );
}

#[test]
fn invented_version_is_rejected_but_input_versions_pass() {
    let p = prompt("CVE-2014-0160");
    let title = "OpenSSL Heartbleed bug leaks server memory";
    let desc = "A bug in OpenSSL 1.0.1 lets attackers read pieces of a server's memory, \
        including private keys. Anyone on the network can do this without logging in. \
        It is very serious for any server using the affected versions.";
    assert!(validate(
        &answer(title, desc, "Upgrade OpenSSL to 1.0.1g or later."),
        &p
    )
    .is_ok());
    assert_eq!(
        problem(validate(
            &answer(title, desc, "Upgrade OpenSSL to version 3.0.7 or later."),
            &p
        )),
        (
            Some(Field::Action),
            Problem::InventedVersion {
                version: "3.0.7".into()
            }
        )
    );
    // An invented suffix on a real version is an invented version.
    assert_eq!(
        problem(validate(
            &answer(title, desc, "Upgrade OpenSSL to 1.0.1h now."),
            &p
        ))
        .1,
        Problem::InventedVersion {
            version: "1.0.1h".into()
        }
    );
}

#[test]
fn other_cve_ids_are_rejected() {
    // CVE-2024-6387's own description names CVE-2006-5051; still not ours.
    let p = prompt("CVE-2024-6387");
    let desc = format!("{GOOD_DESC} It brings back CVE-2006-5051.");
    let (field, pr) = problem(validate(
        &answer(
            GOOD_TITLE,
            &desc.replace(
                " This is serious for any machine that exposes SSH to the internet.",
                "",
            ),
            GOOD_ACTION,
        ),
        &p,
    ));
    assert_eq!(field, Some(Field::Description));
    assert_eq!(
        pr,
        Problem::OtherCveId {
            id: "CVE-2006-5051".into()
        }
    );
    let own = "Patch CVE-2024-6387 by updating OpenSSH.";
    assert!(validate(&answer(GOOD_TITLE, GOOD_DESC, own), &p).is_ok());
    let other = "This is like CVE-2021-44228, so update OpenSSH.";
    assert!(matches!(
        problem(validate(&answer(GOOD_TITLE, GOOD_DESC, other), &p)).1,
        Problem::OtherCveId { .. }
    ));
}

#[test]
fn product_carried_over_from_another_cve_is_rejected() {
    // Gemma 3 270M was seen telling PAN-OS users to "upgrade Log4j".
    let p = prompt("CVE-2024-3400");
    let title = "PAN-OS GlobalProtect command injection lets attackers take over firewalls";
    let desc = "A flaw in the GlobalProtect feature of Palo Alto Networks PAN-OS lets an \
        attacker run commands on the firewall without logging in. Attackers are already using \
        it. This is critical.";
    assert!(validate(
        &answer(
            title,
            desc,
            "Apply the PAN-OS fixes from Palo Alto Networks now."
        ),
        &p
    )
    .is_ok());
    assert_eq!(
        problem(validate(
            &answer(title, desc, "Upgrade Log4j to the latest release."),
            &p
        )),
        (
            Some(Field::Action),
            Problem::UnknownName {
                name: "Log4j".into()
            }
        )
    );
}

#[test]
fn markdown_heavy_answer_is_cleaned_not_rejected() {
    let p = prompt("CVE-2024-3400");
    let raw = answer(
        "## PAN-OS GlobalProtect command injection",
        "**What:** A flaw in the *GlobalProtect* feature of `PAN-OS` lets an attacker run \
         commands.\n- It needs no login.\n- It is critical.",
        "* Apply the vendor's PAN-OS fixes.",
    );
    let out = validate(&raw, &p).unwrap();
    assert_eq!(out.simple_title, "PAN-OS GlobalProtect command injection");
    assert!(!out.simple_description.contains(['*', '`', '#']));
    assert_eq!(out.recommended_action, "Apply the vendor's PAN-OS fixes.");
}

#[test]
fn wrong_language_is_rejected() {
    let p = prompt("CVE-2024-6387");
    let spanish = "Una condición de carrera en el servidor OpenSSH permite a un atacante remoto \
        ejecutar código. El ataque no requiere autenticación. Es un problema muy grave para los \
        servidores expuestos.";
    assert_eq!(
        problem(validate(&answer(GOOD_TITLE, spanish, GOOD_ACTION), &p)),
        (Some(Field::Description), Problem::NotEnglish)
    );
    let chinese_title = "OpenSSH 服务器竞争条件漏洞";
    assert_eq!(
        problem(validate(&answer(chinese_title, GOOD_DESC, GOOD_ACTION), &p)),
        (Some(Field::Title), Problem::NotEnglish)
    );
}

#[test]
fn copy_of_the_input_is_rejected() {
    let p = prompt("CVE-2014-0160");
    let title = "OpenSSL Heartbleed bug leaks server memory";
    // The NVD text itself, cut to three sentences' worth of length.
    let copied = "The TLS and DTLS implementations in OpenSSL 1.0.1 before 1.0.1g do not properly \
        handle Heartbeat Extension packets, which allows remote attackers to obtain sensitive \
        information. It is serious.";
    let (field, pr) = problem(validate(
        &answer(title, copied, "Upgrade OpenSSL to 1.0.1g."),
        &p,
    ));
    assert_eq!(field, Some(Field::Description));
    assert!(
        matches!(pr, Problem::CopiedInput { run } if run >= 12),
        "{pr:?}"
    );

    // A short description copied word for word is rejected too (here it is
    // also a single sentence, which is found first).
    let p = prompt("CVE-2021-26855");
    let desc = p.description.clone();
    assert_eq!(
        desc,
        "Microsoft Exchange Server Remote Code Execution Vulnerability"
    );
    let copy = json!({"simple_title": "Microsoft Exchange Server flaw",
        "simple_description": desc, "recommended_action": "Patch Exchange Server now."});
    assert!(validate(&copy.to_string(), &p).is_err());
}

#[test]
fn title_must_name_something_from_the_record() {
    let p = prompt("CVE-2024-6387");
    assert_eq!(
        problem(validate(
            &answer(
                "Critical remote code execution vulnerability",
                GOOD_DESC,
                GOOD_ACTION
            ),
            &p
        )),
        (Some(Field::Title), Problem::ProductNotNamed)
    );
}

#[test]
fn links_are_rejected() {
    let p = prompt("CVE-2024-6387");
    let action = "Download the fixed OpenSSH from https://evil.example/fix now.";
    assert_eq!(
        problem(validate(&answer(GOOD_TITLE, GOOD_DESC, action), &p)),
        (
            Some(Field::Action),
            Problem::ContainsUrl {
                url: "https://evil.example/fix".into()
            }
        )
    );
}

#[test]
fn problems_read_as_instructions() {
    let e = ValidationError {
        field: Some(Field::Description),
        problem: Problem::SentenceCount {
            found: 5,
            min: 2,
            max: 3,
        },
    };
    assert_eq!(
        e.to_string(),
        "simple_description has 5 sentences; it must have 2 to 3"
    );
    let e = ValidationError {
        field: Some(Field::Action),
        problem: Problem::InventedVersion {
            version: "3.0.7".into(),
        },
    };
    assert!(e.to_string().contains("3.0.7"));
}
