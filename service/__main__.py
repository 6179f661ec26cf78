"""Run the service: `python -m service [--host H] [--port P]`, as RECO_WORKERS processes.

One worker (the default) is `uvicorn --factory service.api.app:create_app`. Several: uvicorn's process manager
starts RECO_WORKERS processes, each listening on its own SO_REUSEPORT socket (service.core.sockets: the kernel spreads
the connections), and restarts one that dies; each loads the bundle
(memory x workers) and runs its own micro-batcher. Their metrics are aggregated through prometheus_client's
multiprocess mode: each process writes its samples to memory-mapped files in PROMETHEUS_MULTIPROC_DIR
(a fresh temporary directory unless set; emptied here, before the workers start, as the mode requires), and
`/metrics`, whichever process answers it, reads them all.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import uvicorn
from pydantic import ValidationError
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from service.core.metrics import MULTIPROC_ENV
from service.core.settings import Settings
from service.core.sockets import ReusePortSockets


def prepare_metrics_dir() -> Path:
    """The multiprocess metrics directory, empty; exported to the workers through the environment (it must be set
    before they import prometheus_client)."""
    given = os.environ.get(MULTIPROC_ENV)
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="reco-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):  # a previous run's samples would be added to this one's
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info", help="uvicorn's own log level")
    parser.add_argument(
        "--timeout-graceful-shutdown",
        type=float,
        default=None,
        help="after SIGTERM (and RECO_SHUTDOWN_DELAY_S), seconds in-flight requests get before the process exits",
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings()  # a bad setting fails here, once, before any worker starts
    except ValidationError as e:
        parser.exit(2, f"python -m service: invalid settings (RECO_* environment):\n{e}\n")
    created = settings.workers > 1 and not os.environ.get(MULTIPROC_ENV)
    metrics_dir = prepare_metrics_dir() if settings.workers > 1 else None
    try:
        serve(args, settings.workers, settings.reuse_port)
    finally:
        if created and metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def serve(args: argparse.Namespace, workers: int, reuse_port: bool = True) -> None:
    config = uvicorn.Config(
        "service.api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=workers,
        access_log=False,  # the service writes its own access records (RECO_ACCESS_LOG)
        log_level=args.log_level,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
    )
    if workers == 1:
        server = uvicorn.Server(config)
        server.run()
        if not server.started:  # as uvicorn.run: the app failed to start (the reason is logged)
            sys.exit(STARTUP_FAILURE)
        return
    # As uvicorn.run with workers, except that each worker listens on a socket of its own (service.core.sockets).
    sockets = ReusePortSockets(args.host, args.port) if reuse_port else [config.bind_socket()]
    with contextlib.suppress(KeyboardInterrupt):
        Multiprocess(config, sockets=sockets).run()


if __name__ == "__main__":
    main()
