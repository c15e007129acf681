//! Runs the LLM step on the 20 live NVD records of `../shared/data/nvd/cve`
//! against a real server and writes a report of every answer and its
//! validation result. Used by `scripts/llm-real-model.sh`; stands in for
//! `openthreat llm --now` until the CLI exists.
//!
//! ```text
//! cargo run -p openthreat-llm --example enrich_fixtures -- \
//!     --provider openai --url http://127.0.0.1:8080/v1 --model gemma3-270m \
//!     --out target/llm-report [--limit 20] [--timeout 300] [--concurrency 1]
//! ```
//!
//! Writes `<out>.json` and `<out>.md`, prints one line per CVE, and exits
//! non-zero only when the server cannot be used at all.
//!
//! `--revalidate <report.json>` runs the current validator again over the
//! raw answers recorded in a report, without a model: to see what a change
//! of the validator does to real answers.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{bail, Context};
use openthreat_llm::test_server::fixtures::nvd_cves;
use openthreat_llm::{Enricher, LlmConfig};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if let Some(path) = args.get("revalidate") {
        return revalidate(path);
    }
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert(
        "OPENTHREAT_LLM_PROVIDER".into(),
        args.get("provider").cloned().unwrap_or("openai".into()),
    );
    if let Some(url) = args.get("url") {
        env.insert("OPENTHREAT_LLM_URL".into(), url.clone());
        env.insert("OLLAMA_HOST".into(), url.clone());
    }
    if let Some(model) = args.get("model") {
        env.insert("OPENTHREAT_LLM_MODEL".into(), model.clone());
    }
    env.insert(
        "OPENTHREAT_LLM_TIMEOUT".into(),
        args.get("timeout").cloned().unwrap_or("300".into()),
    );
    env.insert(
        "OPENTHREAT_LLM_CONCURRENCY".into(),
        args.get("concurrency").cloned().unwrap_or("1".into()),
    );
    if let Ok(key) = std::env::var("OPENAI_API_KEY") {
        env.insert("OPENAI_API_KEY".into(), key);
    }
    let config = LlmConfig::from_env_map(&env)?;
    let limit: usize = args
        .get("limit")
        .map(|l| l.parse())
        .transpose()
        .context("--limit")?
        .unwrap_or(20);
    let out = args.get("out").cloned().unwrap_or("llm-report".to_string());

    println!("{}", config.describe());
    let enricher = Enricher::from_config(&config)?;
    let status = enricher.health().await;
    println!("{status}");
    if let Err(e) = status.into_result() {
        bail!("LLM not usable: {e}");
    }

    let cves: Vec<_> = nvd_cves()
        .into_iter()
        .filter(|c| !c.vuln_status.is_rejected())
        .take(limit)
        .collect();
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut valid = 0;
    let mut completion_tokens = 0u64;
    for cve in &cves {
        let t = Instant::now();
        let (result, transcript) = enricher.enrich_with_transcript(cve).await;
        let seconds = t.elapsed().as_secs_f64();
        let attempts: Vec<_> = transcript
            .attempts
            .iter()
            .map(|a| json!({"raw": a.raw, "problem": a.problem}))
            .collect();
        let row = match &result {
            Ok(o) => {
                valid += 1;
                completion_tokens += o.stats.completion_tokens;
                println!(
                    "{} ok in {seconds:.1}s{}: {}",
                    cve.cve_id,
                    if o.repaired_from.is_some() {
                        " (repaired)"
                    } else {
                        ""
                    },
                    o.enrichment.simple_title
                );
                json!({
                    "cve_id": cve.cve_id, "valid": true, "seconds": seconds,
                    "simple_title": o.enrichment.simple_title,
                    "simple_description": o.enrichment.simple_description,
                    "recommended_action": o.enrichment.recommended_action,
                    "repaired_from": o.repaired_from,
                    "calls": o.stats.calls,
                    "prompt_tokens": o.stats.prompt_tokens,
                    "completion_tokens": o.stats.completion_tokens,
                    "input_hash": o.enrichment.input_hash,
                    "attempts": attempts,
                })
            }
            Err(e) => {
                println!("{} FAILED in {seconds:.1}s: {e}", cve.cve_id);
                json!({
                    "cve_id": cve.cve_id, "valid": false, "seconds": seconds,
                    "error": e.to_string(), "error_kind": e.kind(), "attempts": attempts,
                })
            }
        };
        rows.push(row);
    }
    let total = started.elapsed().as_secs_f64();
    let per_cve = total / cves.len().max(1) as f64;
    let summary = json!({
        "provider": config.provider.as_str(),
        "model": config.model,
        "url": config.redacted_url(),
        "cves": cves.len(),
        "valid": valid,
        "total_seconds": total,
        "seconds_per_cve": per_cve,
        "completion_tokens_of_valid": completion_tokens,
    });
    println!(
        "{valid}/{} valid, {per_cve:.1} s per CVE ({total:.0} s total)",
        cves.len()
    );

    let report = json!({"summary": summary, "results": rows});
    std::fs::write(
        format!("{out}.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(format!("{out}.md"), markdown(&summary, &rows))?;
    println!("report: {out}.json, {out}.md");
    Ok(())
}

fn revalidate(path: &str) -> anyhow::Result<()> {
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).with_context(|| path.to_string())?)?;
    let cves = nvd_cves();
    let (mut total, mut valid) = (0, 0);
    for row in report["results"].as_array().into_iter().flatten() {
        let id = row["cve_id"].as_str().unwrap_or_default();
        let Some(cve) = cves.iter().find(|c| c.cve_id.as_str() == id) else {
            continue;
        };
        let prompt = openthreat_llm::build_prompt(cve);
        total += 1;
        let verdicts: Vec<String> = row["attempts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                match openthreat_llm::validate(a["raw"].as_str().unwrap_or_default(), &prompt) {
                    Ok(_) => "valid".to_string(),
                    Err(e) => e.to_string(),
                }
            })
            .collect();
        // The repair call was made because the first answer failed; with a
        // first answer that now passes, it would not have been.
        let ok = verdicts.iter().any(|v| v == "valid");
        if ok {
            valid += 1;
        }
        let shown = if verdicts.is_empty() {
            row["error"].as_str().unwrap_or_default().to_string()
        } else {
            verdicts.join(" | ")
        };
        println!("{id}: {}: {shown}", if ok { "ok" } else { "FAILED" });
    }
    println!("{valid}/{total} valid with the current validator");
    Ok(())
}

fn markdown(summary: &serde_json::Value, rows: &[serde_json::Value]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# LLM enrichment report\n");
    let _ = writeln!(
        md,
        "Model `{}` via {} at `{}`: **{} of {} valid**, {:.1} s per CVE.\n",
        summary["model"].as_str().unwrap_or_default(),
        summary["provider"].as_str().unwrap_or_default(),
        summary["url"].as_str().unwrap_or_default(),
        summary["valid"],
        summary["cves"],
        summary["seconds_per_cve"].as_f64().unwrap_or_default()
    );
    let _ = writeln!(
        md,
        "| CVE | valid | s | title or error |\n|---|---|---|---|"
    );
    for r in rows {
        let text = if r["valid"] == true {
            r["simple_title"].as_str().unwrap_or_default().to_string()
        } else {
            r["error"].as_str().unwrap_or_default().to_string()
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {} |",
            r["cve_id"].as_str().unwrap_or_default(),
            if r["valid"] == true { "yes" } else { "no" },
            r["seconds"].as_f64().unwrap_or_default(),
            text.replace('|', "\\|")
        );
    }
    for r in rows {
        let _ = writeln!(md, "\n## {}\n", r["cve_id"].as_str().unwrap_or_default());
        if r["valid"] == true {
            let _ = writeln!(
                md,
                "* title: {}\n* description: {}\n* action: {}",
                r["simple_title"].as_str().unwrap_or_default(),
                r["simple_description"].as_str().unwrap_or_default(),
                r["recommended_action"].as_str().unwrap_or_default()
            );
        }
        for (i, a) in r["attempts"].as_array().into_iter().flatten().enumerate() {
            let _ = writeln!(
                md,
                "\nAttempt {}: {}\n\n```text\n{}\n```",
                i + 1,
                a["problem"].as_str().unwrap_or("valid"),
                a["raw"].as_str().unwrap_or_default().replace("```", "'''")
            );
        }
    }
    md
}

/// `--name value` pairs; no external argument parser for one example.
fn parse_args() -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let Some(name) = flag.strip_prefix("--") else {
            bail!("unexpected argument {flag:?}; flags are --name value");
        };
        let value = it
            .next()
            .with_context(|| format!("--{name} needs a value"))?;
        out.insert(name.to_string(), value);
    }
    Ok(out)
}
