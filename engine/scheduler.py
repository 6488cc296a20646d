"""Scheduler: decides which requests compute how many tokens each step. Plain Python, no torch.

One token budget per step (max_num_batched_tokens), no prefill/decode phases: every
scheduled request's num_computed_tokens catches up with its num_tokens, a chunk at a time.
schedule() advances num_computed_tokens over the tokens it schedules; update() appends the
sampled tokens.

Async scheduling (EngineCore): the next step may be scheduled before the last one's tokens
are known. A step that samples a request leaves a placeholder
(`Request.num_output_placeholders`) that the next step may already compute (the runner
takes its id from the previous step's sampled ids on the device), and update() replaces it
with the real token. A request whose placeholder is its last token (max_tokens,
max_model_len) is not scheduled again; one that stops on EOS has computed one token too
many, which is dropped. With update() called before each schedule() (synchronous
scheduling) there is never a placeholder at schedule time.

- Running requests first, oldest first: a decode takes 1 token, a request still inside its
  prompt takes min(rest, budget), shrunk to the blocks that are free. A running request
  that cannot get even one token's block preempts the newest running request (its blocks
  are freed, it goes back to the front of the waiting queue and is recomputed later, output
  tokens included), repeatedly, until it fits or is itself the one preempted.
- Then waiting requests in arrival order (FCFS; preempted ones come back first), while
  there is budget, a free seat (max_num_seqs) and no preemption happened this step. A
  prompt is chunked to the budget and to the free blocks minus a small reserve kept for
  running decodes (`num_reserved_blocks`, only while others run). The first waiting request
  that gets nothing stops admission: nobody overtakes it.
- A step of one token per request (every decode step) is put in order of context, longest
  first. Decode attention starts a sequence's programs together, in batch order, so the
  longest start first and the shortest fill the tail (the longest-processing-time rule;
  kernels/decode_attention.py). Other steps keep the order above.
- n > 1: the first child of a parent prefills alone; its siblings are held back until its
  prompt is computed, then get references to its full prompt blocks (block-aligned, never
  the last prompt token) and compute only the rest.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from operator import attrgetter

from lodger.engine.kv_cache_manager import KVCacheManager, cdiv
from lodger.engine.request import Request, RequestStatus

RUNNING = RequestStatus.RUNNING
_NUM_COMPUTED = attrgetter("num_computed_tokens")


@dataclass(slots=True)
class SchedulerConfig:
    # Tokens per KV block.
    block_size: int
    # KV blocks in the pool, the null block 0 included (num_blocks - 1 are usable).
    num_blocks: int
    # Most requests running (holding blocks and being stepped) at once.
    max_num_seqs: int
    # Token budget of one step: prefill chunks + decodes.
    max_num_batched_tokens: int
    # Longest prompt + output; a request reaching it finishes with FINISHED_LENGTH.
    max_model_len: int
    # Share full blocks between requests with the same prefix.
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        for name in ("block_size", "num_blocks", "max_num_seqs", "max_num_batched_tokens",
                     "max_model_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_blocks < 2:
            raise ValueError(
                f"num_blocks must be at least 2 (block 0 is the null block), got {self.num_blocks}"
            )


@dataclass(slots=True)
class SchedulerOutput:
    # Requests computing tokens this step, in batch order (running first, then admitted).
    scheduled: list[Request]
    # Tokens each one computes this step, parallel to `scheduled`.
    num_scheduled_tokens: list[int]
    # sum(num_scheduled_tokens).
    total_num_scheduled_tokens: int
    # Requests finished or aborted since the last step (the runner drops their state).
    finished_request_ids: set[str]
    # Requests preempted while building this step.
    num_preemptions: int
    # Each one's num_computed_tokens before this step: the position of its first new token.
    num_computed_tokens: list[int]
    # Whether each one samples this step (its new tokens reach its last token).
    samples: list[bool]


@dataclass(slots=True)
class SchedulerStats:
    num_running: int  # requests holding a seat (max_num_seqs)
    num_waiting: int  # queued, preempted or held-back n > 1 siblings
    num_blocks: int  # usable KV blocks (the pool minus the null block)
    num_free_blocks: int  # blocks no request references (evictable cached ones included)
    kv_cache_usage: float  # 1 - num_free_blocks / num_blocks
    prefix_cache_queries: int  # tokens of admitted requests looked up in the prefix cache
    prefix_cache_hits: int  # of those, tokens found cached
    num_preemptions_total: int  # preemptions since the scheduler started


class Scheduler:
    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.block_size = config.block_size
        self.kv = KVCacheManager(config.block_size, config.num_blocks, config.enable_prefix_caching)
        # Free blocks a waiting request must leave for running ones (about 1% of the pool).
        self.num_reserved_blocks = max(1, self.kv.num_usable_blocks // 100)
        self.requests: dict[str, Request] = {}  # every unfinished request, by id
        self.running: list[Request] = []  # admission order; the newest is preempted first
        self.waiting: deque[Request] = deque()  # FCFS; preempted ones go back to the front
        # n > 1: parent id -> the child that prefills first, and its siblings held back.
        self.leaders: dict[str, Request] = {}
        self.held: dict[str, list[Request]] = {}
        self.num_held = 0
        self.finished_request_ids: set[str] = set()
        self.num_preemptions_total = 0
        self._num_step_preemptions = 0  # preemptions while building the current step

    # ---- requests in and out ------------------------------------------------------------

    def check_fits(self, num_tokens: int) -> str | None:
        """None if a request of num_tokens (prompt + max_tokens) fits the pool alone, else why.

        The last token is sampled but never cached, so K/V of num_tokens - 1 must fit.
        """
        num_needed = cdiv(num_tokens - 1, self.block_size)
        num_usable = self.kv.num_usable_blocks
        if num_needed <= num_usable:
            return None
        return (
            f"a request of {num_tokens} tokens (prompt + max_tokens) needs {num_needed} KV blocks "
            f"of {self.block_size} tokens but the KV cache has only {num_usable} "
            f"({num_usable * self.block_size} tokens): lower max_tokens or the prompt length, "
            f"or give the engine more KV cache memory"
        )

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request_id {request.request_id!r} is already scheduled")
        if request.status != RequestStatus.WAITING or request.block_ids:
            raise ValueError(f"request {request.request_id!r} must be new (WAITING, no blocks)")
        max_tokens = request.sampling_params.max_tokens
        num_tokens = request.num_prompt_tokens + (max_tokens or self.config.max_model_len)
        problem = self.check_fits(min(num_tokens, self.config.max_model_len))
        if problem is not None:
            raise ValueError(f"request {request.request_id!r}: {problem}")
        parent_id = request.parent_id
        leader = None if parent_id is None else self.leaders.get(parent_id)
        if leader is not None and request.prompt_token_ids != leader.prompt_token_ids:
            raise ValueError(
                f"request {request.request_id!r}: children of parent {parent_id!r} "
                "must share one prompt"
            )
        self.requests[request.request_id] = request
        if parent_id is not None:
            if leader is not None:
                self.held[parent_id].append(request)
                self.num_held += 1
                return
            if self._num_shareable_blocks(request) > 0:
                self.leaders[parent_id] = request
                self.held[parent_id] = []
        self.waiting.append(request)

    def finish_request(
        self, request_id: str, status: RequestStatus, stop_reason: int | str | None = None
    ) -> None:
        """Finish a request in any state (abort, or a stop string); unknown ids are ignored."""
        if not RequestStatus.is_finished(status):
            raise ValueError(f"status must be a FINISHED_* status, got {status!r}")
        request = self.requests.pop(request_id, None)
        if request is None:
            return
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        elif request in self.held.get(request.parent_id, ()):
            self.held[request.parent_id].remove(request)
            self.num_held -= 1
        else:
            self.waiting.remove(request)
        self._finish(request, status, stop_reason)
        if self.leaders.get(request.parent_id) is request:
            self._release_siblings(request, share=False)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ---- one step -----------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        scheduled: list[Request] = []
        num_scheduled: list[int] = []
        self._num_step_preemptions = 0
        running = self.running
        block_size = self.block_size
        i = 0
        while i < len(running) and budget > 0:
            request = running[i]
            if request.num_output_placeholders and self._samples_its_last(request):
                i += 1  # its last token is being sampled: nothing left to compute
                continue
            num_computed = request.num_computed_tokens
            num_new = request.num_tokens_with_placeholders - num_computed
            assert num_new > 0, f"running request {request.request_id!r} has nothing to compute"
            if num_new > budget:
                num_new = budget
            if num_computed + num_new > len(request.block_ids) * block_size:
                num_new = self._grow_or_preempt(request, num_new)
                if num_new == 0:
                    break  # the request preempted itself: it was the last one running
            scheduled.append(request)
            num_scheduled.append(num_new)
            budget -= num_new
            i += 1
        if self._num_step_preemptions == 0:
            budget = self._admit_waiting(budget, scheduled, num_scheduled)
        num_tokens = self.config.max_num_batched_tokens - budget
        if num_tokens == len(scheduled):  # one token each
            scheduled.sort(key=_NUM_COMPUTED, reverse=True)  # stable: ties keep their order
        if scheduled:
            finished, self.finished_request_ids = self.finished_request_ids, set()
        else:  # the engine may skip the runner on an empty step: tell it again next time
            finished = set(self.finished_request_ids)
        num_computed, samples = self._advance(scheduled, num_scheduled)
        return SchedulerOutput(
            scheduled=scheduled,
            num_scheduled_tokens=num_scheduled,
            total_num_scheduled_tokens=num_tokens,
            finished_request_ids=finished,
            num_preemptions=self._num_step_preemptions,
            num_computed_tokens=num_computed,
            samples=samples,
        )

    def _advance(
        self, scheduled: list[Request], num_scheduled: list[int]
    ) -> tuple[list[int], list[bool]]:
        """Count the scheduled tokens as computed and add a placeholder for each request
        that samples; returns the counts before the step and who samples."""
        num_computed_before: list[int] = []
        samples: list[bool] = []
        for request, num_new in zip(scheduled, num_scheduled, strict=True):
            start = request.num_computed_tokens
            end = start + num_new
            num_tokens = request.num_tokens_with_placeholders
            assert end <= num_tokens, request.request_id
            request.num_computed_tokens = end
            num_computed_before.append(start)
            samples.append(end == num_tokens)
            if end == num_tokens:
                request.num_output_placeholders += 1
        return num_computed_before, samples

    def _samples_its_last(self, request: Request) -> bool:
        """Whether the placeholders already reach max_tokens or max_model_len."""
        max_tokens = request.sampling_params.max_tokens
        num_placeholders = request.num_output_placeholders
        return (
            max_tokens is not None and request.num_output_tokens + num_placeholders >= max_tokens
        ) or request.num_tokens_with_placeholders >= self.config.max_model_len

    def _grow_or_preempt(self, request: Request, num_new: int) -> int:
        """Blocks for up to num_new tokens of a running request, preempting the newest
        running requests while not even one token fits; returns the tokens granted (0 if
        the request had to preempt itself)."""
        running = self.running
        num_granted = self.kv.allocate_slots(request, num_new)
        while num_granted == 0:
            if running[-1] is not request or not self._reclaim_waiting_blocks():
                victim = running.pop()
                self._preempt(victim)
                self._num_step_preemptions += 1
                if victim is request:
                    return 0
            num_granted = self.kv.allocate_slots(request, num_new)
        return num_granted

    def _admit_waiting(
        self, budget: int, scheduled: list[Request], num_scheduled: list[int]
    ) -> int:
        """Admit waiting requests (FCFS) into the step; returns the budget left."""
        waiting, running, kv = self.waiting, self.running, self.kv
        while waiting and budget > 0 and len(running) < self.config.max_num_seqs:
            request = waiting[0]
            cached = kv.find_cached_prefix(request) if request.num_computed_tokens == 0 else []
            num_computed = request.num_computed_tokens + len(cached) * self.block_size
            num_left = request.num_tokens - num_computed
            num_reserved = self.num_reserved_blocks if running else 0
            num_granted = kv.admit(request, min(num_left, budget), cached, num_reserved)
            if num_granted == 0:
                if running or not self._reclaim_waiting_blocks():
                    break  # FCFS: nobody overtakes it
                continue  # only waiting siblings held the blocks: retry without them
            waiting.popleft()
            if request.num_preemptions == 0 and not request.num_cached_tokens:
                request.num_cached_tokens = request.num_computed_tokens
            request.status = RequestStatus.RUNNING
            running.append(request)
            scheduled.append(request)
            num_scheduled.append(num_granted)
            budget -= num_granted
        return budget

    def update(self, out: SchedulerOutput, sampled: list[int | None]) -> list[Request]:
        """Apply a step's results; returns the requests that got a new token (finished too).

        `sampled[i]` is the token sampled for `out.scheduled[i]`, None for a mid-prompt
        chunk (one that did not reach the request's last token). A request finished or
        preempted since `out` was scheduled is skipped: its token is dropped.
        """
        if len(sampled) != len(out.scheduled):
            raise ValueError(
                f"sampled has {len(sampled)} entries but {len(out.scheduled)} requests ran"
            )
        kv, max_model_len = self.kv, self.config.max_model_len
        caching = kv.enable_prefix_caching
        updated: list[Request] = []
        num_finished = 0
        for request, token_id, samples in zip(out.scheduled, sampled, out.samples, strict=True):
            if request.status is not RUNNING:
                continue  # finished or preempted since schedule(); its blocks are gone
            assert (token_id is not None) == samples, request.request_id
            tokens = request.all_token_ids
            if token_id is not None:
                request.num_output_placeholders -= 1
                assert request.num_output_placeholders >= 0, request.request_id
                tokens.append(token_id)
            if caching:
                kv.cache_full_blocks(request)
            if request.parent_id is not None:
                self._maybe_release_siblings(request)
            if token_id is None:
                continue
            output = request.output_token_ids
            output.append(token_id)
            updated.append(request)
            params = request.sampling_params
            # cheap filter; _check_stop decides (min_tokens, ignore_eos, which reason)
            if (
                token_id == request.eos_token_id
                or token_id in params.stop_token_ids
                or len(output) == params.max_tokens
                or len(tokens) >= max_model_len
            ):
                status, stop_reason = self._check_stop(request, token_id)
                if status is not None:
                    del self.requests[request.request_id]
                    self._finish(request, status, stop_reason)
                    num_finished += 1
        if num_finished:
            self.running = [r for r in self.running if r.status is RUNNING]
        return updated

    def _maybe_release_siblings(self, request: Request) -> None:
        if (
            self.leaders.get(request.parent_id) is request
            and request.num_computed_tokens >= request.num_prompt_tokens
        ):
            self._release_siblings(request, share=True)

    def _check_stop(
        self, request: Request, token_id: int
    ) -> tuple[RequestStatus | None, int | None]:
        """The finished status (and stop token) the new token leads to, or (None, None).

        EOS (unless ignore_eos) and stop_token_ids count only from min_tokens outputs on;
        a stop token wins over a length limit reached by the same token.
        """
        params = request.sampling_params
        num_output = request.num_output_tokens
        if num_output >= params.min_tokens:
            if token_id == request.eos_token_id and not params.ignore_eos:
                return RequestStatus.FINISHED_STOPPED, None
            if params.stop_token_ids and token_id in params.stop_token_ids:
                return RequestStatus.FINISHED_STOPPED, token_id
        if params.max_tokens is not None and num_output >= params.max_tokens:
            return RequestStatus.FINISHED_LENGTH, None
        if request.num_tokens >= self.config.max_model_len:
            return RequestStatus.FINISHED_LENGTH, None
        return None, None

    # ---- state changes ------------------------------------------------------------------

    def _finish(
        self, request: Request, status: RequestStatus, stop_reason: int | str | None
    ) -> None:
        self.kv.free(request)
        request.status = status
        request.stop_reason = stop_reason
        self.finished_request_ids.add(request.request_id)

    def _preempt(self, request: Request) -> None:
        self.kv.free(request)
        request.num_computed_tokens = 0
        request.num_output_placeholders = 0  # a launched step's token for it is dropped
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.appendleft(request)

    def _reclaim_waiting_blocks(self) -> bool:
        """Drop the shared prompt blocks of waiting n > 1 siblings; True if any were held.

        The last resort before a running request preempts itself: once their leader has
        finished, waiting siblings may be the only holders of those blocks.
        """
        reclaimed = False
        for request in self.waiting:
            if request.block_ids:
                self.kv.free(request)
                request.num_computed_tokens = 0
                request.num_cached_tokens = 0
                reclaimed = True
        return reclaimed

    def _num_shareable_blocks(self, request: Request) -> int:
        """Full prompt blocks an n > 1 sibling can share (never the last prompt token)."""
        return (request.num_prompt_tokens - 1) // self.block_size

    def _release_siblings(self, leader: Request, share: bool) -> None:
        """Queue the siblings held back for `leader`, sharing its prompt blocks if `share`."""
        parent_id = leader.parent_id
        del self.leaders[parent_id]
        siblings = self.held.pop(parent_id)
        self.num_held -= len(siblings)
        if share:
            shared = leader.block_ids[: self._num_shareable_blocks(leader)]
            for sibling in siblings:
                self.kv.share_prefix(sibling, shared)
        self.waiting.extendleft(reversed(siblings))

    # ---- introspection ------------------------------------------------------------------

    def stats(self) -> SchedulerStats:
        pool = self.kv.pool
        return SchedulerStats(
            num_running=len(self.running),
            num_waiting=len(self.waiting) + self.num_held,
            num_blocks=pool.num_usable_blocks,
            num_free_blocks=pool.num_free_blocks,
            kv_cache_usage=pool.usage(),
            prefix_cache_queries=self.kv.prefix_cache_queries,
            prefix_cache_hits=self.kv.prefix_cache_hits,
            num_preemptions_total=self.num_preemptions_total,
        )
