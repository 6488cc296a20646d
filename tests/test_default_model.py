"""The bundled default model (lodger_pkg/default_model): a real HF checkpoint that lodger
loads with no model argument, that matches transformers token for token, and that the HTTP
API serves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lodger import DEFAULT_MODEL_DIR, default_model_path

MODEL_DIR = Path(DEFAULT_MODEL_DIR)
PROMPTS = ['def read_lines(path):\n    """', "Return the number of", "Module json\n\n"]
MAX_TOKENS = 24


def test_checkpoint_files_are_a_small_llama_with_a_chatml_tokenizer():
    assert Path(default_model_path()) == MODEL_DIR
    sizes = {p.name: p.stat().st_size for p in MODEL_DIR.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "README.md"} <= set(sizes)
    assert sum(sizes.values()) <= 30 * 1024 * 1024
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(MODEL_DIR / "model.safetensors"))
    num_parameters = sum(t.numel() for t in tensors.values())
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert 5_000_000 <= num_parameters <= 15_000_000
    tokenizer_config = json.loads((MODEL_DIR / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tokenizer_config["chat_template"]
    assert tokenizer_config["eos_token"] == "<|endoftext|>"
    card = (MODEL_DIR / "README.md").read_text()
    assert f"{num_parameters:,}" in card and "final training loss" in card


def test_chat_template_renders_chatml():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        0, 1, 2]


@pytest.fixture(scope="module")
def llm():
    from lodger.engine import LLM

    return LLM(num_kv_blocks=64)  # no model: the bundled one


def _strip_eos(ids: list[int]) -> list[int]:
    while ids and ids[-1] in (0, 2):  # <|endoftext|>, <|im_end|>: generation_config's EOS ids
        ids = ids[:-1]
    return ids


def test_greedy_generation_is_text_and_equals_transformers(llm):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lodger.engine import SamplingParams

    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=MAX_TOKENS),
                           use_tqdm=False)
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    for prompt, output in zip(PROMPTS, outputs, strict=True):
        completion = output.outputs[0]
        assert completion.text.strip(), f"empty greedy text for {prompt!r}"
        ids = torch.tensor([tokenizer.encode(prompt)])
        with torch.no_grad():
            hf = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=MAX_TOKENS, temperature=None, top_p=None)
        expected = _strip_eos(hf[0, ids.shape[1]:].tolist())
        assert expected and _strip_eos(list(completion.token_ids)) == expected


def test_chat_through_the_offline_api_answers(llm):
    from lodger.engine import SamplingParams

    out = llm.chat([{"role": "user", "content": "What does os.path.join do?"}],
                   SamplingParams(temperature=0, max_tokens=32), use_tqdm=False)
    assert out[0].outputs[0].text.strip()


def test_chat_completion_over_http_returns_text():
    from starlette.testclient import TestClient

    from lodger.asgi import create_app

    with TestClient(create_app(num_kv_blocks=64)) as client:  # no model: the bundled one
        response = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "What is the collections module for?"}],
            "max_tokens": 32, "temperature": 0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "default_model"
    assert body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] > 0
