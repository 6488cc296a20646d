"""The model, shared by the views and the mounted API: one engine in this process.

Environment: LODGER_MODEL (a checkpoint directory; default: lodger's bundled model),
LODGER_MAX_MODEL_LEN (optional), LODGER_BASE_URL (optional: the views then call that
OpenAI-compatible server instead of the engine in this process).
"""

import os

from lodger.engine import AsyncEngine
from lodger.sdk import SyncClient, connect

_max_model_len = os.environ.get("LODGER_MAX_MODEL_LEN")
engine = AsyncEngine(
    model=os.environ.get("LODGER_MODEL"),
    max_model_len=int(_max_model_len) if _max_model_len else None,
)

BASE_URL = os.environ.get("LODGER_BASE_URL")
# The one line that switches the views between the engine in this process and a server:
client = connect(base_url=BASE_URL) if BASE_URL else connect(engine=engine)

# For sync views: the same interface, blocking (its own event loop thread).
sync_client = SyncClient(base_url=BASE_URL) if BASE_URL else SyncClient(engine=engine)
