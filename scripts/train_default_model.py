"""Train lodger's bundled default model: a small Llama on Python documentation.

    python scripts/train_default_model.py --out lodger_pkg/default_model --time-budget 300

Stages (each a function below):
1. data: extract the corpus (scripts/default_model_corpus.py), train a byte-level BPE
   tokenizer with `tokenizers`, tokenize everything into one uint16 stream. Cached in
   --work-dir and reused while the data arguments match, so the data can be prepared on one
   machine (`--prepare-only`) and the training run on another with the very same tokens.
2. train: transformers' LlamaForCausalLM (training only: lodger loads the result with its own
   loader), AdamW, linear warmup then cosine decay, bf16 autocast on CUDA, float32 on CPU.
3. save: safetensors in bf16, config.json, generation_config.json, the tokenizer files with a
   ChatML chat template in tokenizer_config.json, and a README.md model card with the data
   size, parameter count, steps, losses and sample generations.

Deterministic given --seed and --steps (data order, initialisation, chat question wording);
CUDA kernels may still differ in the last bits between runs. With --time-budget instead of
--steps, the number of steps is chosen after timing the first warmup steps (whose learning
rate does not depend on the total), and the card records it: `--steps N` reproduces the run.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import default_model_card  # noqa: E402
import default_model_corpus  # noqa: E402

EOS, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [EOS, IM_START, IM_END]  # ids 0, 1, 2
# ChatML: every message framed by <|im_start|>role\n ... <|im_end|>\n; a list content (OpenAI
# content parts) contributes its text parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
DEFAULT_PACKAGES = ["numpy", "torch", "sympy", "networkx", "matplotlib", "django", "jinja2",
                    "pygments", "click", "rich", "pyparsing", "setuptools", "packaging",
                    "dateutil", "starlette", "pydantic", "httpx", "anyio", "fsspec", "mpmath",
                    "PIL", "tqdm", "yaml"]


@dataclass(slots=True)
class TrainConfig:
    """Everything that decides the trained weights (recorded in the model card)."""

    seed: int = 0
    vocab_size: int = 4096          # BPE vocabulary, special tokens included
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 6              # head_dim = hidden_size // num_heads = 64
    num_kv_heads: int = 3           # grouped-query attention, 2 query heads per KV head
    intermediate_size: int = 1024
    seq_len: int = 1024             # training context; also max_position_embeddings
    batch_size: int = 32            # sequences per optimizer step
    lr: float = 2e-3
    min_lr_ratio: float = 0.1       # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    max_epochs: float = 8.0         # upper bound on passes over the training tokens
    steps: int | None = None        # fixed step count; None: chosen from the time budget
    time_budget_s: float = 300.0    # training wall time when steps is None
    timing_steps: int = 20          # steps timed before choosing steps (<= warmup_steps)


@dataclass(slots=True)
class TokenData:
    """The tokenized corpus and what it came from."""

    tokens: np.ndarray      # uint16 stream of all documents, each followed by <|endoftext|>
    meta: dict              # corpus statistics for the model card
    tokenizer_dir: Path     # saved PreTrainedTokenizerFast files


def train_tokenizer(texts: list[str], cfg: TrainConfig, out_dir: Path):
    """Byte-level BPE with the three special tokens first; saved as PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=EOS,
                                   extra_special_tokens=[IM_START, IM_END],
                                   model_max_length=cfg.seq_len)
    fast.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir, save_jinja_files=False)  # template inside tokenizer_config
    # The classic field names, which transformers 4.x and 5.x both read.
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["additional_special_tokens"] = config.pop("extra_special_tokens")
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return fast


def prepare_data(cfg: TrainConfig, work_dir: Path, packages: list[str],
                 rebuild: bool) -> TokenData:
    """Corpus -> tokenizer -> token stream, cached in work_dir while the arguments match."""
    key = {"seed": cfg.seed, "vocab_size": cfg.vocab_size, "packages": packages}
    meta_path, tokens_path = work_dir / "meta.json", work_dir / "tokens.npy"
    tokenizer_dir = work_dir / "tokenizer"
    if not rebuild and meta_path.exists() and tokens_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["key"] == key:
            print(f"data: reusing {work_dir} ({meta['num_tokens']:,} tokens)", flush=True)
            return TokenData(np.load(tokens_path), meta, tokenizer_dir)
    start = time.perf_counter()
    corpus = default_model_corpus.build_corpus(cfg.seed, packages)
    print(f"data: {len(corpus.documents):,} documents, {len(corpus.chats):,} chats, "
          f"{corpus.num_chars():,} chars in {time.perf_counter() - start:.0f}s", flush=True)
    tokenizer = train_tokenizer(corpus.documents + [m["content"] for c in corpus.chats
                                                    for m in c], cfg, tokenizer_dir)
    chat_texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in corpus.chats]
    texts = corpus.documents + chat_texts
    order = np.random.default_rng(cfg.seed).permutation(len(texts))
    encoded = tokenizer.backend_tokenizer.encode_batch([texts[i] for i in order])
    eos_id = tokenizer.eos_token_id
    tokens = np.fromiter((t for e in encoded for t in (*e.ids, eos_id)), dtype=np.uint16)
    meta = {"key": key, "python_version": corpus.python_version, "packages": corpus.packages,
            "num_documents": len(corpus.documents), "num_chats": len(corpus.chats),
            "num_chars": corpus.num_chars(), "num_tokens": int(tokens.size)}
    np.save(tokens_path, tokens)
    meta_path.write_text(json.dumps(meta, indent=1))
    print(f"data: {tokens.size:,} tokens, ready in {time.perf_counter() - start:.0f}s",
          flush=True)
    return TokenData(tokens, meta, tokenizer_dir)


def build_model(cfg: TrainConfig):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads, max_position_embeddings=cfg.seq_len,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=None, eos_token_id=0,
        pad_token_id=0, initializer_range=0.02)
    config._attn_implementation = "sdpa"
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Linear warmup (independent of total_steps), then cosine decay to min_lr_ratio * lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def split_windows(tokens: np.ndarray, cfg: TrainConfig, device) -> tuple:
    """All (seq_len + 1)-token windows on the device, shuffled once, 1% held out for val."""
    stream = torch.from_numpy(tokens.astype(np.int64)).to(device)
    windows = stream.unfold(0, cfg.seq_len + 1, cfg.seq_len)
    order = torch.from_numpy(np.random.default_rng(cfg.seed + 1).permutation(len(windows)))
    num_val = max(cfg.batch_size // 4, len(windows) // 100)
    assert len(windows) > num_val + cfg.batch_size, "corpus too small for one training batch"
    return windows[order[num_val:].to(device)], windows[order[:num_val].to(device)]


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch_loss(model, batch: torch.Tensor, device) -> torch.Tensor:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
        logits = model(input_ids=batch[:, :-1]).logits
    return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())


@torch.no_grad()
def eval_loss(model, windows: torch.Tensor, cfg: TrainConfig, device) -> float:
    model.eval()
    losses = [batch_loss(model, windows[i:i + cfg.batch_size], device).item()
              for i in range(0, len(windows), cfg.batch_size)]
    model.train()
    return float(np.mean(losses))


def train(cfg: TrainConfig, data: TokenData, device) -> tuple:
    """Returns (model, stats dict for the card)."""
    train_windows, val_windows = split_windows(data.tokens, cfg, device)
    steps_per_epoch = len(train_windows) // cfg.batch_size
    max_steps = max(1, int(cfg.max_epochs * steps_per_epoch))
    total_steps = cfg.steps if cfg.steps is not None else max_steps
    model = build_model(cfg).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    perm, losses, start, step = torch.randperm(len(train_windows), generator=gen), [], 0.0, 0
    timing_start = None
    while step < total_steps:
        if step == 1:
            _sync(device)
            timing_start = time.perf_counter()  # step 0 pays for CUDA/kernel start-up
            start = timing_start
        if cfg.steps is None and step == cfg.timing_steps + 1:
            _sync(device)
            seconds_per_step = (time.perf_counter() - timing_start) / cfg.timing_steps
            budget_steps = int(cfg.time_budget_s / seconds_per_step)
            total_steps = max(step, min(max_steps, budget_steps))
            print(f"train: {seconds_per_step * 1000:.0f} ms/step -> {total_steps} steps "
                  f"({total_steps / steps_per_epoch:.1f} epochs)", flush=True)
        offset = (step % steps_per_epoch) * cfg.batch_size
        if offset == 0 and step > 0:
            perm = torch.randperm(len(train_windows), generator=gen)
        batch = train_windows[perm[offset:offset + cfg.batch_size].to(device)]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, cfg)
        loss = batch_loss(model, batch, device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        step += 1
        if step % 100 == 0 or step == total_steps:
            recent = torch.stack(losses[-100:]).mean().item()
            print(f"train: step {step}/{total_steps} loss {recent:.3f}", flush=True)
            if step % 500 == 0:  # held-out loss along the way (no randomness consumed)
                print(f"train: step {step} val loss "
                      f"{eval_loss(model, val_windows, cfg, device):.3f}", flush=True)
            overdue = time.perf_counter() - start > 1.25 * cfg.time_budget_s
            if cfg.steps is None and step < total_steps and overdue:
                print("train: stopping early, 25% over the time budget", flush=True)
                break
    train_seconds = time.perf_counter() - start if start else 0.0
    stats = {"steps": step, "planned_steps": total_steps,
             "epochs": round(step / steps_per_epoch, 2),
             "tokens_seen": step * cfg.batch_size * cfg.seq_len,
             "final_train_loss": round(torch.stack(losses[-50:]).mean().item(), 4),
             "val_loss": round(eval_loss(model, val_windows, cfg, device), 4),
             "train_seconds": round(train_seconds, 1),
             "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    return model, stats


def save_checkpoint(model, cfg: TrainConfig, data: TokenData, out_dir: Path) -> None:
    from transformers import GenerationConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.architectures = ["LlamaForCausalLM"]
    model.to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
    model.to(torch.float32)
    generation = GenerationConfig(eos_token_id=[0, 2], pad_token_id=0, do_sample=True,
                                  temperature=0.7, top_p=0.9)
    generation.save_pretrained(out_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(data.tokenizer_dir / name, out_dir / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory")
    parser.add_argument("--work-dir", type=Path, default=Path(".cache/default_model"),
                        help="cache of the corpus tokens and tokenizer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None,
                        help="fixed number of optimizer steps (default: from --time-budget)")
    parser.add_argument("--time-budget", type=float, default=300.0,
                        help="seconds of training when --steps is not given")
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--packages", nargs="*", default=DEFAULT_PACKAGES,
                        help="installed packages whose docstrings join the stdlib's")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prepare-only", action="store_true", help="stop after the data")
    parser.add_argument("--rebuild-data", action="store_true", help="ignore the data cache")
    parser.add_argument("--card-only", action="store_true",
                        help="rewrite README.md of an existing --out from its training_stats.json")
    args = parser.parse_args(argv)
    cfg = TrainConfig(seed=args.seed, steps=args.steps, time_budget_s=args.time_budget,
                      batch_size=args.batch_size)
    assert cfg.timing_steps <= cfg.warmup_steps, "timed steps must lie inside the warmup"
    torch.backends.cuda.matmul.allow_tf32 = True
    data = prepare_data(cfg, args.work_dir, sorted(args.packages), args.rebuild_data)
    if args.prepare_only:
        return 0
    device = torch.device(args.device)
    stats_path = args.out / "training_stats.json"
    if not args.card_only:
        model, stats = train(cfg, data, device)
        stats["num_parameters"] = sum(p.numel() for p in model.parameters())
        print(f"train: {json.dumps(stats)}", flush=True)
        save_checkpoint(model, cfg, data, args.out)
        stats_path.write_text(json.dumps({"config": asdict(cfg), "stats": stats}, indent=1))
    recorded = json.loads(stats_path.read_text())
    samples = default_model_card.sample_generations(args.out, device, cfg.seed)
    card = default_model_card.render(recorded["config"], data.meta, recorded["stats"], samples,
                                     sample_device=device.type)
    (args.out / "README.md").write_text(card)
    print(card, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
