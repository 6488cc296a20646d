"""Sample generations and the README.md model card of lodger's bundled default model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT_PROMPTS = [
    'def read_lines(path):\n    """',
    "Module json\n\n",
    "class LRUCache:\n    \"\"\"",
    "Return the number of",
]
CHAT_PROMPTS = [
    "What does os.path.join do?",
    "How do I use itertools.groupby?",
    "What is the collections module for?",
]
MAX_NEW_TOKENS = 64


def sample_generations(model_dir: Path, device: torch.device, seed: int) -> list[dict]:
    """Greedy and sampled continuations from the saved checkpoint, through transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    model.eval()
    chats = [[{"role": "user", "content": q}] for q in CHAT_PROMPTS]
    prompts = [(p, p) for p in TEXT_PROMPTS] + [
        (c[0]["content"], tokenizer.apply_chat_template(c, tokenize=False,
                                                        add_generation_prompt=True))
        for c in chats]
    samples = []
    for shown, text in prompts:
        ids = torch.tensor([tokenizer.encode(text)], device=device)
        for mode in ("greedy", "sampled"):
            torch.manual_seed(seed)
            kwargs = ({"do_sample": False, "temperature": None, "top_p": None}
                      if mode == "greedy" else {"do_sample": True})
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=MAX_NEW_TOKENS,
                                     attention_mask=torch.ones_like(ids), **kwargs)
            completion = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            samples.append({"prompt": shown, "mode": mode, "completion": completion})
    return samples


def _fence(text: str) -> str:
    return "```text\n" + text.replace("```", "`\u200b``") + "\n```"


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def render(cfg: dict, data_meta: dict, stats: dict, samples: list[dict],
           sample_device: str) -> str:
    """The model card, in Markdown."""
    packages = ", ".join(f"{k} {v}" for k, v in sorted(data_meta["packages"].items()))
    lines = [
        "# lodger default model",
        "",
        "A small Llama-architecture language model bundled with lodger so that `lodger serve`",
        "works offline on any machine. It was trained from scratch by",
        "`scripts/train_default_model.py` on docstrings: it writes docstring-like English and",
        "Python and answers questions about Python APIs in a loose, often wrong way. It is a",
        "demo and test model, not a useful assistant.",
        "",
        "## Model",
        "",
        f"- parameters: {stats['num_parameters']:,} (embeddings tied with the output layer)",
        f"- layers {cfg['num_layers']}, hidden {cfg['hidden_size']}, heads {cfg['num_heads']} "
        f"(KV heads {cfg['num_kv_heads']}), MLP {cfg['intermediate_size']}, "
        f"context {cfg['seq_len']} tokens",
        f"- tokenizer: byte-level BPE, {cfg['vocab_size']} tokens; `<|endoftext|>` (id 0) is",
        "  EOS, `<|im_start|>` / `<|im_end|>` (ids 1, 2) frame ChatML messages; the chat",
        "  template is in tokenizer_config.json",
        "- weights: bfloat16 safetensors",
        "",
        "## Data",
        "",
        f"- source: docstrings of the Python {data_meta['python_version']} standard library",
        "  (modules, classes, functions, methods), the `help()` topics of pydoc_data, and",
        f"  the docstrings of these installed packages: {packages}",
        f"- {data_meta['num_documents']:,} documents and {data_meta['num_chats']:,} chat "
        f"examples (a question built from an object's name, answered with its signature and "
        f"docstring); {data_meta['num_chars']:,} characters, {data_meta['num_tokens']:,} tokens",
        "- the text keeps the licenses of the projects it comes from (the PSF license for",
        "  Python's own documentation)",
        "",
        "## Training",
        "",
        f"- {stats['steps']:,} steps of {cfg['batch_size']} x {cfg['seq_len']} tokens "
        f"({stats['tokens_seen']:,} tokens, {stats['epochs']} epochs) on {stats['device']} "
        f"in {stats['train_seconds']} s",
        f"- AdamW, lr {cfg['lr']} with {cfg['warmup_steps']} warmup steps and cosine decay to "
        f"{cfg['min_lr_ratio']} x, weight decay {cfg['weight_decay']}, seed {cfg['seed']}",
        f"- final training loss {stats['final_train_loss']} (mean of the last 50 steps), "
        f"held-out loss {stats['val_loss']} (1% of the 1024-token windows; a docstring also",
        "  appears as a chat answer, so this measures fit more than generalisation)",
        f"- reproduce: `python scripts/train_default_model.py --out DIR --seed {cfg['seed']} "
        f"--steps {stats['planned_steps']}`"
        + (f" (this run stopped early at step {stats['steps']})"
           if stats["steps"] < stats["planned_steps"] else ""),
        "",
        "## Sample generations",
        "",
        f"Through transformers {transformers_version()} on {sample_device}, {MAX_NEW_TOKENS} "
        "new tokens; `sampled` uses the generation_config.json defaults (temperature 0.7,",
        "top_p 0.9) with torch.manual_seed(seed) before each generation.",
        "",
    ]
    for sample in samples:
        lines += [f"**{sample['mode']}**, prompt {json.dumps(sample['prompt'])}:", "",
                  _fence(sample["completion"]), ""]
    return "\n".join(lines)
