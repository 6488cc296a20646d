"""What transformers itself produces on a checkpoint: the reference lodger must match."""

from __future__ import annotations

import copy
import functools

import torch


@functools.cache
def hf_model(model_dir: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


@functools.cache
def hf_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def hf_generate(model, prompt_token_ids: list[int], max_new_tokens: int, **config_fields):
    """transformers' own greedy `generate` of exactly max_new_tokens tokens.

    EOS is masked until then (min_new_tokens), as lodger's `min_tokens=max_tokens` does: the
    two never stop early and never differ on whether EOS may be picked.
    """
    config = copy.deepcopy(model.generation_config)
    config.do_sample = False
    config.max_new_tokens = config.min_new_tokens = max_new_tokens
    config.eos_token_id, config.pad_token_id = model.config.eos_token_id, 0
    for name, value in config_fields.items():
        setattr(config, name, value)
    input_ids = torch.tensor([prompt_token_ids], device=model.device)
    with torch.no_grad():
        return model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                              generation_config=config)


def hf_greedy(model_dir: str, prompt_token_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy ids from transformers on CPU in float32 (see hf_generate)."""
    out = hf_generate(hf_model(str(model_dir)), prompt_token_ids, max_new_tokens)
    return out[0, len(prompt_token_ids):].tolist()


def hf_logprobs(model_dir: str, prompt_token_ids: list[int], output_ids: list[int]) -> torch.Tensor:
    """log_softmax of transformers' logits at each generated position: [len(output_ids), V]."""
    model = hf_model(str(model_dir))
    ids = torch.tensor([prompt_token_ids + output_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    start = len(prompt_token_ids) - 1
    return torch.log_softmax(logits[start : start + len(output_ids)], dim=-1)
