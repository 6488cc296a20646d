"""On a CUDA device: lodger (Triton kernels, CUDA graphs) against transformers.

float32: the same greedy tokens. bf16: until the first divergence every token equals HF's
with a close logprob, and at the divergence each side's token is in the other's top-5
(vLLM's check_logprobs_close idea). Skipped without CUDA; run by bench/run_gpu_e2e.sh.
"""

from __future__ import annotations

import functools
import gc

import pytest
import torch
from checkpoints import build_checkpoint
from hf_reference import hf_generate

from lodger.engine import LLM, SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PROMPTS = [
    "def fibonacci(n):",
    "The json module",
    "Return a new list containing all items from the iterable in ascending order. " * 4,
    "x",
    "import os\nimport sys\n\n",
]
NUM_NEW_TOKENS = 48
# with the prompts above, a first step of over 512 tokens: a token bucket above
# MAX_MIXED_GRAPH_TOKENS, which these small models' start-up timing keeps
LONG_PROMPT = {"prompt_token_ids": [3 + (7 * i) % 200 for i in range(460)]}
TOP_K = 5
# Real-size heads (head_dim 64/128) and GQA 4 and 8, a few layers.
SHAPES = {
    "qwen3": dict(hidden_size=512, num_attention_heads=8, num_key_value_heads=2, head_dim=128,
                  intermediate_size=1024, num_hidden_layers=4, initializer_range=0.05),
    "llama": dict(hidden_size=512, num_attention_heads=8, num_key_value_heads=1, head_dim=64,
                  intermediate_size=1024, num_hidden_layers=4, initializer_range=0.05),
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def gpu_model_dir(request, tmp_path_factory, tokenizer_dir):
    path = tmp_path_factory.mktemp(f"gpu_{request.param}")
    return build_checkpoint(request.param, path, tokenizer_dir=tokenizer_dir,
                            **SHAPES[request.param])


@functools.cache
def hf_cuda_model(model_dir: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).cuda().eval()


def hf_greedy_with_logprobs(model_dir, prompt_ids: list[int], dtype: torch.dtype):
    """transformers' greedy tokens and the log-softmax of each step's logits."""
    model = hf_cuda_model(str(model_dir), dtype)
    out = hf_generate(model, prompt_ids, NUM_NEW_TOKENS, output_logits=True,
                      return_dict_in_generate=True)
    tokens = out.sequences[0, len(prompt_ids):].tolist()
    logprobs = torch.log_softmax(torch.stack(out.logits)[:, 0].float(), dim=-1).cpu()
    return tokens, logprobs


def run_lodger(model_dir, dtype: str, enforce_eager: bool, tune_matmuls: bool = False):
    llm = LLM(model=str(model_dir), dtype=dtype, device="cuda", max_model_len=512,
              enforce_eager=enforce_eager, gpu_memory_utilization=0.5,
              tune_matmuls=tune_matmuls)
    params = SamplingParams(temperature=0.0, max_tokens=NUM_NEW_TOKENS,
                            min_tokens=NUM_NEW_TOKENS, logprobs=TOP_K)
    outputs = llm.generate([*PROMPTS, LONG_PROMPT], params, use_tqdm=False)
    graphs = llm.engine.runner.graphs
    assert (graphs is None) == enforce_eager
    if graphs is not None:
        assert graphs.num_mixed_replays > 0, "the prompts' step replayed no graph"
        assert graphs.token_buckets[-1] > 512, graphs.large_bucket_timings
        assert graphs.num_large_replays > 0, "the 520-token step replayed no graph"
        assert graphs.memory_bytes > 0, "capture() measured no memory taken"
    del llm, graphs  # give the card back for the next engine's KV-cache profiling
    gc.collect()
    torch.cuda.empty_cache()
    return [out.prompt_token_ids for out in outputs], [out.outputs[0] for out in outputs]


@pytest.mark.parametrize("enforce_eager", [True, False], ids=["eager", "cuda-graphs"])
def test_float32_greedy_equals_transformers(gpu_model_dir, enforce_eager):
    prompt_ids, completions = run_lodger(gpu_model_dir, "float32", enforce_eager)
    for ids, completion in zip(prompt_ids, completions, strict=True):
        expected, _ = hf_greedy_with_logprobs(gpu_model_dir, ids, torch.float32)
        assert completion.token_ids == expected


@pytest.mark.parametrize(
    "enforce_eager,tune_matmuls", [(True, False), (False, False), (False, True)],
    ids=["eager", "cuda-graphs", "cuda-graphs-tuned-matmuls"],
)
def test_bfloat16_logprobs_close_to_transformers(gpu_model_dir, enforce_eager, tune_matmuls):
    prompt_ids, completions = run_lodger(gpu_model_dir, "bfloat16", enforce_eager, tune_matmuls)
    for ids, completion in zip(prompt_ids, completions, strict=True):
        hf_tokens, hf_logprobs = hf_greedy_with_logprobs(gpu_model_dir, ids, torch.bfloat16)
        for step, (ours, theirs) in enumerate(zip(completion.token_ids, hf_tokens, strict=True)):
            our_top = completion.logprobs[step]
            their_top = hf_logprobs[step].topk(TOP_K).indices.tolist()
            if ours != theirs:
                assert ours in their_top, f"step {step}: our token not in HF's top-{TOP_K}"
                assert theirs in our_top, f"step {step}: HF's token not in our top-{TOP_K}"
                break
            assert our_top[ours].logprob == pytest.approx(
                hf_logprobs[step, ours].item(), abs=0.15
            ), f"step {step}"
