"""Sampling one token per request from a batch of logits, without host synchronisation.

`SamplingMetadata.from_requests` turns the step's requests into a few [N] tensors (plain
Python over the requests, once per step); `Sampler()(logits, meta)` then runs one pass over
the batch: penalties -> min_tokens ban -> greedy argmax -> temperature -> top-k -> top-p ->
min-p -> draw. Random rows draw with the exponential trick, argmax(probs / q) with
q ~ Exp(1), which samples from probs exactly. Seeded rows take their q from their own
torch.Generator, so a seed gives the same tokens whatever else is in the batch.

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

if TYPE_CHECKING:
    from lodger.engine.request import Request

# Token id lists are padded with this; it is mapped to a spare column V before scattering.
PAD_TOKEN_ID = -1


@dataclass(slots=True)
class SamplingMetadata:
    """Per-step sampling inputs for the N requests that sample, in batch order.

    Optional fields are None when no row needs them, so their whole-batch work is skipped.
    """

    num_rows: int  # N
    all_greedy: bool  # every row takes the argmax: nothing random is computed
    all_random: bool  # no row is greedy: no argmax pass
    greedy_mask: Tensor | None  # [N] bool, True on greedy rows; None if all_greedy/all_random
    temperature: Tensor | None  # [N] float32, 1.0 on greedy rows; None if all random rows use 1
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
    generators: dict[int, torch.Generator]  # row -> generator of each seeded random row
    max_num_logprobs: int | None  # largest `logprobs` asked in the batch; None when none asks

    @classmethod
    def from_requests(
        cls,
        requests: Sequence[Request],
        device: torch.device | str,
        generators: dict[str, torch.Generator],
        token_cache: TokenIdCache | None = None,
    ) -> SamplingMetadata:
        """Build the step's metadata. `generators` maps request id -> generator and is kept by
        the caller across steps: a seeded request's generator is created from its seed on its
        first sampled step and then advanced by each draw (drop it when the request finishes).
        `token_cache` (optional, kept likewise) makes the penalties' token tensors cost only the
        tokens added since the last step instead of the whole prompt and output.
        """
        device = torch.device(device)
        params = [request.sampling_params for request in requests]
        num_rows = len(params)
        greedy = [p.is_greedy for p in params]
        num_greedy = sum(greedy)
        random_params = [p for p, g in zip(params, greedy, strict=True) if not g]
        floats = torch.tensor(_float_rows(params, greedy), dtype=torch.float32).to(device)
        temperature, top_p, min_p, presence, frequency, repetition = floats.unbind(0)
        has_penalties = any(p.has_penalties for p in params)
        logprobs = [p.logprobs for p in params if p.logprobs is not None]
        output_ids, prompt_ids = _penalty_token_ids(requests, device, token_cache)
        return cls(
            num_rows=num_rows,
            all_greedy=num_greedy == num_rows,
            all_random=num_greedy == 0,
            greedy_mask=(torch.tensor(greedy).to(device) if 0 < num_greedy < num_rows else None),
            temperature=temperature if any(p.temperature != 1 for p in random_params) else None,
            top_k=_top_k(params, greedy, device) if any(p.top_k for p in random_params) else None,
            max_top_k=max((p.top_k for p in random_params), default=0),
            top_p=top_p if any(p.top_p < 1 for p in random_params) else None,
            min_p=min_p if any(p.min_p > 0 for p in random_params) else None,
            presence_penalties=presence if has_penalties else None,
            frequency_penalties=frequency if has_penalties else None,
            repetition_penalties=repetition if has_penalties else None,
            output_token_ids=output_ids,
            prompt_token_ids=prompt_ids,
            banned_token_ids=_banned_token_ids(requests, device),
            generators=_row_generators(requests, greedy, device, generators),
            max_num_logprobs=max(logprobs) if logprobs else None,
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
        raw = logits.float()
        token_ids = self._sample(raw, meta)
        if meta.max_num_logprobs is None:
            return SamplerOutput(token_ids, None, None, None, None)
        return _logprobs(raw, token_ids, meta.max_num_logprobs)

    def _sample(self, raw: Tensor, meta: SamplingMetadata) -> Tensor:
        logits = raw
        if meta.presence_penalties is not None or meta.banned_token_ids is not None:
            logits = raw.clone()
            if meta.presence_penalties is not None:
                apply_penalties(logits, meta)
            if meta.banned_token_ids is not None:
                logits.masked_fill_(_token_mask(meta.banned_token_ids, logits.shape[1]), -torch.inf)
        if meta.all_greedy:
            return logits.argmax(dim=-1)
        greedy_ids = None if meta.all_random else logits.argmax(dim=-1)
        # _draw changes its input in place: never hand it the caller's logits
        random_ids = self._draw(logits.clone() if logits is raw else logits, meta)
        if greedy_ids is None:
            return random_ids
        return torch.where(meta.greedy_mask, greedy_ids, random_ids)

    def _draw(self, logits: Tensor, meta: SamplingMetadata) -> Tensor:
        """Temperature, filters and the exponential-trick draw; `logits` is ours to change."""
        if meta.temperature is not None:
            logits.div_(meta.temperature[:, None])
        if meta.top_p is not None:
            logits = apply_top_k_top_p(logits, meta.top_k, meta.top_p)
        elif meta.top_k is not None:
            apply_top_k(logits, meta.top_k, meta.max_top_k)
        if meta.min_p is not None:
            apply_min_p(logits, meta.min_p)
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


def _float_rows(params, greedy: list[bool]) -> list[list[float]]:
    """The six per-row float parameters; greedy rows get neutral sampling values."""
    rows: list[list[float]] = [[], [], [], [], [], []]
    for p, is_greedy in zip(params, greedy, strict=True):
        rows[0].append(1.0 if is_greedy else p.temperature)
        rows[1].append(1.0 if is_greedy else p.top_p)
        rows[2].append(0.0 if is_greedy else p.min_p)
        rows[3].append(p.presence_penalty)
        rows[4].append(p.frequency_penalty)
        rows[5].append(p.repetition_penalty)
    return rows


def _top_k(params, greedy: list[bool], device: torch.device) -> Tensor:
    return torch.tensor([0 if g else p.top_k for p, g in zip(params, greedy, strict=True)]).to(
        device
    )


def _penalty_token_ids(
    requests: Sequence[Request], device: torch.device, cache: TokenIdCache | None
) -> tuple[Tensor | None, Tensor | None]:
    """Padded output ids of rows with any penalty (None if no row has one) and padded prompt
    ids of rows with a repetition penalty (None if no row has one)."""
    if not any(r.sampling_params.has_penalties for r in requests):
        return None, None
    outputs, prompts = [], []
    for request, p in _pairs(requests):
        outputs.append(_output_ids(request, cache) if p.has_penalties else [])
        prompts.append(_prompt_ids(request, cache) if p.repetition_penalty != 1 else [])
    return _padded(outputs, device), _padded(prompts, device) if any(map(len, prompts)) else None


def _output_ids(request: Request, cache: TokenIdCache | None):
    return request.output_token_ids if cache is None else cache.output_ids(request)


def _prompt_ids(request: Request, cache: TokenIdCache | None):
    return request.prompt_token_ids if cache is None else cache.prompt_ids(request)


def _padded(rows: list, device: torch.device) -> Tensor:
    """Token id rows (lists or int64 arrays) -> [N, longest] int64 padded with -1."""
    width = max((len(ids) for ids in rows), default=0)
    array = np.full((len(rows), width), PAD_TOKEN_ID, dtype=np.int64)
    for row, ids in enumerate(rows):
        array[row, : len(ids)] = ids
    return torch.from_numpy(array).to(device)


def _banned_token_ids(requests: Sequence[Request], device: torch.device) -> Tensor | None:
    """EOS (unless ignore_eos) and stop_token_ids of each row still below its min_tokens."""
    banned: list[list[int]] = []
    for request, p in _pairs(requests):
        ids: list[int] = []
        if len(request.output_token_ids) < p.min_tokens:
            ids = list(p.stop_token_ids)
            if request.eos_token_id is not None and not p.ignore_eos:
                ids.append(request.eos_token_id)
        banned.append(ids)
    if not any(banned):
        return None
    return _padded(banned, device)


def _row_generators(
    requests: Sequence[Request],
    greedy: list[bool],
    device: torch.device,
    generators: dict[str, torch.Generator],
) -> dict[int, torch.Generator]:
    rows: dict[int, torch.Generator] = {}
    for row, (request, p) in enumerate(_pairs(requests)):
        if p.seed is None or greedy[row]:
            continue
        generator = generators.get(request.request_id)
        if generator is None:
            generator = torch.Generator(device=device)
            generator.manual_seed(p.seed)
            generators[request.request_id] = generator
        rows[row] = generator
    return rows


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
