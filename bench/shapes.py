"""Named model shapes, built as real Hugging Face checkpoint directories with random weights.

A random-weight model does the same work as a trained one of its shape as long as EOS is
ignored, so the benchmarks measure the engine's real loading and serving path without
downloading anything. Weights are written straight into safetensors files by their HF
tensor names (drawn on the GPU when there is one: llama3-8b's 16 GB take seconds), sharded
like published checkpoints, with an index file. A directory is reused while its recorded
shape matches.

Weights drawn on the GPU are drawn in a child process: the benchmark's own process (which
starts the engine in a worker or a server beside it, or runs it itself) would otherwise keep
a CUDA context and the generator's cached blocks, 1-2 GB that the engine's KV-cache sizing
counts as in use (the first run on a fresh machine had ~3% fewer KV blocks than the next).
"""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.bench_tokenizer import save_bench_tokenizer

SHARD_BYTES = 4 * 1024**3  # split the weights into files of at most ~4 GiB, as HF does
MARKER = "bench_shape.json"  # written last: its presence means the directory is complete


@dataclass(slots=True, frozen=True)
class Shape:
    """The transformers config fields of a decoder-only model shape."""

    model_type: str             # "llama" or "qwen3"
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    rope_scaling: dict | None = field(default=None, hash=False)

    @property
    def architecture(self) -> str:
        return {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}[self.model_type]

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes


SHAPES: dict[str, Shape] = {
    "qwen3-0.6b": Shape("qwen3", hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                        num_key_value_heads=8, head_dim=128, intermediate_size=3072,
                        vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
                        rms_norm_eps=1e-6, max_position_embeddings=40960),
    "llama3-8b": Shape("llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=128, intermediate_size=14336,
                       vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0,
                       rms_norm_eps=1e-5, max_position_embeddings=131072,
                       rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 8192}),
    # CPU smoke tests: the same code path in milliseconds (vocab above the prompt ids' 10000).
    "tiny": Shape("llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, intermediate_size=128, vocab_size=10240,
                  tie_word_embeddings=False, rope_theta=10000.0, rms_norm_eps=1e-5,
                  max_position_embeddings=4096),
}


def config_json(shape: Shape, dtype: str) -> dict:
    config = {
        "architectures": [shape.architecture], "model_type": shape.model_type,
        "hidden_size": shape.hidden_size, "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads, "head_dim": shape.head_dim,
        "intermediate_size": shape.intermediate_size, "vocab_size": shape.vocab_size,
        "tie_word_embeddings": shape.tie_word_embeddings, "rope_theta": shape.rope_theta,
        "rms_norm_eps": shape.rms_norm_eps,
        "max_position_embeddings": shape.max_position_embeddings, "hidden_act": "silu",
        "attention_bias": False, "bos_token_id": None, "eos_token_id": 0, "pad_token_id": 0,
        "torch_dtype": dtype, "dtype": dtype,
    }
    if shape.rope_scaling is not None:
        config["rope_scaling"] = shape.rope_scaling
    return config


def tensor_shapes(shape: Shape) -> dict[str, tuple[int, ...]]:
    """Every weight of the checkpoint by its HF name, in file order."""
    hidden, head_dim = shape.hidden_size, shape.head_dim
    q_size = shape.num_attention_heads * head_dim
    kv_size = shape.num_key_value_heads * head_dim
    tensors = {"model.embed_tokens.weight": (shape.vocab_size, hidden)}
    for i in range(shape.num_hidden_layers):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = (hidden,)
        tensors[p + "self_attn.q_proj.weight"] = (q_size, hidden)
        tensors[p + "self_attn.k_proj.weight"] = (kv_size, hidden)
        tensors[p + "self_attn.v_proj.weight"] = (kv_size, hidden)
        tensors[p + "self_attn.o_proj.weight"] = (hidden, q_size)
        if shape.model_type == "qwen3":
            tensors[p + "self_attn.q_norm.weight"] = (head_dim,)
            tensors[p + "self_attn.k_norm.weight"] = (head_dim,)
        tensors[p + "post_attention_layernorm.weight"] = (hidden,)
        tensors[p + "mlp.gate_proj.weight"] = (shape.intermediate_size, hidden)
        tensors[p + "mlp.up_proj.weight"] = (shape.intermediate_size, hidden)
        tensors[p + "mlp.down_proj.weight"] = (hidden, shape.intermediate_size)
    tensors["model.norm.weight"] = (hidden,)
    if not shape.tie_word_embeddings:
        tensors["lm_head.weight"] = (shape.vocab_size, hidden)
    return tensors


def _shard_plan(tensors: dict[str, tuple[int, ...]], dtype_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    shard_bytes = 0
    for name, dims in tensors.items():
        size = dtype_bytes
        for d in dims:
            size *= d
        if shards[-1] and shard_bytes + size > SHARD_BYTES:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(name)
        shard_bytes += size
    return shards


def _random_weight(dims: tuple[int, ...], dtype, device, generator):
    import torch

    if len(dims) == 1:  # norms: ones, as a freshly initialised model has
        return torch.ones(dims, dtype=dtype, device=device)
    weight = torch.empty(dims, dtype=dtype, device=device)
    return weight.normal_(0.0, 0.02, generator=generator)


def write_weights(shape: Shape, path: Path, dtype_name: str, device: str, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    dtype = getattr(torch, dtype_name)
    dtype_bytes = torch.empty((), dtype=dtype).element_size()
    tensors = tensor_shapes(shape)
    shards = _shard_plan(tensors, dtype_bytes)
    generator = torch.Generator(device=device).manual_seed(seed)
    weight_map = {}
    for index, names in enumerate(shards):
        file = ("model.safetensors" if len(shards) == 1
                else f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors")
        weights = {n: _random_weight(tensors[n], dtype, device, generator).cpu() for n in names}
        save_file(weights, str(path / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    if len(shards) > 1:
        total = sum(dtype_bytes * _numel(d) for d in tensors.values())
        index_json = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=1))


def _numel(dims: tuple[int, ...]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def write_weights_in_child(shape: Shape, path: Path, dtype_name: str, device: str,
                           seed: int) -> None:
    """write_weights in a spawned process, so that this one never touches the device."""
    child = multiprocessing.get_context("spawn").Process(
        target=write_weights, args=(shape, path, dtype_name, device, seed))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"writing the weights of {path} failed (exit code {child.exitcode})")


def build_checkpoint(name: str, root: Path, dtype: str = "bfloat16", device: str | None = None,
                     seed: int = 0, in_child: bool | None = None) -> Path:
    """The checkpoint directory of shape `name` under root (built unless already there).
    in_child: draw the weights in a child process (default: when drawing on a GPU)."""
    if name not in SHAPES:
        raise ValueError(f"shape must be one of {sorted(SHAPES)}, got {name!r}")
    shape = SHAPES[name]
    path = Path(root) / f"{name}-{dtype}"
    record = {"shape": asdict(shape), "dtype": dtype, "seed": seed}
    marker = path / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == record:
        return path
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    path.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    for old in path.glob("*.safetensors"):
        old.unlink()
    (path / "config.json").write_text(json.dumps(config_json(shape, dtype), indent=1))
    generation = {"eos_token_id": 0, "pad_token_id": 0, "do_sample": True}
    (path / "generation_config.json").write_text(json.dumps(generation, indent=1))
    save_bench_tokenizer(path, shape.vocab_size)
    if in_child is None:
        in_child = device.startswith("cuda")
    if in_child:
        write_weights_in_child(shape, path, dtype, device, seed)
    else:
        write_weights(shape, path, dtype, device, seed)
    marker.write_text(json.dumps(record, indent=1))
    return path


def checkpoint_vocab_size(path: Path) -> int:
    """vocab_size of a checkpoint directory's config.json."""
    return int(json.loads((Path(path) / "config.json").read_text())["vocab_size"])
