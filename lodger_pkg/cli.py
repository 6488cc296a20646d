"""The `lodger` command (also `python -m lodger`).

    lodger serve --model path/to/checkpoint --port 8000 --api-key KEY --max-model-len 2048

Every EngineConfig field is a flag (--max-model-len, --num-kv-blocks, --dtype, ...); flags
left out keep EngineConfig's defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from lodger.engine.config import DEVICES, DTYPES, EngineConfig

_CHOICES = {"dtype": DTYPES, "device": DEVICES}


def _engine_flags(parser: argparse.ArgumentParser) -> list[str]:
    """One flag per EngineConfig field but `model`; returns the field names."""
    group = parser.add_argument_group("engine options (EngineConfig)")
    names = []
    for field in dataclasses.fields(EngineConfig):
        if field.name == "model":
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = type(field.default)
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=f"default: {field.default}")
            continue
        if field.default is None:  # `int | None` fields: None means "work it out"
            kind = float if "float" in str(field.type) else int
        group.add_argument(flag, type=kind, choices=_CHOICES.get(field.name),
                           default=argparse.SUPPRESS, help=f"default: {field.default}")
        names.append(field.name)
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lodger", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the OpenAI-compatible API with uvicorn")
    serve.add_argument("--model", help="a local HF checkpoint directory "
                                       "(default: the bundled model)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=os.environ.get("LODGER_API_KEY"),
                       help="require 'Authorization: Bearer KEY' (default: $LODGER_API_KEY)")
    serve.add_argument("--served-model-name", help="the model name clients send "
                                                   "(default: the checkpoint dir's name)")
    serve.add_argument("--max-concurrent-requests", type=int, default=256,
                       help="generation requests in flight before 429 (default: 256)")
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug"])
    _engine_flags(serve)
    return parser


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from lodger import default_model_path
    from lodger.asgi import create_app
    from lodger.engine import AsyncEngine, EngineDeadError

    model = args.model
    if model is None:
        try:
            model = default_model_path()
        except FileNotFoundError as exc:
            print(f"lodger serve: {exc}", file=sys.stderr)
            return 2
    engine_options: dict[str, Any] = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(EngineConfig)
        if f.name != "model" and hasattr(args, f.name)
    }
    try:  # load the model before listening, like vLLM: a bad model fails here, not later
        engine = AsyncEngine(model=model, **engine_options)
        engine.wait_until_ready_sync()
    except (ValueError, TypeError, EngineDeadError) as exc:
        print(f"lodger serve: {exc}", file=sys.stderr)
        return 2
    app = create_app(engine, api_key=args.api_key, served_model_name=args.served_model_name,
                     max_concurrent_requests=args.max_concurrent_requests)
    print(quickstart_banner(args, app.state.lodger.model_name), flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        engine.close(drain_timeout=30)
    return 0


def quickstart_banner(args: argparse.Namespace, model_name: str) -> str:
    """Ready-to-paste curl and openai examples for the server about to start."""
    base_url = f"http://{args.host}:{args.port}/v1"
    auth = f' -H "Authorization: Bearer {args.api_key}"' if args.api_key else ""
    body = json.dumps({
        "model": model_name, "max_tokens": 64,
        "messages": [{"role": "user", "content": "What does os.path.join do?"}],
    })
    python = "\n".join([
        "from openai import OpenAI",
        f'client = OpenAI(base_url="{base_url}", api_key="{args.api_key or "none"}")',
        f'r = client.completions.create(model="{model_name}", prompt="def read_file(path):",'
        " max_tokens=64)",
        "print(r.choices[0].text)",
    ])
    return (
        f"\nlodger is serving {model_name!r} at {base_url} (OpenAI-compatible). Try:\n\n"
        f"  curl {base_url}/chat/completions{auth} -H 'Content-Type: application/json' \\\n"
        f"    -d '{body}'\n\n"
        f"  python -c '{python}'\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    raise AssertionError(f"unhandled command {args.command!r}")
