"""The ``modelplane`` command line: ``serve``, ``token``, ``schema export|check``.

Configuration errors end the process with one line on stderr naming the setting (exit 2);
start-up failures (database unreachable, bad kubeconfig) likewise (exit 1). No tracebacks for
problems a user can fix.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from modelplane.auth import issue_dev_token, load_dev_key
from modelplane.logs import configure_logging
from modelplane.settings import Environment, Settings, SettingsError, load_settings
from storage.documents import Role

SCHEMA_PATH = Path("graphql/schema.graphql")


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def server_config(app: ASGIApp, *, host: str, port: int, ws_max_bytes: int) -> uvicorn.Config:
    """How ``serve`` (and the tests) run the app under uvicorn. ``ws_max_bytes`` caps one
    WebSocket message (``MODELPLANE_GRAPHQL_MAX_BODY_BYTES``, like an HTTP body): uvicorn's
    own default, 16 MiB, was read and JSON-decoded before the document limits saw it."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        ws_max_size=ws_max_bytes,
        # The protocol whose connections the subscriptions' fast lane writes to (direct.py).
        ws="websockets-sansio",
        # Compressing each subscription message for each subscriber costs CPU that fan-out
        # needs (the messages are small JSON), and the fast lane writes uncompressed frames.
        ws_per_message_deflate=False,
        lifespan="on",
    )


FULL_COLLECTION_EVERY = 100
"""Middle-generation collections between full ones (CPython's default is 10; see
:func:`_tune_collector`)."""


def _tune_collector() -> None:
    """Keep the cyclic garbage collector's full collections out of live delivery.

    A full collection stops the loop while it walks every tracked object. Two changes, both
    measured with ``bench/fanout.py`` (1,000 subscribers, 100 events/s):

    * Start-up builds about 160,000 objects that live as long as the process (modules, the
      schema, clients); each full collection walked them again, about 80 ms here. They are
      frozen: collected once, then moved out of the collector's sight.
    * With 1,000 subscribers the rest of the heap still takes 140 to 150 ms to walk, and
      CPython ran a full collection every 30 s or so, each finding 0 to 5 garbage objects
      (reference counting frees nearly everything; cycles are rare). Deliveries in flight
      stalled for its length, which was most of the latency tail. A full collection now waits
      for :data:`FULL_COLLECTION_EVERY` middle-generation ones (minutes at that load), so cyclic
      garbage that survives to the oldest generation is freed later, not never.
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


async def _serve(settings: Settings) -> int:
    from modelplane.app import create_app  # noqa: PLC0415  lazy
    from modelplane.graph import StartupError, open_resources  # noqa: PLC0415

    try:
        async with open_resources(settings) as resources:
            app = create_app(settings, resources=resources)
            server = uvicorn.Server(
                server_config(
                    app,
                    host=settings.host,
                    port=settings.port,
                    ws_max_bytes=settings.graphql_max_body_bytes,
                )
            )
            if resources.dev_key is not None:
                token = issue_dev_token(
                    resources.dev_key,
                    subject="admin",
                    organization_id="default",
                    role=Role.ADMIN,
                    ttl_seconds=7 * 24 * 3600,
                )
                base = f"http://{settings.host}:{settings.port}"
                _say(
                    f"\nmodelplane is starting on {settings.runtime.value} runtime\n"
                    f"  Dashboard:   {base}/?token={token}\n"
                    f"  GraphiQL:    {base}/graphql\n"
                    f"  admin token: {token}\n"
                    f'  (GraphiQL headers: {{"Authorization": "Bearer <admin token>"}})\n'
                )
            # uvicorn re-raises SIGINT/SIGTERM once it has shut down; with the default handlers
            # back in place that would kill the process before the embedded database stops.
            # Handlers that only record let the `async with` above close everything first.
            received: list[int] = []
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda signum, _frame: received.append(signum))
            _tune_collector()
            await server.serve()
    except StartupError as exc:
        _say(f"modelplane: {exc}")
        return 1
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    settings = load_settings(**overrides)
    settings.check_serving()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    if settings.event_loop == "uvloop":
        import uvloop  # noqa: PLC0415  only when asked for

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_serve(settings))
    return asyncio.run(_serve(settings))


def _cmd_token(args: argparse.Namespace) -> int:
    settings = load_settings()
    if settings.environment is not Environment.DEVELOPMENT:
        _say("modelplane: development tokens exist only with MODELPLANE_ENVIRONMENT=development")
        return 2
    secret = settings.secret_key.get_secret_value() if settings.secret_key else None
    key = load_dev_key(secret_key=secret, state_dir=settings.state_dir)
    print(  # noqa: T201  the token is the command's output
        issue_dev_token(
            key,
            subject=args.subject,
            organization_id=args.organization,
            role=Role(args.role),
            ttl_seconds=args.ttl,
        )
    )
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from modelplane.schema_root import export_sdl  # noqa: PLC0415  lazy: strawberry is slow to load

    sdl = export_sdl()
    path = Path(args.path)
    if args.action == "export":
        path.write_text(sdl)
        _say(f"wrote {path}")
        return 0
    current = path.read_text() if path.exists() else ""
    if current != sdl:
        _say(f"{path} is out of date: run `make schema` (modelplane schema export) and commit it")
        return 1
    _say(f"{path} matches the code")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    from modelplane.jobs import run_download  # noqa: PLC0415  lazy: fast start

    code, message = asyncio.run(run_download(settings, args.weights_id))
    _say(message)
    return code


def _cmd_clean(args: argparse.Namespace) -> int:
    from controllers.transfer.downloader import LocalSink  # noqa: PLC0415  lazy: fast start

    directory = Path(args.dir)
    # The recorded files come from the directory's marker, which must name these weights.
    sink = LocalSink(directory, weights_id=args.weights_id)
    if args.partials_only:
        asyncio.run(sink.discard_partials([]))
        _say(f"modelplane: removed partial downloads under {directory}")
    else:
        asyncio.run(sink.remove_all())
        _say(f"modelplane: removed the files of {args.weights_id} under {directory}")
    return 0


def _cmd_hub_token(args: argparse.Namespace) -> int:
    settings = load_settings()
    from modelplane.hub_tokens import store_hub_token  # noqa: PLC0415  lazy: fast start

    token = sys.stdin.readline().strip()
    code, message = asyncio.run(store_hub_token(settings, args.name, token))
    _say(message)
    return code


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="modelplane", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API server (embedded defaults if unset)")
    serve.add_argument("--host", help="bind address (MODELPLANE_HOST)")
    serve.add_argument("--port", type=int, help="port (MODELPLANE_PORT)")
    serve.set_defaults(func=_cmd_serve)

    token = sub.add_parser("token", help="print a development bearer token")
    token.add_argument("--subject", default="admin")
    token.add_argument("--organization", default="default")
    token.add_argument("--role", choices=[r.value for r in Role], default=Role.ADMIN.value)
    token.add_argument("--ttl", type=int, default=24 * 3600, help="seconds")
    token.set_defaults(func=_cmd_token)

    download = sub.add_parser(
        "download", help="run one download to completion (what a download Job's pod runs)"
    )
    download.add_argument("--weights-id", required=True)
    download.set_defaults(func=_cmd_download)

    clean = sub.add_parser(
        "clean", help="remove a download's partials or files (what a cleanup Job's pod runs)"
    )
    clean.add_argument("--dir", required=True, help="the download's directory")
    clean.add_argument(
        "--weights-id", help="remove only what these weights wrote (their marker must agree)"
    )
    clean.add_argument(
        "--partials-only", action="store_true", help="keep verified files (cancelDownload)"
    )
    clean.set_defaults(func=_cmd_clean)

    hub_token = sub.add_parser(
        "hub-token",
        help="store the server-wide hub token (read from standard input) in the encrypted "
        "store of the local runtime, as the entry MODELPLANE_HUB_TOKEN_SECRET names",
    )
    hub_token.add_argument("action", choices=["set"])
    hub_token.add_argument("name", help="the entry's name (MODELPLANE_HUB_TOKEN_SECRET)")
    hub_token.set_defaults(func=_cmd_hub_token)

    schema = sub.add_parser("schema", help="export or check graphql/schema.graphql")
    schema.add_argument("action", choices=["export", "check"])
    schema.add_argument("--path", default=str(SCHEMA_PATH))
    schema.set_defaults(func=_cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``modelplane`` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except SettingsError as exc:
        _say(f"modelplane: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130
    return code
