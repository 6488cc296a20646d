"""Sampling one token per request from a batch of logits, without host synchronisation.

`SamplingMetadata.from_requests` turns the step's requests into a few [N] tensors (plain
Python over the requests, once per step, staged in pinned memory and copied without
blocking); `Sampler()(logits, meta)` then samples each row: penalties -> min_tokens ban ->
temperature -> top-k -> top-p -> min-p -> draw, greedy rows (temperature 0) taking the
argmax. A random row draws with the exponential trick, argmax(logits / T - log q) with
q ~ Exp(1), which samples from softmax(logits / T) exactly.

CUDA: the draw is the Triton kernel of lodger.kernels.sampling, one pass over the logits
with the noise made in the kernel by Philox from the row's seed and its number of output
tokens. A row's stream seed is the request's `seed`, or one drawn from torch's default
generator when the request is first sampled (so runs repeat given EngineConfig.seed), so a
seeded request gets the same tokens whatever else is in the batch. Rows without penalties,
bans or filters (the common case) go straight to the kernel; the others are processed by
the torch ops below first and then drawn by the same kernel.

CPU: the same steps in torch; unseeded rows draw q from torch's default generator, seeded
rows from a generator seeded with (seed, number of output tokens), so seeds are batch
independent there too (CPU and CUDA draw different numbers).

Nothing here reads a tensor value on the host (no .item(), .tolist(), boolean indexing or
branches on tensor values), so on CUDA the whole call is queued without waiting on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from lodger.engine.step_inputs import round_up
from lodger.kernels import ops

if TYPE_CHECKING:
    from lodger.engine.request import Request

# Token id lists are padded with this; it is mapped to a spare column V before scattering.
PAD_TOKEN_ID = -1
_MASK64 = 2**64 - 1


@dataclass(slots=True)
class SamplingMetadata:
    """Per-step sampling inputs for the N requests that sample, in batch order.

    Optional fields are None when no row needs them, so their whole-batch work is skipped.
    """

    num_rows: int  # N
    all_greedy: bool  # every row takes the argmax: nothing random is computed
    all_random: bool  # no row is greedy
    temperature: Tensor  # [N] float32, 0.0 on greedy rows
    scales_logits: bool  # some random row has a temperature other than 1
    seeds: Tensor  # [N] int64, each random row's stream seed (Philox key); 0 on greedy rows
    steps: Tensor  # [N] int64, each row's number of output tokens: the draw's Philox counter
    top_k: Tensor | None  # [N] int64, 0 = off; None when no random row uses top-k
    max_top_k: int  # largest top_k in the batch (host int for torch.topk), 0 when none
    top_p: Tensor | None  # [N] float32, 1.0 = off; None when no random row uses top-p
    min_p: Tensor | None  # [N] float32, 0.0 = off; None when no random row uses min-p
    presence_penalties: Tensor | None  # [N] float32; the three penalties are None together,
    frequency_penalties: Tensor | None  # [N] float32  when no row has a penalty
    repetition_penalties: Tensor | None  # [N] float32, 1.0 = off
    output_token_ids: Tensor | None  # [N, L] int64 padded with -1: rows with penalties only
    prompt_token_ids: Tensor | None  # [N, P] int64 padded with -1: rows with a repetition
    #                                  penalty only; None when no row has one
    banned_token_ids: Tensor | None  # [N, B] int64 padded with -1: EOS and stop_token_ids of
    #                                  rows below min_tokens; None when no row is
    generators: dict[int, torch.Generator]  # CPU only: row -> this step's generator of each
    #                                         seeded random row; {} on CUDA
    max_num_logprobs: int | None  # largest `logprobs` asked in the batch; None when none asks
    host_buffers: list[Tensor]  # pinned sources of the copies above, kept until they are done

    @property
    def processes_logits(self) -> bool:
        """Whether some row needs penalties, a ban or a filter before the draw."""
        return (
            self.presence_penalties is not None
            or self.banned_token_ids is not None
            or self.top_k is not None
            or self.top_p is not None
            or self.min_p is not None
        )

    @classmethod
    def from_requests(
        cls,
        requests: Sequence[Request],
        device: torch.device | str,
        seeds: dict[str, int],
        token_cache: TokenIdCache | None = None,
        num_output_tokens: Sequence[int] | None = None,
    ) -> SamplingMetadata:
        """Build the step's metadata. `seeds` maps request id -> stream seed and is kept by
        the caller across steps: a random request gets its entry (its own seed, or one drawn
        from torch's default generator) when first sampled; drop it when the request
        finishes. `token_cache` (optional, kept likewise) makes the penalties' token tensors
        cost only the tokens added since the last step instead of the whole prompt and output.
        `num_output_tokens`: each row's outputs before this draw (the draw's Philox counter
        and the min_tokens test); default each request's num_output_tokens, which under
        async scheduling lags behind by the token the previous step is still sampling.

        Host tensors reach the device through pinned memory with non-blocking copies, so
        building the metadata does not wait for the GPU.
        """
        device = torch.device(device)
        params = [request.sampling_params for request in requests]
        num_rows = len(params)
        greedy = [p.is_greedy for p in params]
        num_greedy = sum(greedy)
        random_params = [p for p, g in zip(params, greedy, strict=True) if not g]
        row_seeds = _row_seeds(requests, greedy, seeds)
        if num_output_tokens is None:
            num_output_tokens = [request.num_output_tokens for request in requests]
        steps = list(num_output_tokens)
        assert len(steps) == num_rows
        host_buffers: list[Tensor] = []
        ints, floats = _upload_rows(params, greedy, row_seeds, steps, device, host_buffers)
        seed_row, step_row, top_k = ints.unbind(0)
        temperature, top_p, min_p, presence, frequency, repetition = floats.unbind(0)
        has_penalties = any(p.has_penalties for p in params)
        logprobs = [p.logprobs for p in params if p.logprobs is not None]
        output_ids, prompt_ids = _penalty_token_ids(requests, device, token_cache, host_buffers)
        return cls(
            num_rows=num_rows,
            all_greedy=num_greedy == num_rows,
            all_random=num_greedy == 0,
            temperature=temperature,
            scales_logits=any(p.temperature != 1 for p in random_params),
            seeds=seed_row,
            steps=step_row,
            top_k=top_k if any(p.top_k for p in random_params) else None,
            max_top_k=max((p.top_k for p in random_params), default=0),
            top_p=top_p if any(p.top_p < 1 for p in random_params) else None,
            min_p=min_p if any(p.min_p > 0 for p in random_params) else None,
            presence_penalties=presence if has_penalties else None,
            frequency_penalties=frequency if has_penalties else None,
            repetition_penalties=repetition if has_penalties else None,
            output_token_ids=output_ids,
            prompt_token_ids=prompt_ids,
            banned_token_ids=_banned_token_ids(requests, steps, device, host_buffers),
            generators=_cpu_generators(params, row_seeds, steps) if device.type == "cpu" else {},
            max_num_logprobs=max(logprobs) if logprobs else None,
            host_buffers=host_buffers,
        )


@dataclass(slots=True)
class SamplerOutput:
    token_ids: Tensor  # [N] int64, the sampled token of each row
    logprobs: Tensor | None  # [N] float32, log-softmax of the raw logits at token_ids
    ranks: Tensor | None  # [N] int64, 1-based rank of the sampled token in the raw logits
    top_ids: Tensor | None  # [N, K] int64, top-K ids, K = max requested `logprobs` (may be 0)
    top_logprobs: Tensor | None  # [N, K] float32, their logprobs, best first


class Sampler:
    """Stateless; call it with the step's logits [N, V] and SamplingMetadata."""

    def __call__(self, logits: Tensor, meta: SamplingMetadata) -> SamplerOutput:
        assert logits.dim() == 2 and logits.shape[0] == meta.num_rows, (
            f"logits {tuple(logits.shape)} do not match {meta.num_rows} sampling rows"
        )
        if logits.is_cuda:
            token_ids = _sample_cuda(logits, meta)
        else:
            token_ids = _sample_cpu(logits.float(), meta)
        if meta.max_num_logprobs is None:
            return SamplerOutput(token_ids, None, None, None, None)
        return _logprobs(logits.float(), token_ids, meta.max_num_logprobs)


def _sample_cuda(logits: Tensor, meta: SamplingMetadata) -> Tensor:
    """The fused draw, after the torch processing when some row needs it."""
    temperature = meta.temperature
    if meta.processes_logits:
        logits = process_logits(logits.float(), meta)
        temperature = (temperature > 0).float()  # random rows are scaled already
    from lodger.kernels import sampling

    if ops.use_triton(logits):
        return sampling.sample(logits, temperature, meta.seeds, meta.steps)
    return sampling.reference_sample(logits, temperature, meta.seeds, meta.steps)


def _sample_cpu(raw: Tensor, meta: SamplingMetadata) -> Tensor:
    logits = process_logits(raw, meta)
    if meta.all_greedy:
        return logits.argmax(dim=-1)
    random_ids = _draw(logits, meta)
    if meta.all_random:
        return random_ids
    return torch.where(meta.temperature == 0, logits.argmax(dim=-1), random_ids)


def process_logits(raw: Tensor, meta: SamplingMetadata) -> Tensor:
    """Penalties, min_tokens ban, temperature, top-k, top-p and min-p on float32 logits [N, V].

    Returns `raw` itself when nothing applies, else a new tensor (`raw` is never changed).
    Greedy rows get the penalties and the ban only: they stay unscaled and unfiltered.
    """
    logits = raw
    if meta.presence_penalties is not None or meta.banned_token_ids is not None:
        logits = raw.clone()
        if meta.presence_penalties is not None:
            apply_penalties(logits, meta)
        if meta.banned_token_ids is not None:
            logits.masked_fill_(_token_mask(meta.banned_token_ids, logits.shape[1]), -torch.inf)
    if meta.all_greedy:
        return logits
    filters = meta.top_k is not None or meta.top_p is not None or meta.min_p is not None
    if logits is raw and (meta.scales_logits or filters):
        logits = raw.clone()
    if meta.scales_logits:
        logits.div_(torch.where(meta.temperature > 0, meta.temperature, 1.0)[:, None])
    if meta.top_p is not None:
        logits = apply_top_k_top_p(logits, meta.top_k, meta.top_p)
    elif meta.top_k is not None:
        apply_top_k(logits, meta.top_k, meta.max_top_k)
    if meta.min_p is not None:
        apply_min_p(logits, meta.min_p)
    return logits


def _draw(logits: Tensor, meta: SamplingMetadata) -> Tensor:
    """CPU: the exponential-trick draw, argmax(probs / q)."""
    probs = logits.softmax(dim=-1)
    q = torch.empty_like(probs)
    if len(meta.generators) < meta.num_rows:
        q.exponential_()
    for row, generator in meta.generators.items():
        q[row].exponential_(generator=generator)
    # Exp(1) can return 0; a 0 would turn a zero-probability token into 0/0 = NaN.
    q.clamp_min_(torch.finfo(q.dtype).tiny)
    return probs.div_(q).argmax(dim=-1)


def apply_penalties(logits: Tensor, meta: SamplingMetadata) -> None:
    """In place, vLLM's semantics: repetition over prompt + output tokens, presence and
    frequency over output tokens."""
    vocab_size = logits.shape[1]
    counts = _token_counts(meta.output_token_ids, vocab_size)
    seen = counts > 0  # a new tensor: the prompt's tokens are added to it below
    if meta.prompt_token_ids is not None:
        seen |= _token_mask(meta.prompt_token_ids, vocab_size)
    repetition = meta.repetition_penalties[:, None].expand_as(logits)
    scale = torch.where(logits > 0, repetition.reciprocal(), repetition)
    logits.mul_(torch.where(seen, scale, 1.0))
    logits.sub_(meta.frequency_penalties[:, None] * counts)
    logits.sub_(meta.presence_penalties[:, None] * (counts > 0).float())


def apply_top_k(logits: Tensor, top_k: Tensor, max_top_k: int) -> None:
    """In place: keep each row's top_k largest logits (ties at the cut are kept); 0 = off."""
    vocab_size = logits.shape[1]
    max_top_k = min(max_top_k, vocab_size)
    best = logits.topk(max_top_k, dim=-1).values  # [N, max_top_k], descending
    kth = best.gather(1, (top_k.clamp(1, max_top_k) - 1)[:, None])
    kth = torch.where((top_k > 0)[:, None], kth, -torch.inf)
    logits.masked_fill_(logits < kth, -torch.inf)


def apply_top_k_top_p(logits: Tensor, top_k: Tensor | None, top_p: Tensor) -> Tensor:
    """Top-k then top-p on one descending sort: a token survives top-p when the mass of the
    tokens ranked above it (after top-k) is below top_p. Returns the filtered logits."""
    vocab_size = logits.shape[1]
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
    if top_k is not None:
        positions = torch.arange(vocab_size, device=logits.device)
        keep = torch.where(top_k > 0, top_k, vocab_size)
        sorted_logits.masked_fill_(positions[None, :] >= keep[:, None], -torch.inf)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1).sub_(probs)
    drop = (mass_before >= top_p[:, None]) & (top_p < 1)[:, None]
    sorted_logits.masked_fill_(drop, -torch.inf)
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def apply_min_p(logits: Tensor, min_p: Tensor) -> None:
    """In place: drop tokens with p < min_p * p_max, i.e. logit < max_logit + log(min_p)."""
    threshold = logits.amax(dim=-1, keepdim=True) + min_p.log()[:, None]
    logits.masked_fill_(logits < threshold, -torch.inf)


def _logprobs(raw: Tensor, token_ids: Tensor, num_top: int) -> SamplerOutput:
    logprobs = raw.log_softmax(dim=-1)
    token_logprobs = logprobs.gather(1, token_ids[:, None])
    ranks = (logprobs > token_logprobs).sum(dim=-1) + 1
    top_logprobs, top_ids = logprobs.topk(num_top, dim=-1)
    return SamplerOutput(token_ids, token_logprobs.squeeze(1), ranks, top_ids, top_logprobs)


def _token_counts(token_ids: Tensor, vocab_size: int) -> Tensor:
    """[N, L] padded ids -> [N, V] float32 occurrence counts (pads and ids >= V ignored)."""
    index = _spare_column(token_ids, vocab_size)
    counts = torch.zeros(index.shape[0], vocab_size + 1, device=index.device)
    counts.scatter_add_(1, index, torch.ones(index.shape, device=index.device))
    return counts[:, :vocab_size]


def _token_mask(token_ids: Tensor, vocab_size: int) -> Tensor:
    """[N, L] padded ids -> [N, V] bool, True where the id occurs (pads and ids >= V ignored)."""
    index = _spare_column(token_ids, vocab_size)
    mask = torch.zeros(index.shape[0], vocab_size + 1, dtype=torch.bool, device=index.device)
    mask.scatter_(1, index, True)
    return mask[:, :vocab_size]


def _spare_column(token_ids: Tensor, vocab_size: int) -> Tensor:
    invalid = (token_ids < 0) | (token_ids >= vocab_size)
    return torch.where(invalid, vocab_size, token_ids)


def _pairs(requests: Sequence[Request]):
    return ((request, request.sampling_params) for request in requests)


def _row_seeds(requests: Sequence[Request], greedy: list[bool], seeds: dict[str, int]) -> list[int]:
    """Each random row's stream seed, 0 on greedy rows; new random requests get theirs in
    `seeds`: their own seed, or one drawn from torch's default (CPU) generator."""
    new = [
        request
        for request, is_greedy in zip(requests, greedy, strict=True)
        if not is_greedy and request.request_id not in seeds
    ]
    unseeded = [request.request_id for request in new if request.sampling_params.seed is None]
    drawn = torch.randint(2**62, (len(unseeded),)).tolist() if unseeded else []
    seeds.update(zip(unseeded, drawn, strict=True))
    seeds.update(
        (r.request_id, r.sampling_params.seed) for r in new if r.sampling_params.seed is not None
    )
    return [0 if g else seeds[r.request_id] for r, g in zip(requests, greedy, strict=True)]


def _upload_rows(
    params, greedy: list[bool], row_seeds: list[int], steps: list[int],
    device: torch.device, host_buffers: list[Tensor],
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One copy of the per-row values: ([3, N] int64 seeds, steps, top_k; [6, N] float32
    temperature, top_p, min_p, presence, frequency, repetition). Greedy rows get neutral
    sampling values (temperature 0, the filters off).

    Each row starts 16-byte aligned whatever N is (rows padded to a multiple of 4 columns):
    the Triton kernels reading them are specialized on their pointers' alignment, and an
    alignment that changed with N's parity built another variant inside a serving step."""
    num_rows = len(params)
    width = round_up(num_rows, 4)
    array = np.zeros((6, width), dtype=np.int64)  # 3 rows of ints, then the 6 float rows
    ints = array[:3, :num_rows]
    floats = array[3:].view(np.float32).reshape(6, width)[:, :num_rows]
    ints[0] = [((seed + 2**63) & _MASK64) - 2**63 for seed in row_seeds]  # as int64 bits
    ints[1] = steps
    rows = list(zip(params, greedy, strict=True))
    ints[2] = [0 if g else p.top_k for p, g in rows]
    floats[0] = [0.0 if g else p.temperature for p, g in rows]
    floats[1] = [1.0 if g else p.top_p for p, g in rows]
    floats[2] = [0.0 if g else p.min_p for p, g in rows]
    floats[3] = [p.presence_penalty for p in params]
    floats[4] = [p.frequency_penalty for p in params]
    floats[5] = [p.repetition_penalty for p in params]
    on_device = _to_device(array, device, host_buffers)
    device_floats = on_device[3:].view(torch.float32).view(6, width)
    return on_device[:3, :num_rows], device_floats[:, :num_rows]


def _to_device(array: np.ndarray, device: torch.device, host_buffers: list[Tensor]) -> Tensor:
    """A numpy array on `device`; to CUDA through a pinned copy (kept in host_buffers) and a
    non-blocking transfer, as a pageable source would make the copy wait for the GPU."""
    host = torch.from_numpy(array)
    if device.type != "cuda":
        return host.to(device)
    pinned = host.pin_memory()
    host_buffers.append(pinned)
    return pinned.to(device, non_blocking=True)


def _cpu_generators(params, row_seeds: list[int], steps: list[int]) -> dict[int, torch.Generator]:
    """Row -> a generator for this draw of each seeded random row, seeded from the request's
    seed and its number of output tokens (so it does not depend on the batch)."""
    generators = {}
    for row, p in enumerate(params):
        if p.seed is not None and not p.is_greedy:
            seed = _splitmix64(_splitmix64(row_seeds[row] & _MASK64) ^ steps[row])
            generators[row] = torch.Generator().manual_seed(seed)
    return generators


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _penalty_token_ids(
    requests: Sequence[Request],
    device: torch.device,
    cache: TokenIdCache | None,
    host_buffers: list[Tensor],
) -> tuple[Tensor | None, Tensor | None]:
    """Padded output ids of rows with any penalty (None if no row has one) and padded prompt
    ids of rows with a repetition penalty (None if no row has one)."""
    if not any(r.sampling_params.has_penalties for r in requests):
        return None, None
    outputs, prompts = [], []
    for request, p in _pairs(requests):
        outputs.append(_output_ids(request, cache) if p.has_penalties else [])
        prompts.append(_prompt_ids(request, cache) if p.repetition_penalty != 1 else [])
    output_ids = _to_device(_padded(outputs), device, host_buffers)
    if not any(map(len, prompts)):
        return output_ids, None
    return output_ids, _to_device(_padded(prompts), device, host_buffers)


def _output_ids(request: Request, cache: TokenIdCache | None):
    return request.output_token_ids if cache is None else cache.output_ids(request)


def _prompt_ids(request: Request, cache: TokenIdCache | None):
    return request.prompt_token_ids if cache is None else cache.prompt_ids(request)


def _padded(rows: list) -> np.ndarray:
    """Token id rows (lists or int64 arrays) -> [N, longest] int64 padded with -1."""
    width = max((len(ids) for ids in rows), default=0)
    array = np.full((len(rows), width), PAD_TOKEN_ID, dtype=np.int64)
    for row, ids in enumerate(rows):
        array[row, : len(ids)] = ids
    return array


def _banned_token_ids(
    requests: Sequence[Request], num_output_tokens: list[int], device: torch.device,
    host_buffers: list[Tensor],
) -> Tensor | None:
    """EOS (unless ignore_eos) and stop_token_ids of each row still below its min_tokens."""
    banned: list[list[int]] = []
    for (request, p), num_outputs in zip(_pairs(requests), num_output_tokens, strict=True):
        ids: list[int] = []
        if num_outputs < p.min_tokens:
            ids = list(p.stop_token_ids)
            if request.eos_token_id is not None and not p.ignore_eos:
                ids.append(request.eos_token_id)
        banned.append(ids)
    if not any(banned):
        return None
    return _to_device(_padded(banned), device, host_buffers)


@dataclass(slots=True)
class _CachedIds:
    prompt_source: list[int]  # the request's prompt list, to notice a reused request id
    prompt: np.ndarray  # the prompt as int64
    output: np.ndarray  # int64 buffer; its first num_output entries are the output so far
    num_output: int = 0


class TokenIdCache:
    """Per-request int64 copies of prompt and output ids for the penalties, kept across steps
    so each step converts only the new output tokens. Drop finished requests with drop()."""

    def __init__(self) -> None:
        self._entries: dict[str, _CachedIds] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def prompt_ids(self, request: Request) -> np.ndarray:
        return self._entry(request).prompt

    def output_ids(self, request: Request) -> np.ndarray:
        entry = self._entry(request)
        output = request.output_token_ids
        if len(output) < entry.num_output:  # never expected: outputs only grow
            entry.num_output = 0
        if len(output) > len(entry.output):
            grown = np.empty(max(2 * len(entry.output), len(output), 16), dtype=np.int64)
            grown[: entry.num_output] = entry.output[: entry.num_output]
            entry.output = grown
        entry.output[entry.num_output : len(output)] = output[entry.num_output :]
        entry.num_output = len(output)
        return entry.output[: entry.num_output]

    def drop(self, request_ids) -> None:
        for request_id in request_ids:
            self._entries.pop(request_id, None)

    def _entry(self, request: Request) -> _CachedIds:
        entry = self._entries.get(request.request_id)
        if entry is None or entry.prompt_source is not request.prompt_token_ids:
            prompt = np.array(request.prompt_token_ids, dtype=np.int64)
            entry = _CachedIds(request.prompt_token_ids, prompt, np.empty(0, dtype=np.int64))
            self._entries[request.request_id] = entry
        return entry
