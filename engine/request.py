"""Request: one sequence's state as the scheduler sees it (plain Python, no torch)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lodger.engine.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2  # lost its blocks to memory pressure; waits to be recomputed
    FINISHED_STOPPED = 3  # EOS, a stop token id or a stop string
    FINISHED_LENGTH = 4  # max_tokens or max_model_len
    FINISHED_ABORTED = 5  # cancelled by the user

    @staticmethod
    def is_finished(status: RequestStatus) -> bool:
        return status >= RequestStatus.FINISHED_STOPPED


@dataclass(slots=True, eq=False)
class Request:
    """One sequence. With n > 1 each sample is its own Request (see `parent_id`).

    The scheduler owns the mutable fields; the model runner only reads them.
    """

    # Unique id inside the scheduler; n > 1 children are f"{i}_{parent_id}".
    request_id: str
    # The prompt, never changed.
    prompt_token_ids: list[int]
    # lodger.engine.sampling_params.SamplingParams (max_tokens, min_tokens, stop_token_ids, ...).
    sampling_params: SamplingParams
    # The tokenizer's EOS id; None when it has none.
    eos_token_id: int | None
    # time.monotonic() at add_request; orders the waiting queue.
    arrival_time: float
    # Prompt + output tokens; filled with the prompt when left empty.
    all_token_ids: list[int] = field(default_factory=list)
    # Tokens generated so far (also appended to all_token_ids).
    output_token_ids: list[int] = field(default_factory=list)
    # Leading tokens whose K/V are in the cache or being written by a launched step: the
    # scheduler advances it when it schedules them. It may run one token past
    # all_token_ids: under async scheduling a step can compute the token that the step
    # before it is still sampling (see num_output_placeholders).
    num_computed_tokens: int = 0
    # Tokens sampled by launched steps whose ids the host has not seen yet (0, 1 or, between
    # a step's schedule and the previous step's update, 2). Async scheduling only.
    num_output_placeholders: int = 0
    # Prompt tokens served by the prefix cache (or shared by an n > 1 sibling) at first schedule.
    num_cached_tokens: int = 0
    # The block table: block_ids[i] holds tokens [i * block_size, (i + 1) * block_size).
    block_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    # Times this request was preempted (its blocks freed, recomputed later).
    num_preemptions: int = 0
    # The stop token id or stop string that finished it; None for EOS, length and abort.
    stop_reason: int | str | None = None
    # n > 1: the user's request id shared by all samples; None for n == 1.
    parent_id: str | None = None
    # Prefix caching: chained hash of each full block of all_token_ids hashed so far.
    block_hashes: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise ValueError(f"request {self.request_id!r}: prompt_token_ids must not be empty")
        if not self.all_token_ids:
            self.all_token_ids = list(self.prompt_token_ids)
        assert len(self.all_token_ids) == len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_tokens_with_placeholders(self) -> int:
        """Tokens the request has once every launched step's sample is in."""
        return len(self.all_token_ids) + self.num_output_placeholders

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status >= RequestStatus.FINISHED_STOPPED

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)
