//! One CVE in, one validated [`Enrichment`] out: the whole LLM step as the
//! application's tasks see it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Semaphore;

use openthreat_core::{Cve, Enrichment};

use crate::config::LlmConfig;
use crate::error::LlmError;
use crate::observe::{CallEvent, CallOutcome, LlmObserver};
use crate::prompt::{build_prompt, output_schema, Prompt, SCHEMA_NAME};
use crate::provider::{
    build_provider, ChatMessage, ChatRequest, ChatResponse, ModelStatus, Provider,
};
use crate::validate::{validate, ValidationError};

/// Enriches CVEs through one provider, with a bound on calls in flight.
///
/// Build one per process and share it (`Arc<Enricher>`): the semaphore
/// inside is what keeps LLM calls at `OPENTHREAT_LLM_CONCURRENCY` however
/// many worker slots run LLM tasks, so slow generations cannot occupy every
/// slot and stall NVD updates or stats tasks.
#[derive(Debug)]
pub struct Enricher {
    provider: Arc<dyn Provider>,
    limiter: Arc<Semaphore>,
    concurrency: usize,
    temperature: f32,
    max_tokens: u32,
    /// Told about every call and failed enrichment (the application's metrics).
    observer: Option<Arc<dyn LlmObserver>>,
}

/// A successful enrichment and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrichOutcome {
    /// Ready to store: validated text, model, time and input hash.
    pub enrichment: Enrichment,
    pub stats: EnrichStats,
    /// The first answer failed validation and the repair attempt passed;
    /// this was its problem.
    pub repaired_from: Option<String>,
}

/// What the model answered on each call of one enrichment and what the
/// validator said; for reports and debugging (`--verbose`), never stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transcript {
    pub attempts: Vec<AttemptRecord>,
}

/// One call's raw answer and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// The assistant message exactly as received.
    pub raw: String,
    /// `None` when it passed validation, else the problem.
    pub problem: Option<String>,
}

/// Tokens and time of one enrichment (one or two calls).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EnrichStats {
    /// Chat calls made: 1, or 2 with a repair attempt.
    pub calls: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Wall time of the calls, without waiting for a concurrency permit.
    pub elapsed: Duration,
    /// Time spent waiting for permits (other calls in flight), summed over
    /// the calls.
    pub queued: Duration,
    /// Generation time as the server reported it, summed, when it did.
    pub generation_time: Option<Duration>,
}

impl EnrichStats {
    /// Generated tokens per second: by the server's generation time when it
    /// reports one (Ollama), else by wall time.
    pub fn tokens_per_second(&self) -> Option<f64> {
        let secs = self.generation_time.unwrap_or(self.elapsed).as_secs_f64();
        (secs > 0.0 && self.completion_tokens > 0).then(|| self.completion_tokens as f64 / secs)
    }

    fn add(&mut self, r: &ChatResponse) {
        self.calls += 1;
        self.prompt_tokens += r.prompt_tokens.unwrap_or(0);
        self.completion_tokens += r.completion_tokens.unwrap_or(0);
        self.elapsed += r.elapsed;
        if let Some(g) = r.generation_time {
            self.generation_time = Some(self.generation_time.unwrap_or_default() + g);
        }
    }
}

impl Enricher {
    /// An enricher over any provider; `concurrency` is clamped to at least 1.
    pub fn new(provider: Arc<dyn Provider>, concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        let defaults = LlmConfig::default();
        Enricher {
            provider,
            limiter: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            temperature: defaults.temperature,
            max_tokens: defaults.max_tokens,
            observer: None,
        }
    }

    /// Reports every call (time, outcome) and every failed enrichment to
    /// `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn LlmObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The provider and limits the configuration names.
    pub fn from_config(config: &LlmConfig) -> Result<Self, LlmError> {
        let mut e = Enricher::new(build_provider(config)?, config.concurrency);
        e.temperature = config.temperature;
        e.max_tokens = config.max_tokens;
        Ok(e)
    }

    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.provider
    }

    /// The model name stored with each enrichment.
    pub fn model(&self) -> &str {
        self.provider.model()
    }

    /// Calls allowed in flight at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Whether the server answers and has the model (not bounded by the
    /// concurrency limit: it is cheap and must answer while generations run).
    pub async fn health(&self) -> ModelStatus {
        self.provider.health().await
    }

    /// Enriches one CVE: one structured call, validation, and when the
    /// answer fails validation one repair call that names the problem.
    ///
    /// Errors: [`LlmError::BadOutput`] when the repaired answer fails too
    /// (a failed attempt for the application to count); the provider's
    /// errors otherwise. Nothing is returned that did not pass validation.
    pub async fn enrich(&self, cve: &Cve) -> Result<EnrichOutcome, LlmError> {
        self.observed(cve, None).await
    }

    /// [`Enricher::enrich`], also returning each raw answer and its verdict.
    pub async fn enrich_with_transcript(
        &self,
        cve: &Cve,
    ) -> (Result<EnrichOutcome, LlmError>, Transcript) {
        let mut transcript = Transcript::default();
        let result = self.observed(cve, Some(&mut transcript)).await;
        (result, transcript)
    }

    /// [`Enricher::run`], reporting a failure to the observer.
    async fn observed(
        &self,
        cve: &Cve,
        transcript: Option<&mut Transcript>,
    ) -> Result<EnrichOutcome, LlmError> {
        let result = self.run(cve, transcript).await;
        if let (Err(e), Some(o)) = (&result, &self.observer) {
            o.failure(self.provider.kind(), self.provider.model(), e);
        }
        result
    }

    async fn run(
        &self,
        cve: &Cve,
        mut transcript: Option<&mut Transcript>,
    ) -> Result<EnrichOutcome, LlmError> {
        let mut note =
            |raw: &str, verdict: &Result<crate::validate::ValidOutput, ValidationError>| {
                if let Some(t) = transcript.as_deref_mut() {
                    t.attempts.push(AttemptRecord {
                        raw: raw.to_string(),
                        problem: verdict.as_ref().err().map(ToString::to_string),
                    });
                }
            };
        let prompt = build_prompt(cve);
        let mut stats = EnrichStats::default();
        let mut messages = prompt.messages();
        let first = self.call(&messages, &mut stats.queued).await?;
        stats.add(&first);
        let verdict = validate(&first.content, &prompt);
        self.observe(first.elapsed, verdict.is_ok());
        note(&first.content, &verdict);
        let problem = match verdict {
            Ok(out) => return Ok(self.outcome(&prompt, out, stats, None)),
            Err(problem) => problem,
        };
        tracing::debug!(cve = %prompt.cve_id, %problem, "LLM answer rejected; asking for a repair");

        messages.push(ChatMessage::assistant(first.content));
        messages.push(prompt.repair_message(&problem.to_string()));
        let second = self.call(&messages, &mut stats.queued).await?;
        stats.add(&second);
        let verdict = validate(&second.content, &prompt);
        self.observe(second.elapsed, verdict.is_ok());
        note(&second.content, &verdict);
        match verdict {
            Ok(out) => Ok(self.outcome(&prompt, out, stats, Some(problem.to_string()))),
            Err(again) => Err(bad_output(&problem, &again)),
        }
    }

    /// One chat call under the concurrency limit; the wait for a permit is
    /// added to `queued`.
    ///
    /// The permit covers the call only, not validation or building the
    /// repair request: a server with P slots is kept busy by P permits only
    /// if a permit is handed on the moment an answer arrives (holding it
    /// through our own processing left a slot idle on every call, some 5 %
    /// of the server's capacity in the pipeline benchmark).
    async fn call(
        &self,
        messages: &[ChatMessage],
        queued: &mut Duration,
    ) -> Result<ChatResponse, LlmError> {
        let request = ChatRequest {
            messages: messages.to_vec(),
            schema: output_schema(),
            schema_name: SCHEMA_NAME.to_string(),
            temperature: self.temperature,
            max_tokens: self.max_tokens,
        };
        let waited = Instant::now();
        // The semaphore is never closed, so acquiring cannot fail; map it
        // anyway rather than panic.
        let _permit = self
            .limiter
            .acquire()
            .await
            .map_err(|_| LlmError::Transient {
                reason: "LLM concurrency limiter closed".to_string(),
            })?;
        *queued += waited.elapsed();
        let started = Instant::now();
        let result = self.provider.chat(&request).await;
        if let Err(e) = &result {
            // Answered calls are reported once validated, with their verdict.
            self.report(started.elapsed(), CallOutcome::Failed(e.kind()));
        }
        result
    }

    /// Reports an answered call and whether its answer passed validation.
    fn observe(&self, elapsed: Duration, valid: bool) {
        let outcome = if valid {
            CallOutcome::Valid
        } else {
            CallOutcome::Invalid
        };
        self.report(elapsed, outcome);
    }

    fn report(&self, elapsed: Duration, outcome: CallOutcome) {
        if let Some(o) = &self.observer {
            o.call(&CallEvent {
                provider: self.provider.kind(),
                model: self.provider.model(),
                elapsed,
                outcome,
            });
        }
    }

    fn outcome(
        &self,
        prompt: &Prompt,
        out: crate::validate::ValidOutput,
        stats: EnrichStats,
        repaired_from: Option<String>,
    ) -> EnrichOutcome {
        EnrichOutcome {
            enrichment: Enrichment {
                simple_title: out.simple_title,
                simple_description: out.simple_description,
                recommended_action: Some(out.recommended_action),
                model: self.provider.model().to_string(),
                processed_at: Utc::now(),
                input_hash: prompt.input_hash.clone(),
            },
            stats,
            repaired_from,
        }
    }
}

fn bad_output(first: &ValidationError, last: &ValidationError) -> LlmError {
    LlmError::BadOutput {
        reason: if first == last {
            format!("{last} (also after a repair attempt)")
        } else {
            format!("{last} (after a repair attempt for: {first})")
        },
    }
}
