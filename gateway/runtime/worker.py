"""A worker process: one Gateway, on the listening socket the supervisor bound.

Started by the supervisor as `python -m gateway.runtime.worker` with two inherited
descriptors: the public listening socket (shared by every worker; the kernel hands each
new connection to one of them) and its end of the control channel. The policy comes
over the channel as a snapshot the supervisor has already validated (its text and the
key files it names), so every worker compiles exactly what was checked, even if a file
changes meanwhile or has gone bad since.

Exit codes: 0 after a drain; EXIT_START when it could not start (the supervisor then
stops the whole gateway instead of restarting it in a loop).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.app import Gateway
from gateway.obs import processlog
from gateway.obs.access import LineWriter, set_sink
from gateway.obs.cells import CellStore
from gateway.obs.metrics import Metrics
from gateway.policy import ConfigError, load_policy_text
from gateway.policy.compile import CompiledPolicy
from gateway.policy.snapshot import Snapshot
from gateway.runtime.control import Channel, Message

log = logging.getLogger("gateway.runtime")

EXIT_START = 3


class Worker:
    def __init__(self, channel: Channel, listen: socket.socket, metrics: Metrics) -> None:
        self._channel = channel
        self._listen = listen
        self._metrics = metrics
        self._gateway: Gateway | None = None
        self._start: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        # Prepared policies waiting for commit or abort, by the supervisor's generation.
        self._prepared: dict[int, CompiledPolicy] = {}
        # Prepares under way: an abort that arrives first (the supervisor gave up
        # waiting, or another worker failed) cancels it, key fetches and all.
        self._preparing: dict[int, asyncio.Task[Message]] = {}

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        # The supervisor decides when to reload; a terminal's hangup is not a reload.
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        serving = asyncio.ensure_future(self._channel.serve(self._handle))
        # The supervisor gone (end of file on the channel) is a stop, too.
        serving.add_done_callback(lambda _: self._stop.set())
        start = await _first(self._start, self._stop)
        if start is None:
            return 0
        try:
            policy = await asyncio.to_thread(_compile, start)
            gateway = Gateway(policy, listen_socket=self._listen, admin=False, metrics=self._metrics)
            await gateway.start(accept=bool(start.get("accept", True)))
        except ConfigError as exc:
            print(f"gateway: worker cannot start: invalid policy\n{exc}", file=sys.stderr)
            return EXIT_START
        except (OSError, ValueError) as exc:
            print(f"gateway: worker cannot start: {exc}", file=sys.stderr)
            return EXIT_START
        self._gateway = gateway
        # Everything built at start (policy, routes, keys, metrics) lives for the process:
        # moving it out of the collector's view keeps GC pauses independent of policy size.
        gc.collect()
        gc.freeze()
        self._channel.reply(start, {"op": "serving"})
        await self._stop.wait()
        await gateway.stop()
        for policy in self._prepared.values():
            await gateway.abort(policy)
        self._channel.close()
        serving.cancel()
        return 0

    async def _handle(self, message: Message) -> None:
        op = message.get("op")
        if op == "start":
            if not self._start.done():
                self._start.set_result(message)
            return
        gateway = self._gateway
        if gateway is None:
            return
        if op == "accept":
            gateway.accept()
            self._channel.reply(message, {"op": "accepting"})
        elif op == "status":
            self._metrics.sample()
            self._channel.reply(message, {"op": "status", "waiting": gateway.not_ready()})
        elif op == "prepare":
            gen = message["gen"]
            task = asyncio.ensure_future(self._prepare(gateway, message))
            self._preparing[gen] = task
            try:
                answer = await task
            except asyncio.CancelledError:
                answer = {"op": "prepared", "ok": False, "error": "aborted"}
            finally:
                self._preparing.pop(gen, None)
            self._channel.reply(message, answer)
        elif op == "commit":
            policy = self._prepared.pop(message["gen"], None)
            if policy is not None:
                await gateway.commit(policy)
            self._channel.reply(message, {"op": "committed", "ok": policy is not None})
        elif op == "abort":
            preparing = self._preparing.get(message["gen"])
            if preparing is not None:
                preparing.cancel()
            policy = self._prepared.pop(message["gen"], None)
            if policy is not None:
                await gateway.abort(policy)
            self._channel.reply(message, {"op": "aborted"})

    async def _prepare(self, gateway: Gateway, message: Message) -> Message:
        try:
            policy = await asyncio.to_thread(_compile, message)
        except ConfigError as exc:
            # The supervisor validated this text: a difference means a file it names
            # changed since. The watcher will bring the next version.
            return {"op": "prepared", "ok": False, "error": f"invalid policy: {exc}"}
        except Exception as exc:  # a reload must never take the worker down
            return {"op": "prepared", "ok": False, "error": type(exc).__name__}
        problem = await gateway.prepare(policy)
        if problem is not None:
            return {"op": "prepared", "ok": False, "error": problem}
        self._prepared[message["gen"]] = policy
        return {"op": "prepared", "ok": True}


def _compile(message: Message) -> CompiledPolicy:
    """The policy of a start or prepare message, from its snapshot (ConfigError, ValueError).
    A worker never compares snapshots: it keeps none (a policy's key files, up to 16 MiB,
    would otherwise stay for the life of the process, frozen out of the collector)."""
    snapshot = Snapshot.from_wire(message.pop("snapshot"))
    policy = load_policy_text(snapshot.text, message["source"], replay=snapshot)
    return dataclasses.replace(policy, snapshot=Snapshot("", snapshot.base_dir))


async def _first(start: asyncio.Future[Message], stop: asyncio.Event) -> Message | None:
    stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    waits: set[asyncio.Future[Any]] = {start, stopping}
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    return start.result() if start.done() else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway-worker", description="A gateway worker (started by `gateway run`).")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--name", required=True, help="how the worker is named in logs and metrics")
    parser.add_argument("--metrics-file", required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="text", choices=processlog.FORMATS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    processlog.configure(args.log_level, args.log_format, worker=args.name)
    # stdout is a pipe to the supervisor, which writes whole lines of every worker to
    # its own stdout: lines of two workers never interleave.
    writer = LineWriter(sys.stdout)
    set_sink(writer.write)
    try:
        _install_uvloop()
        return asyncio.run(_main(args))
    finally:
        set_sink(None)
        writer.close()
        if writer.dropped:
            print(f"gateway: worker {args.name}: {writer.dropped} access log lines were dropped", file=sys.stderr)


async def _main(args: argparse.Namespace) -> int:
    listen = socket.socket(fileno=args.listen_fd)
    channel = await Channel.open(socket.socket(fileno=args.control_fd))
    metrics = Metrics(CellStore(Path(args.metrics_file)))
    return await Worker(channel, listen, metrics).run()


def _install_uvloop() -> None:
    # uvloop is optional (it does not build everywhere); asyncio's loop is the fallback.
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


if __name__ == "__main__":
    sys.exit(main())
