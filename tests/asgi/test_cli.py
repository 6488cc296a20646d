"""`lodger serve`: a real server process with engine flags; a clear error without a model."""

from __future__ import annotations

import sys

import httpx
from serving_fixtures import free_port, wait_ready

import lodger
from lodger.cli import main


def test_serve_without_a_model_says_a_path_is_needed(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(lodger, "DEFAULT_MODEL_DIR", str(tmp_path))  # no bundled model
    assert main(["serve"]) == 2
    assert "pass a model path" in capsys.readouterr().err


def test_serve_a_bad_engine_option_fails_before_listening(llama_dir, capsys):
    assert main(["serve", "--model", str(llama_dir), "--max-model-len", "100000"]) == 2
    assert "max_position_embeddings" in capsys.readouterr().err


def test_serve_runs_uvicorn_with_engine_flags(llama_dir, tmp_path):
    import subprocess

    port = free_port()
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "lodger", "serve", "--model", str(llama_dir), "--port", str(port),
         "--api-key", "k1", "--served-model-name", "cli-model", "--max-model-len", "128",
         "--num-kv-blocks", "64", "--no-enable-prefix-caching", "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/ready", process=process)
        assert httpx.get(url + "/v1/models").status_code == 401
        models = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k1"}).json()
        assert models["data"][0]["id"] == "cli-model"
        assert models["data"][0]["max_model_len"] == 128
    finally:
        process.terminate()  # uvicorn shuts down gracefully, then re-raises SIGTERM
        assert process.wait(timeout=60) in (0, -15), log.seek(0) or log.read()
