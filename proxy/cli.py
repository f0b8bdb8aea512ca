"""The ``llmedge`` command: serve, check, demo, route, train, eval."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import traceback
from typing import TYPE_CHECKING

from . import __version__
from .config import Config, load, missing_keys, parse_address
from .errors import ConfigError
from .loops import LOOPS, loop_factory

OK = 0
CONFIG_ERROR = 2
STARTUP_FAILURE = 3

if TYPE_CHECKING:
    from .peers import WorkerSet

log = logging.getLogger("llmedge")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _refuse(path: str, problems: list[str]) -> None:
    print("llmedge: %s is not a valid configuration:" % path, file=sys.stderr)
    for problem in problems:
        print("  " + problem, file=sys.stderr)
    sys.exit(CONFIG_ERROR)


def _load_or_exit(path: str) -> Config:
    try:
        return load(path)
    except ConfigError as exc:
        _refuse(path, exc.problems)
        raise  # not reached


def _preflight_or_exit(path: str, config: Config, workers: int) -> None:
    """Refuse now what a worker would refuse at start-up: the same checks as ``check``."""
    from .preflight import problems

    found = problems(config, workers)
    if found:
        _refuse(path, found)


def cmd_check(args: argparse.Namespace) -> int:
    config = _load_or_exit(args.config)
    _preflight_or_exit(args.config, config, config.server.workers)
    print("%s: OK" % args.config)
    server = config.server
    print("server: http=%s grpc=%s workers=%d" % (server.http, server.grpc, server.workers))
    print("deployments (%d):" % len(config.deployments))
    unset = missing_keys(config)
    aws = None
    for dep in config.deployments:
        note = "  [%s is not set: unusable]" % unset[dep.name] if dep.name in unset else ""
        if dep.provider == "bedrock":
            from .providers.aws_credentials import resolve
            aws = aws or resolve()
            note = ("  [%s: unusable]" % aws.problem if aws.problem else
                    "  [AWS credentials: %s%s]" % (
                        aws.method, ", renewed before they expire" if aws.expires else ""))
        print("  %-16s %s -> %s (%d endpoint%s)%s" % (
            dep.name, dep.provider, dep.upstream_model, len(dep.urls),
            "" if len(dep.urls) == 1 else "s", note))
    print("routes (%d):" % len(config.routes))
    for route in config.routes:
        line = "  %-16s %s over %s" % (route.name, route.policy, ", ".join(route.deployments)
                                       or "classes " + ", ".join(route.classes))
        if route.fallbacks:
            line += "; fallbacks %s" % ", ".join(route.fallbacks)
        print(line)
    return OK


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load_or_exit(args.config)
    workers = args.workers or config.server.workers
    if args.http:
        config.server.http = args.http
    if args.grpc:
        config.server.grpc = args.grpc
    factory = loop_factory(args.loop)
    # Before any worker exists: a refusal is one clear message, and forked workers find
    # the classifiers trained.
    _preflight_or_exit(args.config, config, workers)
    if workers <= 1:
        return _run_worker(config, factory, reuse_port=False, config_path=args.config)
    return _run_workers(config, factory, workers, args.config)


def _run_worker(config: Config, factory, reuse_port: bool, config_path: str,
                workers: WorkerSet | None = None) -> int:
    from .server import serve

    # Until the loop's handler is installed a reload signal is moot (start-up reads the file
    # anyway), and by default it would kill the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(config, reuse_port=reuse_port, config_path=config_path,
                             workers=workers))
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return STARTUP_FAILURE
    return OK


def _control_dir() -> str:
    """A private (0700) directory for the workers' control sockets. A Unix socket path has
    room for about 100 bytes: a long TMPDIR falls back to /tmp."""
    directory = tempfile.mkdtemp(prefix="llmedge-%d-" % os.getpid())
    if len(directory) > 90:
        os.rmdir(directory)
        directory = tempfile.mkdtemp(prefix="llmedge-%d-" % os.getpid(), dir="/tmp")
    return directory


def _run_workers(config: Config, factory, workers: int, config_path: str) -> int:
    """N processes, each with its own SO_REUSEPORT listener; the kernel spreads accepts.
    Each worker also listens on ``<control dir>/<index>.sock``, where the others ask it for
    its metrics and admin answers (``peers``, ``fleet``)."""
    directory = _control_dir()
    try:
        return _supervise(config, factory, workers, config_path, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _supervise(config: Config, factory, workers: int, config_path: str,
               directory: str) -> int:
    from .peers import WorkerSet

    children: dict[int, int] = {}

    def spawn(index: int) -> None:
        peers = WorkerSet(directory, index, workers)
        try:
            # A crashed predecessor's socket file would make the new worker's bind fail.
            os.unlink(peers.path(index))
        except FileNotFoundError:
            pass
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = STARTUP_FAILURE
            try:
                code = _run_worker(config, factory, reuse_port=True, config_path=config_path,
                                   workers=peers)
            except BaseException:
                # Never let an exception climb into the parent's code in this process: it
                # would remove the control directory under the other workers.
                traceback.print_exc()
            os._exit(code)
        children[pid] = index

    stopping = False

    def forward(signum, frame) -> None:
        nonlocal stopping
        # SIGHUP: each worker reloads the file itself (POST /admin/reload reaches every
        # worker too: the one that accepts it asks the others).
        stopping = stopping or signum != signal.SIGHUP
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)
    for index in range(workers):
        spawn(index)
    status = OK
    while children:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, None)
        if index is None:
            continue
        exit_code = os.waitstatus_to_exitcode(code)
        if not stopping and exit_code != OK:
            log.error("worker %d (pid %d) exited with %d; restarting it", index, pid, exit_code)
            spawn(index)
        elif exit_code != OK:
            status = exit_code
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    from .sim.demo import run_demo

    return run_demo(args.port, loop_factory(args.loop), args.grpc_port)


def _at_least_one(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError("expected a whole number >= 1, got %r" % value)
    return number


def _port(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError("expected a port 0..65535, got %r" % value)
    return int(value)


def _address(value: str) -> str:
    try:
        parse_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmedge", description="LLM routing edge proxy")
    parser.add_argument("--version", action="version", version="llmedge " + __version__)
    parser.add_argument("--log-level", default=os.environ.get("LLMEDGE_LOG_LEVEL", "info"),
                        choices=("debug", "info", "warning", "error"))
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve a configuration")
    serve.add_argument("-c", "--config", default=os.environ.get("LLMEDGE_CONFIG"),
                       required=not os.environ.get("LLMEDGE_CONFIG"))
    # argparse applies a type to a string default too: LLMEDGE_WORKERS is checked as well.
    serve.add_argument("--workers", type=_at_least_one, default=os.environ.get("LLMEDGE_WORKERS"),
                       help="processes sharing the port (default: server.workers)")
    serve.add_argument("--http", type=_address, help="override server.http (host:port)")
    serve.add_argument("--grpc", type=_address, help="override server.grpc (host:port)")
    serve.add_argument("--loop", choices=LOOPS, default=os.environ.get("LLMEDGE_LOOP", "auto"))
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate a configuration and summarise it")
    check.add_argument("-c", "--config", required=True)
    check.set_defaults(func=cmd_check)

    demo = sub.add_parser("demo", help="llmedge and three simulated upstreams, no keys needed")
    demo.add_argument("--port", type=_port, default=8080)
    demo.add_argument("--grpc-port", type=_port, default=None,
                      help="default 50051, or a free one when it is taken; 0 picks a free one")
    demo.add_argument("--loop", choices=LOOPS, default="auto")
    demo.set_defaults(func=cmd_demo)

    from .routing.classify_cli import add_commands
    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    return args.func(args)
