import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from serving_fixtures import api_server, tiny_engine  # noqa: E402, F401


@pytest.fixture
def anyio_backend():
    return "asyncio"
