"""Plain-torch references of every op in lodger.kernels.ops.

They are the CPU path of the engine and the ground truth the Triton kernels are tested
against. They follow HF transformers' Llama numerics: RMSNorm and softmax in float32,
rotary as rotate-half with cos/sin from a float32 cache.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from lodger.kernels.attention_metadata import AttentionMetadata


def write_kv_cache(
    k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor
) -> None:
    """Store k[t], v[t] ([T, Hkv, D]) at flat slot slot_mapping[t] of the caches.

    Caches are [num_blocks, block_size, Hkv, D]; slot s is block s // block_size, offset
    s % block_size. Tokens whose slot is -1 are skipped.
    """
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    flat_k = k_cache.view(-1, num_kv_heads, head_dim)  # view: writes must reach the cache
    flat_v = v_cache.view(-1, num_kv_heads, head_dim)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    flat_k[slots] = k[keep].to(k_cache.dtype)
    flat_v[slots] = v[keep].to(v_cache.dtype)


def gather_context(cache: Tensor, block_table: Tensor, seq_len: int) -> Tensor:
    """The first seq_len cached tokens of one sequence, [seq_len, Hkv, D], in position order."""
    block_size = cache.shape[1]
    num_blocks = (seq_len + block_size - 1) // block_size
    blocks = cache[block_table[:num_blocks].long()]  # [n, bs, Hkv, D]
    return blocks.flatten(0, 1)[:seq_len]


def attend(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal attention of L queries at the last L of S positions: q [L, Hq, D], k/v [S, Hkv, D].

    Query i sits at position S - L + i and sees positions <= its own. Scores and softmax
    in float32; GQA by grouping the Hq // Hkv query heads that share a kv head.
    """
    query_len, num_heads, head_dim = q.shape
    seq_len, num_kv_heads, _ = k.shape
    group = num_heads // num_kv_heads
    # [Hkv, group * L, D]: the query heads of one kv head stacked along the rows
    qg = q.float().view(query_len, num_kv_heads, group, head_dim).permute(1, 2, 0, 3)
    qg = qg.reshape(num_kv_heads, group * query_len, head_dim)
    kf = k.float().permute(1, 2, 0)  # [Hkv, D, S]
    vf = v.float().permute(1, 0, 2)  # [Hkv, S, D]
    scores = torch.bmm(qg, kf) * scale  # [Hkv, group * L, S]
    query_pos = torch.arange(seq_len - query_len, seq_len, device=q.device).repeat(group)
    key_pos = torch.arange(seq_len, device=q.device)
    scores.masked_fill_(key_pos[None, :] > query_pos[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.bmm(probs, vf)  # [Hkv, group * L, D]
    out = out.view(num_kv_heads, group, query_len, head_dim).permute(2, 0, 1, 3)
    return out.reshape(query_len, num_heads, head_dim).to(q.dtype)


def paged_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, meta: AttentionMetadata, scale: float
) -> Tensor:
    """Attention of the new tokens q [T, Hq, D] over their sequences' cached context.

    The new tokens' K/V must already be in the cache (write_kv_cache runs first). Rows of q
    past query_start_loc[-1] (batch padding) are left unwritten.
    """
    out = torch.empty_like(q)
    starts = meta.query_start_loc.tolist()
    seq_lens = meta.seq_lens.tolist()
    for b, seq_len in enumerate(seq_lens):
        start, end = starts[b], starts[b + 1]
        if seq_len == 0:  # a padding sequence: zeros, as the Triton kernels write
            out[start:end] = 0
            continue
        if end == start:
            continue
        k = gather_context(k_cache, meta.block_tables[b], seq_len)
        v = gather_context(v_cache, meta.block_tables[b], seq_len)
        out[start:end] = attend(q[start:end], k, v, scale)
    return out


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """weight * (x / sqrt(mean(x^2) + eps)), normalised in float32 and cast back first."""
    xf = x.float()
    variance = xf.pow(2).mean(dim=-1, keepdim=True)
    normed = (xf * torch.rsqrt(variance + eps)).to(x.dtype)
    return weight * normed


def fused_add_rms_norm(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """(rms_norm(x + residual), x + residual); the inputs are not modified."""
    summed = x + residual
    return rms_norm(summed, weight, eps), summed


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half rotary on the first 2 * cos.shape[-1] dims of x [T, H, D] in float32."""
    half = cos.shape[-1]
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half : 2 * half]
    cos, sin = cos[:, None, :], sin[:, None, :]
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return rotated.to(x.dtype)


def apply_rotary(
    q: Tensor, k: Tensor, positions: Tensor, cos_sin_cache: Tensor,
    q_norm_weight: Tensor | None = None, k_norm_weight: Tensor | None = None,
    eps: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Rotary embedding of q [T, Hq, D] and k [T, Hkv, D] in place; returns (q, k).

    cos_sin_cache is [max_pos, R] float32 = cat(cos, sin) of the angles; R == D for
    Llama (R < D rotates only the first R dims). With q_norm_weight and k_norm_weight
    [D] (Qwen3), each head is first replaced by rms_norm(head, weight, eps).
    """
    if q_norm_weight is not None:
        q[:] = rms_norm(q, q_norm_weight, eps)
        k[:] = rms_norm(k, k_norm_weight, eps)
    half = cos_sin_cache.shape[1] // 2
    cos_sin = cos_sin_cache[positions]
    cos, sin = cos_sin[:, :half], cos_sin[:, half:]
    q[..., : 2 * half] = rotate(q, cos, sin)
    k[..., : 2 * half] = rotate(k, cos, sin)
    return q, k


def silu_and_mul(x: Tensor) -> Tensor:
    """silu(x[:, :I]) * x[:, I:] for x [T, 2 * I] (gate then up, as in a Llama MLP)."""
    inter = x.shape[-1] // 2
    return F.silu(x[..., :inter]) * x[..., inter:]


def relative_error(out: Tensor, expected: Tensor) -> float:
    """‖out - expected‖ / ‖expected‖ in float64; NaN anywhere gives NaN (never passes)."""
    out, expected = out.double(), expected.double()
    return ((out - expected).norm() / expected.norm()).item()
