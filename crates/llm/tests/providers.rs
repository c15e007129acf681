//! Both protocols against the local test server: request shapes, answers,
//! and each failure mapped to the error the tasks act on.

use std::time::Duration;

use openthreat_llm::test_server::{unreachable_url, Reply, TestLlmServer, TestServerOptions};
use openthreat_llm::{
    build_provider, output_schema, ChatMessage, ChatRequest, HealthState, LlmConfig, LlmError,
    Provider,
};
use serde_json::json;

fn request() -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage::system("sys"), ChatMessage::user("hello")],
        schema: output_schema(),
        schema_name: "cve_explanation".into(),
        temperature: 0.2,
        max_tokens: 400,
    }
}

fn ollama(server_url: &str) -> std::sync::Arc<dyn Provider> {
    build_provider(&LlmConfig::ollama(server_url, "llama3.2:3b").unwrap()).unwrap()
}

fn openai(base: &str, key: Option<&str>) -> std::sync::Arc<dyn Provider> {
    let mut config = LlmConfig::openai(base, "llama3.2:3b").unwrap();
    config.api_key = key.map(str::to_string);
    build_provider(&config).unwrap()
}

#[tokio::test]
async fn ollama_chat_sends_schema_without_streaming() {
    let server = TestLlmServer::start().await;
    server.push(Reply::Content("{\"a\":1}".into()));
    let answer = ollama(&server.url()).chat(&request()).await.unwrap();
    assert_eq!(answer.content, "{\"a\":1}");
    assert!(answer.completion_tokens.unwrap() > 0);
    assert!(answer.prompt_tokens.unwrap() > 0);
    assert!(answer.generation_time.is_some());

    let sent = &server.chat_requests()[0];
    assert_eq!(sent.path, "/api/chat");
    assert_eq!(sent.body["stream"], json!(false));
    assert_eq!(sent.body["format"], output_schema());
    assert_eq!(sent.body["model"], "llama3.2:3b");
    assert_eq!(
        sent.body["options"]["temperature"].as_f64().unwrap() as f32,
        0.2
    );
    assert_eq!(sent.body["options"]["num_predict"], 400);
    assert!(sent.body["keep_alive"].is_string());
    assert_eq!(
        sent.body["messages"][0],
        json!({"role": "system", "content": "sys"})
    );
}

#[tokio::test]
async fn ollama_health_lists_models() {
    let server = TestLlmServer::start().await;
    let p = ollama(&server.url());
    assert_eq!(p.health().await.state, HealthState::Ready);
    server.set_models(&["mistral:7b"]);
    let status = p.health().await;
    match &status.state {
        HealthState::ModelMissing { available, fix } => {
            assert_eq!(available, &vec!["mistral:7b".to_string()]);
            assert_eq!(fix, "ollama pull llama3.2:3b");
        }
        other => panic!("{other:?}"),
    }
    assert!(status.to_string().contains("ollama pull llama3.2:3b"));
    assert!(matches!(
        status.into_result(),
        Err(LlmError::ModelMissing { .. })
    ));
}

#[tokio::test]
async fn ollama_missing_model_on_chat_names_the_fix() {
    let server = TestLlmServer::start().await;
    server.set_models(&[]);
    let err = ollama(&server.url()).chat(&request()).await.unwrap_err();
    assert_eq!(
        err,
        LlmError::ModelMissing {
            model: "llama3.2:3b".into(),
            fix: "ollama pull llama3.2:3b".into()
        }
    );
    assert!(!err.is_retryable());
    assert!(err.is_service_down());
}

#[tokio::test]
async fn server_errors_are_transient() {
    let server = TestLlmServer::start().await;
    server.push(Reply::server_error());
    server.push(Reply::Status(503, "busy".into()));
    let p = ollama(&server.url());
    for _ in 0..2 {
        let err = p.chat(&request()).await.unwrap_err();
        assert!(matches!(err, LlmError::Transient { .. }), "{err:?}");
        assert!(err.is_retryable());
    }
}

#[tokio::test]
async fn invalid_protocol_body_is_transient() {
    let server = TestLlmServer::start().await;
    server.push(Reply::InvalidBody);
    let err = ollama(&server.url()).chat(&request()).await.unwrap_err();
    match err {
        LlmError::Transient { reason } => assert!(reason.contains("not Ollama's"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn slow_answer_times_out_as_transient() {
    let server = TestLlmServer::start().await;
    server.push(Reply::Delay(Duration::from_secs(30), Box::new(Reply::Auto)));
    let mut config = LlmConfig::ollama(&server.url(), "llama3.2:3b").unwrap();
    config.timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let err = build_provider(&config)
        .unwrap()
        .chat(&request())
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    match err {
        LlmError::Transient { reason } => assert!(reason.contains("no answer within"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    let url = unreachable_url();
    let err = ollama(&url).chat(&request()).await.unwrap_err();
    assert!(matches!(err, LlmError::Unreachable { .. }), "{err:?}");
    assert!(err.is_retryable() && err.is_service_down());
    let status = ollama(&url).health().await;
    assert!(
        matches!(status.state, HealthState::Unreachable { .. }),
        "{status:?}"
    );
    let status = openai(&format!("{url}/v1"), None).health().await;
    assert!(
        matches!(status.state, HealthState::Unreachable { .. }),
        "{status:?}"
    );
}

#[tokio::test]
async fn server_that_stops_mid_batch_becomes_unreachable() {
    let server = TestLlmServer::start().await;
    let p = ollama(&server.url());
    p.chat(&request()).await.unwrap();
    server.stop();
    tokio::task::yield_now().await;
    let err = p.chat(&request()).await.unwrap_err();
    assert!(
        matches!(
            err,
            LlmError::Unreachable { .. } | LlmError::Transient { .. }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn openai_sends_json_schema_and_bearer() {
    let server = TestLlmServer::start().await;
    server.push(Reply::Content("{}".into()));
    let p = openai(&server.openai_url(), Some("sk-test"));
    let answer = p.chat(&request()).await.unwrap();
    assert_eq!(answer.content, "{}");
    assert!(answer.completion_tokens.is_some() && answer.prompt_tokens.is_some());
    let sent = &server.chat_requests()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.authorization.as_deref(), Some("Bearer sk-test"));
    assert_eq!(sent.body["stream"], json!(false));
    assert_eq!(sent.body["response_format"]["type"], "json_schema");
    assert_eq!(
        sent.body["response_format"]["json_schema"]["schema"],
        output_schema()
    );
    assert_eq!(
        sent.body["response_format"]["json_schema"]["name"],
        "cve_explanation"
    );
    assert_eq!(
        sent.body["response_format"]["json_schema"]["strict"],
        json!(true)
    );
    assert_eq!(sent.body["max_tokens"], 400);
    assert!(
        !format!("{p:?}").contains("sk-test"),
        "the key never shows in Debug"
    );
}

#[tokio::test]
async fn openai_without_key_sends_no_authorization() {
    let server = TestLlmServer::start().await;
    openai(&server.openai_url(), None)
        .chat(&request())
        .await
        .unwrap();
    assert_eq!(server.chat_requests()[0].authorization, None);
    assert_eq!(
        openai(&server.openai_url(), None).health().await.state,
        HealthState::Ready
    );
}

#[tokio::test]
async fn openai_falls_back_to_json_object_once_and_remembers() {
    let server = TestLlmServer::start_with(TestServerOptions {
        reject_json_schema: true,
        ..TestServerOptions::default()
    })
    .await;
    let config = LlmConfig::openai(&server.openai_url(), "llama3.2:3b").unwrap();
    let p = openthreat_llm::OpenAiProvider::new(&config).unwrap();
    let first = p.chat(&request()).await.unwrap();
    assert!(first.content.contains("simple_title"));
    let second = p.chat(&request()).await.unwrap();
    assert!(second.content.contains("simple_title"));
    assert_eq!(
        p.response_format_mode(),
        openthreat_llm::provider::openai::ResponseFormatMode::JsonObject
    );

    let types: Vec<String> = server
        .chat_requests()
        .iter()
        .map(|r| {
            r.body["response_format"]["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(types, ["json_schema", "json_object", "json_object"]);
    let fallback = &server.chat_requests()[1];
    assert_eq!(fallback.body["response_format"]["schema"], output_schema());
}

#[tokio::test]
async fn openai_missing_model_and_rejections() {
    let server = TestLlmServer::start().await;
    server.set_models(&["other"]);
    let p = openai(&server.openai_url(), None);
    let err = p.chat(&request()).await.unwrap_err();
    assert!(matches!(err, LlmError::ModelMissing { .. }), "{err:?}");
    assert!(matches!(
        p.health().await.state,
        HealthState::ModelMissing { .. }
    ));

    server.set_models(&["llama3.2:3b"]);
    server.push(Reply::Status(
        401,
        r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#
            .into(),
    ));
    let err = p.chat(&request()).await.unwrap_err();
    assert!(
        matches!(err, LlmError::Rejected { status: 401, .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}
