"""lodger's Llama-family decoder: Llama 2/3, Mistral, Qwen2 (q/k/v bias), Qwen3 (q/k norm).

Batches are flat: T new tokens of all sequences side by side, no padding. Every op goes
through `lodger.kernels.ops` (Triton on CUDA, torch references elsewhere). Projections are
fused: one q/k/v matmul and one gate/up matmul per layer; the loader fills the fused
weights from the checkpoint's separate tensors. The model is built on the meta device and
its parameters are assigned by `lodger.engine.loader`; `init_rotary` then builds the
cos/sin table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lodger.engine.model_config import ModelConfig
from lodger.engine.models.rotary import cos_sin_cache
from lodger.kernels import ops
from lodger.kernels.attention_metadata import AttentionMetadata

if TYPE_CHECKING:  # needs triton, which the CPU engine may lack
    from lodger.kernels.linear import SplitKPartials

KVCache = tuple[Tensor, Tensor]  # (k_cache, v_cache), each [num_blocks, block_size, Hkv, D]
# A layer's o and down projections feed only the next fused residual-add + RMSNorm, which
# adds a split-K matmul's partials up itself (ops.linear(..., unreduced=True)): on CUDA
# their output may be a SplitKPartials, whose sum kernel is then never launched.


class RMSNorm(nn.Module):
    """Holds an RMSNorm weight under the checkpoint's name (`<norm>.weight`)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(size))

    def forward(self, x: Tensor) -> Tensor:
        return ops.rms_norm(x, self.weight, self.eps)

    def add_and_norm(self, x: Tensor | SplitKPartials, residual: Tensor) -> tuple[Tensor, Tensor]:
        """(norm(x + residual), x + residual)."""
        return ops.fused_add_rms_norm(x, residual, self.weight, self.eps)


class Linear(nn.Linear):
    """nn.Linear whose matmul goes through lodger.kernels.ops (tuned per shape on CUDA)."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.linear(x, self.weight, self.bias)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size, self.kv_size = config.q_size, config.kv_size
        self.scale = self.head_dim**-0.5
        qkv_rows = self.q_size + 2 * self.kv_size
        self.qkv_proj = Linear(config.hidden_size, qkv_rows, bias=config.qkv_bias)
        self.o_proj = Linear(self.q_size, config.hidden_size, bias=config.o_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self, positions: Tensor, x: Tensor, cos_sin: Tensor, kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> Tensor | SplitKPartials:
        num_tokens = x.shape[0]
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(num_tokens, self.num_heads, self.head_dim)
        k = k.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        k_cache, v_cache = kv_cache
        cache_write = (v, k_cache, v_cache, meta.slot_mapping)  # stored by the rotary pass
        if self.q_norm is not None:  # per-head norms fused into the rotary pass
            q, k = ops.apply_rotary(
                q, k, positions, cos_sin, self.q_norm.weight, self.k_norm.weight,
                self.q_norm.eps, kv_cache=cache_write,
            )
        else:
            q, k = ops.apply_rotary(q, k, positions, cos_sin, kv_cache=cache_write)
        out = ops.paged_attention(q, k_cache, v_cache, meta, self.scale)
        o = self.o_proj
        return ops.linear(out.reshape(num_tokens, self.q_size), o.weight, o.bias, unreduced=True)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        inter = config.intermediate_size
        self.gate_up_proj = Linear(config.hidden_size, 2 * inter, bias=config.mlp_bias)
        self.down_proj = Linear(inter, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: Tensor) -> Tensor | SplitKPartials:
        down = self.down_proj  # its matmul takes silu_and_mul's input in one op
        gate_up = self.gate_up_proj(x)
        return ops.silu_and_mul_linear(gate_up, down.weight, down.bias, unreduced=True)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, positions: Tensor, x: Tensor | SplitKPartials, residual: Tensor | None,
        cos_sin: Tensor, kv_cache: KVCache, meta: AttentionMetadata,
    ) -> tuple[Tensor | SplitKPartials, Tensor]:
        """One pre-norm block. Returns (mlp output, residual stream before it); the caller
        (or the next layer's norm) adds them."""
        if residual is None:
            residual = x
            x = self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm.add_and_norm(x, residual)
        x = self.self_attn(positions, x, cos_sin, kv_cache, meta)
        x, residual = self.post_attention_layernorm.add_and_norm(x, residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """The decoder plus LM head. `forward` returns final hidden states; `compute_logits`
    turns the rows that sample into logits."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        # float32 [max_positions, head_dim]; a plain attribute so dtype casts never touch it
        self.cos_sin_cache: Tensor | None = None

    def init_rotary(self, device: torch.device, max_positions: int | None = None) -> None:
        """Build the cos/sin table on `device` for positions < max_positions."""
        config = self.config
        num_positions = max_positions or config.max_position_embeddings
        table = cos_sin_cache(config.rope, config.head_dim, num_positions)
        self.cos_sin_cache = table.to(device)

    def forward(
        self, input_ids: Tensor, positions: Tensor, kv_caches: list[KVCache],
        meta: AttentionMetadata,
    ) -> Tensor:
        """input_ids, positions: [T] int64; returns the final normed hidden states [T, H]."""
        assert self.cos_sin_cache is not None, "call init_rotary() after loading the weights"
        assert len(kv_caches) == len(self.model.layers), "one (k, v) cache pair per layer"
        x = self.model.embed_tokens(input_ids)
        residual = None
        for layer, kv_cache in zip(self.model.layers, kv_caches, strict=True):
            x, residual = layer(positions, x, residual, self.cos_sin_cache, kv_cache, meta)
        x, _ = self.model.norm.add_and_norm(x, residual)
        return x

    def compute_logits(self, hidden: Tensor) -> Tensor:
        """[N, H] hidden states -> [N, vocab] logits in the model's dtype (the sampling
        kernel reads 16-bit logits as they are; the sampler upcasts where it needs to)."""
        return self.lm_head(hidden)
