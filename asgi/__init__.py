"""lodger.asgi: the OpenAI-compatible API as a Starlette app to mount in a host web app.

    from lodger.asgi import create_app
    app.mount("/llm", create_app(model="path/to/checkpoint"))
"""

from lodger.asgi.app import create_app
from lodger.asgi.middleware import LodgerMiddleware

__all__ = ["LodgerMiddleware", "create_app"]
