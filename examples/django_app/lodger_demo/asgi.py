"""The ASGI entry: /llm/... is lodger's OpenAI-compatible API, everything else is Django.

    uvicorn lodger_demo.asgi:application --port 8000

Django's ASGI handler has no lifespan, so this router answers lifespan itself and shuts the
engine down when the server stops. (lodger.asgi.LodgerMiddleware does the same routing
as a wrapper: `application = LodgerMiddleware(django_app, engine=engine)`.)
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lodger_demo.settings")
django_app = get_asgi_application()

from lodger.asgi import create_app  # noqa: E402
from lodger_demo.llm import client, engine, sync_client  # noqa: E402

PREFIX = "/llm"
lodger_app = create_app(engine=engine)


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await client.aclose()
            sync_client.close()
            await engine.shutdown(drain_timeout=10)
            await send({"type": "lifespan.shutdown.complete"})
            return


async def application(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    path = scope.get("path", "")
    if path == PREFIX or path.startswith(PREFIX + "/"):
        # like a Starlette Mount: the prefix moves from the path into root_path
        scope = dict(scope, root_path=scope.get("root_path", "") + PREFIX)
        await lodger_app(scope, receive, send)
    else:
        await django_app(scope, receive, send)
