"""`python -m app [--model M] [--port P] ...`, also `nanochat serve`: serve the app with uvicorn, one process,
draining on SIGTERM.

The flags are vLLM's (`--model`, `--served-model-name`, `--host`, `--port`, `--device`, `--dtype`,
`--max-num-seqs`, `--max-model-len`, `--api-key`, `--enable-prefix-caching`), plus `--memory-limit`,
`--prefix-cache-bytes` and `--accept-any-model`; `--help` lists them with their variables and defaults.
Each sets a field of the one Settings object (`app.config.SERVE_FLAGS`), winning over its environment
variable; every other setting comes from NANOCHAT_* variables or `.env`. `nanochat serve` is this parser
registered as an entry point of `nanochat.commands` (pyproject.toml), so that the engine's CLI never imports
the service.

Plain uvicorn closes its listening socket the moment SIGTERM arrives and re-raises the signal at the end
(exit status 143). This runner installs its own SIGTERM/SIGINT handler instead: `/ready` turns 503 and new
requests get 503 at once, requests in flight get `NANOCHAT_DRAIN_TIMEOUT_S` to finish, and only then does
the server close and the process exit 0. SIGTERM again is ignored (a process group gets it twice); SIGINT
during a drain (a second Ctrl-C) or SIGQUIT stops at once. A model that fails to load
with `on_load_failure=exit` ends it with status 3.

Logs are text on a terminal, JSON lines otherwise (NANOCHAT_LOG_FORMAT forces either), from the app and
uvicorn alike; uvicorn's own access log is off, the app writes one access line per request
(app/observability/logging.py).

The HTTP edge's limits (request head size and time, open connections, keep-alive) are put on uvicorn's
config by app/http_limits.py, as in gunicorn's workers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import typing

from pydantic import ValidationError

from app.config import SERVE_FLAGS, Settings, env_names

logger = logging.getLogger("app")


DESCRIPTION = (
    "Serve a nanochat (or Hugging Face) model with an OpenAI-compatible API: one process, draining on "
    "SIGTERM. Each flag also has environment variables (named in brackets; the flag wins); every other "
    "setting comes from NANOCHAT_* variables or .env (see .env.example)."
)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `SERVE_FLAGS`, each with its field's description, variables and default. Their argparse
    defaults are None (not given), so that an unset flag leaves its variable or default in charge."""
    for flag, name in SERVE_FLAGS.items():
        field = Settings.model_fields[name]
        default = field.default
        shown = ",".join(default) if isinstance(default, list) else default
        shown = "unset" if shown in (None, "") else str(shown).lower() if isinstance(shown, bool) else shown
        text = f"{field.description} [{', '.join(env_names(name))}; default: {shown}]".replace("%", "%%")
        if field.annotation is bool:  # --accept-any-model / --no-accept-any-model
            switch = argparse.BooleanOptionalAction
            parser.add_argument(flag, dest=name, action=switch, default=None, help=text)
        elif typing.get_origin(field.annotation) is list:  # --api-key KEY [KEY ...]
            metavar = flag.rpartition("-")[2].upper()
            parser.add_argument(flag, dest=name, nargs="+", metavar=metavar, help=text)
        else:
            metavar = flag.removeprefix("--").upper().replace("-", "_")
            parser.add_argument(flag, dest=name, metavar=metavar, help=text)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The Settings of the environment and `.env`, with the flags given on top. Raises SettingsError."""
    given = {name: value for name in SERVE_FLAGS.values() if (value := getattr(args, name, None)) is not None}
    try:
        return Settings(**given)
    except ValidationError as e:
        raise SettingsError(e) from None


class SettingsError(ValueError):
    """Settings that do not validate, in one line that names each field's flag and variables."""

    def __init__(self, error: ValidationError) -> None:
        flags = {name: flag for flag, name in SERVE_FLAGS.items()}
        fields = {env.lower(): name for name in Settings.model_fields for env in env_names(name)}
        problems = []
        for err in error.errors():
            where = ".".join(map(str, err["loc"]))  # a field's name, or the first of its variables' names
            name = where if where in Settings.model_fields else fields.get(where.lower())
            if name is not None:
                where = " / ".join(([flags[name]] if name in flags else []) + env_names(name))
            problems.append(f"{where}: {err['msg']}")
        super().__init__(f"invalid settings: {'; '.join(problems)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=DESCRIPTION)
    add_serve_arguments(parser)
    return serve(parser.parse_args(argv), parser)


def register(sub: argparse._SubParsersAction) -> None:
    """`nanochat serve`: the entry point of `nanochat.commands` (see nanochat/cli.py)."""
    summary = "serve a model with an OpenAI-compatible API (as python -m app)"
    parser = sub.add_parser("serve", help=summary, description=DESCRIPTION)
    add_serve_arguments(parser)
    parser.set_defaults(handler=lambda args: serve(args, parser))  # its errors: one line, status 2


def serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the server the parsed flags describe until it stops; its exit status."""
    # imported here, not above: `nanochat --help` imports this module to list `serve`, and should stay quick
    import uvicorn

    from app import http_limits
    from app.main import create_app
    from app.observability.logging import configure_logging
    from app.observability.tracing import TracingConfigError
    from app.server import CLOSE_CONNECTIONS_S, DrainingServer

    try:
        settings = settings_from_args(args)
    except SettingsError as e:
        parser.error(str(e))
    configure_logging(settings.log_level, settings.log_format)

    try:
        app = create_app(settings)
    except TracingConfigError as e:
        parser.error(str(e))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # configured above, as the app's
        access_log=False,  # the app's request middleware writes the access lines
        timeout_graceful_shutdown=CLOSE_CONNECTIONS_S,
    )
    http_limits.apply(config, settings)  # header size and time, connections, keep-alive
    server = DrainingServer(config, app.state.runtime)
    app.state.exit = server.stop
    server.run()
    loader = app.state.runtime.loader
    if loader is not None and loader.is_alive():
        # A load cannot be interrupted, and finalizing the interpreter under torch code still running on
        # that thread aborts the process: leave without finalizing.
        logger.info("exiting while the model is still loading")
        logging.shutdown()
        os._exit(server.exit_code)
    return server.exit_code


if __name__ == "__main__":
    sys.exit(main())
