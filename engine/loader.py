"""Load a Hugging Face safetensors checkpoint into lodger's decoder.

The model is built on the meta device (no memory), then every parameter is assigned a
real tensor read memory-mapped with `safetensors.safe_open`, cast to the run dtype and
placed on the run device. Separate HF projections land in slices of lodger's fused
ones: q/k/v -> `qkv_proj`, gate/up -> `gate_up_proj`. Every parameter must be filled.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator

import torch
from safetensors import safe_open
from torch import Tensor, nn

from lodger.engine.model_config import ModelConfig
from lodger.engine.models.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Checkpoint tensors that hold no weights of ours (rotary tables some exports include).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def checkpoint_files(model_dir: str) -> list[str]:
    """The safetensors files of a checkpoint: the single file, or the shards of the index."""
    index_path = os.path.join(model_dir, INDEX_FILE)
    if os.path.isfile(index_path):
        with open(index_path) as f:
            weight_map: dict[str, str] = json.load(f)["weight_map"]
        return [os.path.join(model_dir, name) for name in sorted(set(weight_map.values()))]
    single = os.path.join(model_dir, SINGLE_FILE)
    if os.path.isfile(single):
        return [single]
    raise FileNotFoundError(
        f"no {SINGLE_FILE} or {INDEX_FILE} in {model_dir!r}; lodger loads safetensors only"
    )


def iter_checkpoint(model_dir: str, device: str = "cpu") -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) for every tensor of the checkpoint, read memory-mapped."""
    for path in checkpoint_files(model_dir):
        with safe_open(path, framework="pt", device=device) as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                yield name, f.get_tensor(name)


# lodger's fused projections and the checkpoint projections stacked into them, in order.
_FUSED_PARTS = {
    ".self_attn.qkv_proj.": (".self_attn.q_proj.", ".self_attn.k_proj.", ".self_attn.v_proj."),
    ".mlp.gate_up_proj.": (".mlp.gate_proj.", ".mlp.up_proj."),
}


def _part_rows(config: ModelConfig) -> dict[str, int]:
    q, kv, inter = config.q_size, config.kv_size, config.intermediate_size
    return {
        ".self_attn.q_proj.": q, ".self_attn.k_proj.": kv, ".self_attn.v_proj.": kv,
        ".mlp.gate_proj.": inter, ".mlp.up_proj.": inter,
    }


def fused_target(name: str, config: ModelConfig) -> tuple[str, int, int] | None:
    """Where checkpoint tensor `name` lands in a fused parameter: (param name, first row,
    rows). None when `name` is not part of a fused projection (it keeps its own name)."""
    rows = _part_rows(config)
    for fused, parts in _FUSED_PARTS.items():
        start = 0
        for part in parts:
            if part in name:
                return name.replace(part, fused), start, rows[part]
            start += rows[part]
    return None


def checkpoint_names(param_name: str) -> list[str]:
    """The checkpoint tensors that fill lodger parameter `param_name`."""
    for fused, parts in _FUSED_PARTS.items():
        if fused in param_name:
            return [param_name.replace(fused, part) for part in parts]
    return [param_name]


def load_model(
    model_dir: str,
    config: ModelConfig,
    device: torch.device,
    dtype: torch.dtype,
    max_positions: int | None = None,
) -> LlamaForCausalLM:
    """Build the decoder for `config` and fill it from the checkpoint in `model_dir`.

    max_positions: rows of the rotary table (default: config.max_position_embeddings).
    Raises ValueError naming the checkpoint tensors that are missing, or a checkpoint
    tensor that has no place in the model or the wrong shape.
    """
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded: dict[str, Tensor] = {}
    seen: set[str] = set()  # checkpoint tensor names consumed
    for name, tensor in iter_checkpoint(model_dir):
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        param_name, start, rows = fused_target(name, config) or (name, None, None)
        if param_name not in params:
            raise ValueError(
                f"checkpoint tensor {name!r} has no place in lodger's {config.architecture}"
            )
        seen.add(name)
        if start is None:
            _check_shape(name, tensor.shape, params[name].shape)
            loaded[name] = tensor.to(device=device, dtype=dtype)
            continue
        if param_name not in loaded:
            shape = params[param_name].shape
            loaded[param_name] = torch.empty(shape, device=device, dtype=dtype)
        fused = loaded[param_name]
        _check_shape(name, tensor.shape, (rows, *fused.shape[1:]))
        fused[start : start + rows].copy_(tensor)
    _tie_embeddings(config, loaded, seen)
    _check_complete(params, seen)
    _assign(model, loaded)
    model.init_rotary(device, max_positions)
    return model.eval()


def _check_shape(name: str, got: torch.Size, expected: tuple[int, ...]) -> None:
    if tuple(got) != tuple(expected):
        raise ValueError(
            f"checkpoint tensor {name!r} has shape {list(got)}, expected {list(expected)} "
            "(does config.json match the weights?)"
        )


def _tie_embeddings(config: ModelConfig, loaded: dict[str, Tensor], seen: set[str]) -> None:
    """The LM head shares the embedding when the config ties them or the checkpoint has no
    lm_head (checkpoints of tied models usually omit it)."""
    head, embed = "lm_head.weight", "model.embed_tokens.weight"
    if embed not in loaded or (head in loaded and not config.tie_word_embeddings):
        return
    if head not in loaded and not config.tie_word_embeddings:
        logger.warning("checkpoint has no %s; using %s for it (tied)", head, embed)
    loaded[head] = loaded[embed]
    seen.add(head)


def _check_complete(params: dict[str, nn.Parameter], seen: set[str]) -> None:
    missing = [
        name for param in params for name in checkpoint_names(param) if name not in seen
    ]
    if missing:
        raise ValueError(f"checkpoint is missing tensors {sorted(missing)}")


def _assign(model: nn.Module, loaded: dict[str, Tensor]) -> None:
    """Replace each meta parameter with its loaded tensor; one tensor under two names (tied
    embeddings) becomes one shared Parameter."""
    by_tensor: dict[int, nn.Parameter] = {}
    for name, tensor in loaded.items():
        param = by_tensor.setdefault(id(tensor), nn.Parameter(tensor, requires_grad=False))
        module_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(module_name), attr, param)
