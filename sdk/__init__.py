"""lodger.sdk: one client interface for an in-process engine or a remote server.

    from lodger.sdk import connect
    client = connect(model="path/to/checkpoint")                    # in this process
    client = connect(base_url="http://127.0.0.1:8000/v1", api_key=...)  # over HTTP
"""

from lodger.sdk.client import Client, GenerationStream, connect
from lodger.sdk.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    LodgerError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
)
from lodger.sdk.sync import SyncClient
from lodger.sdk.types import Choice, Delta, Generation, ModelInfo, TokenLogprob, TopLogprob, Usage

__all__ = [
    "APIConnectionError", "APIStatusError", "APITimeoutError", "AuthenticationError",
    "BadRequestError", "Choice", "Client", "Delta", "Generation", "GenerationStream",
    "InternalServerError", "LodgerError", "ModelInfo", "NotFoundError", "RateLimitError",
    "ServiceUnavailableError", "SyncClient", "TokenLogprob", "TopLogprob", "Usage", "connect",
]
