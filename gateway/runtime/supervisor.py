"""The supervisor: binds the listeners, runs N workers, reloads, restarts, drains.

`gateway run` is always a supervisor and its workers (one by default), so there is one
way the gateway runs in production. The supervisor handles no request: it owns the
public listening socket (each worker accepts from it), the admin listener (health,
readiness and the metrics of all workers), the demo upstream, the policy file watch,
and the workers' lives:

- start: the policy is validated here, once; each worker compiles the same snapshot of
  it (its text and the key files it names, policy/snapshot.py). A worker that cannot
  start stops the whole gateway (exit 1), rather than a restart loop.
- a worker that dies after it served is restarted in its slot, with backoff, logged and
  counted (`gateway_worker_restarts_total`). It compiles the snapshot in force, so a
  key file that went bad since (its reload refused) does not stop it.
- reload (SIGHUP, or a change of the policy or a file it names): the new snapshot is
  validated here (a watched change that leaves every byte as it was is no reload);
  then every worker prepares it (compiles, loads keys) and only when all have, every
  worker commits; otherwise every worker keeps the running policy. A
  change a worker cannot apply in place (listen address, worker count) replaces the
  workers: new ones start on the new policy, and only when they serve do the old ones
  stop accepting and drain.
- SIGTERM/SIGINT: every worker drains (up to `server.shutdown_timeout`); exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.admin import admin_app
from gateway.demo import demo_app
from gateway.obs.cells import read_cells
from gateway.obs.exposition import fold, render
from gateway.obs.metrics import SupervisorMetrics
from gateway.obs.processlog import LogFormat
from gateway.policy import ConfigError, load_policy_text
from gateway.policy.compile import CompiledPolicy
from gateway.policy.model import Listen
from gateway.policy.snapshot import read_policy_text
from gateway.proxy.listener import bind, port_of
from gateway.runtime.control import Channel, ChannelClosedError
from gateway.runtime.watch import PolicyWatch, Stamp, stamps

log = logging.getLogger("gateway.runtime")

EXIT_OK = 0
EXIT_FAILED = 1

# A worker that lived this long before dying starts again at once; one that died sooner
# waits twice as long as the last time, up to BACKOFF_MAX.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0
STABLE_AFTER = 10.0
# How long a worker may take from exec to serving (imports, compile, bind).
START_TIMEOUT = 60.0
# How long a worker may take to answer a status request (a scrape, a readiness check).
STATUS_TIMEOUT = 2.0
# Past shutdown_timeout, how long a worker may take to exit before it is killed.
EXIT_MARGIN = 5.0
# How often the supervisor looks for revocation lists that appeared (the workers poll
# their contents every second; it only notes that one exists).
_LISTS_POLL = 1.0
# Output of a worker without a newline for this long is written anyway (bounded memory).
_MAX_PARTIAL_LINE = 1 << 20


@dataclass(frozen=True)
class Overrides:
    """What the command line set over the policy; it holds across reloads."""

    listen: Listen | None = None
    admin_listen: Listen | None = None
    workers: int | None = None

    def apply(self, policy: CompiledPolicy) -> CompiledPolicy:
        changes: dict[str, Any] = {}
        if self.listen is not None:
            changes["listen"] = self.listen
        if self.admin_listen is not None:
            changes["admin_listen"] = self.admin_listen
        if self.workers is not None:
            changes["workers"] = self.workers
        return dataclasses.replace(policy, **changes) if changes else policy


@dataclass(eq=False)
class WorkerProcess:
    """One worker as the supervisor sees it."""

    name: str  # its slot, as logs and the `worker` label show it
    proc: asyncio.subprocess.Process
    channel: Channel
    metrics_file: Path
    started: float = field(default_factory=time.monotonic)
    serving: bool = False
    stopping: bool = False  # asked to drain: its exit is expected
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def terminate(self) -> None:
        self.stopping = True
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)


# Workers asked to prepare a policy: their pending answers.
Asked = dict[asyncio.Task[dict[str, Any]], WorkerProcess]


class Supervisor:
    def __init__(
        self,
        policy: CompiledPolicy,
        overrides: Overrides = Overrides(),
        demo_upstream: Listen | None = None,
        access: Callable[[str], None] = lambda _: None,
        log_level: str = "info",
        log_format: LogFormat = "text",
    ) -> None:
        self.policy = overrides.apply(policy)
        self._overrides = overrides
        self._demo = demo_upstream
        self._access = access
        self._log_level = log_level
        self._log_format = log_format
        self.workers: list[WorkerProcess] = []  # the current generation, by slot
        self._draining: set[WorkerProcess] = set()  # an older generation, finishing
        self._running: set[WorkerProcess] = set()  # every worker process not yet reaped
        self._socket: socket.socket | None = None
        self._admin: web.AppRunner | None = None
        self._demo_runner: web.AppRunner | None = None
        # Workers' metric cells: in memory (tmpfs) where there is one, private to us.
        # mkdtemp makes a fresh directory of mode 0700 with an unguessable name.
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # noqa: S108
        _sweep_metrics_dirs(Path(shm or tempfile.gettempdir()))
        self._metrics_dir = Path(tempfile.mkdtemp(prefix=f"{_METRICS_DIR}{os.getpid()}-", dir=shm))
        self.metrics = SupervisorMetrics()
        # The counts of workers that are gone: a restart never makes a counter go back.
        self._retired: dict[str, float] = {}
        self.restarts = 0
        self._serial = 0  # names metrics files: one per worker process ever started
        self._generation = 0
        self._lock = asyncio.Lock()  # one reload or restart at a time
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._read: tuple[Stamp, ...] = ()  # the policy's inputs as the last reload found them
        # Providers whose revocation list has existed while running (never forgotten).
        self._lists_seen: set[str] = {name for name, seen in self.policy.snapshot.revocations.items() if seen}
        self._fatal: str | None = None
        self._backoff: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watching: asyncio.Task[Any] | None = None
        self.public_port = 0
        self.admin_port = 0

    # -- the whole life ----------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        try:
            # A failed start sets _fatal: said below, once every worker is gone.
            if await self._start():
                self._announce()
                await self._until_stopped()
        finally:
            await self._shutdown()
        if self._fatal is not None:
            print(f"gateway: {self._fatal}", file=sys.stderr)
            return EXIT_FAILED
        log.info("stopped")
        return EXIT_OK

    async def _until_stopped(self) -> None:
        """Reload on SIGHUP or a watched change, until a signal or a fatal error."""
        watch = None
        self._read = await asyncio.to_thread(stamps, self.policy.inputs)
        self._spawn(self._watch_revocation_lists())
        if self.policy.watch:
            watch = PolicyWatch(self.policy.inputs, self._reload_changed)
            self._watching = self._spawn(watch.run())
        while not self._stop.is_set() and self._fatal is None:
            await _either(self._stop, self._reload)
            if self._reload.is_set() and not self._stop.is_set():
                self._reload.clear()
                # A SIGTERM does not wait for a reload (keys may take reload_timeout,
                # new workers their start): the reload is cancelled, and the workers it
                # started are stopped with the others.
                reloading = asyncio.ensure_future(self._reload_watched())
                stopping = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait({reloading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not reloading.done():
                    reloading.cancel()
                    await asyncio.gather(reloading, return_exceptions=True)
                    break
                paths, seen = reloading.result()
                if watch is not None:
                    watch.rebase(paths, seen)
        if self._fatal is None:
            log.info("signal received: draining in-flight requests (up to %gs)", self.policy.shutdown_timeout)

    async def _start(self) -> bool:
        policy = self.policy
        # Which listener failed, so the one line printed names it and its address.
        what = f"public listener {_address(policy.listen)}"
        try:
            self._socket = await asyncio.to_thread(bind, policy.listen)
            self.public_port = port_of(self._socket)
            what = f"admin listener {_address(policy.admin_listen)}"
            self._admin, self.admin_port = await _serve(admin_app(self), policy.admin_listen)
            if self._demo is not None:
                what = f"demo upstream {_address(self._demo)}"
                self._demo_runner, _ = await _serve(demo_app(), self._demo)
        except OSError as exc:
            self._fatal = f"cannot start the {what}: {_bind_error(exc)}"
            return False
        self._generation += 1
        started = await asyncio.gather(
            *(self._start_worker(str(slot), self._socket, policy) for slot in range(policy.workers))
        )
        failed = [problem for problem in started if isinstance(problem, str)]
        self.workers = [w for w in started if isinstance(w, WorkerProcess)]
        for w in self.workers:
            self._watch(w)
        if failed:
            self._fatal = failed[0]
            return False
        return True

    async def _shutdown(self) -> None:
        self._stop.set()  # no restart from now on
        if self._watching is not None:
            self._watching.cancel()  # and no reload
        # Every process started and not reaped: the current and the draining ones, and
        # any a reload was starting when the signal came.
        everyone = list(self._running)
        for w in everyone:
            w.terminate()
        if self._socket is not None:
            # Ours now, not after the drain: once each worker has closed its own (taking
            # what is queued first), the address refuses new connections at once. Kept
            # open, it would queue them where nobody accepts, and our exit would reset
            # them after the drain.
            self._socket.close()
            self._socket = None
        deadline = time.monotonic() + self.policy.shutdown_timeout + EXIT_MARGIN
        for w in everyone:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await w.proc.wait()
            except TimeoutError:
                log.error("worker %s (pid %d) outlived the drain; killing it", w.name, w.pid)
                w.proc.kill()
                await w.proc.wait()
            w.channel.close()
        # The rest end at the workers' end of file; the relays write the last access
        # lines of the drain on the way.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        for task in list(self._tasks):
            task.cancel()
        for runner in (self._admin, self._demo_runner):
            if runner is not None:
                await runner.cleanup()
        shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _announce(self) -> None:
        policy = self.policy
        scheme = "https" if policy.tls is not None else "http"
        public = f"{scheme}://{_url_host(policy.listen.host)}:{self.public_port}"
        admin = f"http://{_url_host(policy.admin_listen.host)}:{self.admin_port}"
        log.info(
            "gateway listening on %s (policy %s, %d routes, %d worker%s)",
            public,
            policy.source,
            len(policy.table.routes),
            len(self.workers),
            "" if len(self.workers) == 1 else "s",
        )
        log.info("admin listening on %s (/healthz, /readyz, /metrics)", admin)
        if self._demo is not None:
            log.info("demo upstream on http://%s", self._demo)

    # -- workers -----------------------------------------------------------------------

    def _wire(self, policy: CompiledPolicy) -> dict[str, Any]:
        """A start or prepare message's policy: its snapshot, and which providers have
        had a revocation list (validated then, or seen since): for those a worker does
        not start, nor a reload take, without one."""
        wire = policy.snapshot.to_wire()
        wire["revocations"] = {
            name: seen or name in self._lists_seen for name, seen in policy.snapshot.revocations.items()
        }
        return {"source": policy.source, "snapshot": wire}

    async def _watch_revocation_lists(self) -> None:
        """Which providers' revocation lists have existed (sticky), polled each second:
        a list created after the policy was validated (`gateway tokens revoke`) and lost
        since must stop a worker's restart, not leave it revoking nothing."""
        while True:
            for watcher in self.policy.revocations:
                if watcher.provider not in self._lists_seen and await asyncio.to_thread(watcher.path.exists):
                    self._lists_seen.add(watcher.provider)
            await asyncio.sleep(_LISTS_POLL)

    async def _start_worker(
        self, name: str, listen: socket.socket, policy: CompiledPolicy, accept: bool = True
    ) -> WorkerProcess | str:
        """A worker serving `policy`'s snapshot, or why it could not start. With `accept` False it
        takes no connection until `_accept`: a worker joining running ones (a restart,
        a replacement) loads its keys first, so that it never answers 503 for want of
        them, nor serves at all a policy that is then refused."""
        self._serial += 1
        metrics_file = self._metrics_dir / f"worker-{self._serial}.cells"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.runtime.worker",
                "--listen-fd",
                str(listen.fileno()),
                "--control-fd",
                str(theirs.fileno()),
                "--name",
                name,
                "--metrics-file",
                str(metrics_file),
                "--log-level",
                self._log_level,
                "--log-format",
                self._log_format,
                pass_fds=(listen.fileno(), theirs.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                start_new_session=False,
            )
        except OSError as exc:
            ours.close()
            return f"worker {name} cannot be started: {exc}"
        finally:
            theirs.close()
        assert proc.stdout is not None
        channel = await Channel.open(ours)
        worker = WorkerProcess(name, proc, channel, metrics_file)
        self._running.add(worker)
        self._spawn(self._relay(proc.stdout))
        self._spawn(channel.serve(lambda _: None))
        try:
            async with asyncio.timeout(START_TIMEOUT):
                message = {"op": "start", **self._wire(policy), "accept": accept}
                await channel.request(message, within=START_TIMEOUT)
        except (TimeoutError, ChannelClosedError) as exc:
            if isinstance(exc, ChannelClosedError):
                # It closed its end because it is exiting (its error printed): let it
                # finish, so the exit code reported is its own, not our kill's.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), EXIT_MARGIN)
            if proc.returncode is None:
                proc.kill()
            code = await proc.wait()
            channel.close()
            self._retire(worker)
            return f"worker {name} could not start (exit code {code}); its error is above"
        worker.serving = True
        log.info("worker %s serving (pid %d)", name, proc.pid)
        return worker

    def _watch(self, worker: WorkerProcess) -> None:
        self._spawn(self._reap(worker))

    async def _reap(self, worker: WorkerProcess) -> None:
        code = await worker.proc.wait()
        worker.channel.close()
        self._retire(worker)
        self._draining.discard(worker)
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        if worker.stopping or self._stop.is_set():
            log.info("worker %s (pid %d) stopped (%s)", worker.name, worker.pid, how)
            return
        try:
            slot = self.workers.index(worker)
        except ValueError:
            return  # replaced already (a reload)
        lived = time.monotonic() - worker.started
        last = self._backoff.get(worker.name)
        delay = BACKOFF_FIRST if last is None or lived >= STABLE_AFTER else min(last * 2, BACKOFF_MAX)
        self._backoff[worker.name] = delay
        self.restarts += 1
        self.metrics.worker_restarts.inc()
        log.error("worker %s (pid %d) died (%s); restarting it in %gs", worker.name, worker.pid, how, delay)
        await asyncio.sleep(delay)
        async with self._lock:
            if self._stop.is_set() or slot >= len(self.workers) or self.workers[slot] is not worker:
                return
            assert self._socket is not None
            started = await self._start_worker(worker.name, self._socket, self.policy, False)
            if isinstance(started, str):
                self._fatal = started
                self._stop.set()
                return
            waiting = await self._until_ready([started], self.policy.reload_timeout)
            if waiting:  # it serves anyway, as a first start does: readiness says what is missing
                log.warning("worker %s accepts without all its keys: %s", worker.name, "; ".join(waiting))
            await self._accept([started])
            self.workers[slot] = started
            self._watch(started)

    def _retire(self, worker: WorkerProcess) -> None:
        """Its counts stay in the totals (a counter never goes backwards); its file goes.
        Called as it exits, in the same step that marks it exited: a scrape reads
        either its file or the totals it was folded into, never both, never neither."""
        worker.exited.set()
        self._running.discard(worker)
        fold(self._retired, _cells(worker))
        worker.metrics_file.unlink(missing_ok=True)

    async def _relay(self, stream: asyncio.StreamReader) -> None:
        """A worker's stdout (its access log) to ours, whole lines at a time."""
        partial = b""
        while True:
            chunk = await stream.read(1 << 16)
            if not chunk:
                break
            data = partial + chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                partial = data
                if len(partial) > _MAX_PARTIAL_LINE:
                    self._access(partial.decode("ascii", "replace"))
                    partial = b""
                continue
            self._access(data[:cut].decode("ascii", "replace"))
            partial = data[cut + 1 :]
        if partial:
            self._access(partial.decode("ascii", "replace"))

    async def _status(self, worker: WorkerProcess) -> list[str]:
        """What the worker still waits for (its metrics' gauges are current after it)."""
        try:
            answer = await worker.channel.request({"op": "status"}, within=STATUS_TIMEOUT)
        except (TimeoutError, ChannelClosedError):
            return [f"worker {worker.name} (no answer)"]
        return [f"worker {worker.name}: {what}" for what in answer.get("waiting", [])]

    # -- reload ------------------------------------------------------------------------

    async def _reload_watched(self) -> tuple[Sequence[str], tuple[Stamp, ...]]:
        """SIGHUP: reload whatever the files hold now."""
        return await self._reload_inputs(always=True)

    async def _reload_changed(self) -> tuple[Sequence[str], tuple[Stamp, ...]]:
        """The watch saw a change: reload, unless a reload since (a SIGHUP's) read the
        files as they are now. An operator who edits the file and sends SIGHUP gets one
        reload, not a second one when the watch's next poll finds the same change."""
        return await self._reload_inputs(always=False)

    async def _reload_inputs(self, always: bool) -> tuple[Sequence[str], tuple[Stamp, ...]]:
        """Reload; return the files to watch from now on and how they looked when read
        (stamped before reading, so a change made meanwhile triggers the next reload)."""
        async with self._lock:
            before = self.policy.inputs
            seen = await asyncio.to_thread(stamps, before)
            if always or seen != self._read:
                # A watched change is a reload only if a byte changed: `touch`, or a
                # ConfigMap update of some other key, would otherwise make every worker
                # refetch its remote keys. A SIGHUP always reloads (and refetches).
                await self._reload_counted(unless_same=not always)
                if self.policy.inputs != before:  # the new policy names other files
                    seen = await asyncio.to_thread(stamps, self.policy.inputs)
                self._read = seen
            return self.policy.inputs, self._read

    async def reload(self) -> bool:
        async with self._lock:
            return await self._reload_counted()

    async def _reload_counted(self, unless_same: bool = False) -> bool:
        ok = await self._reload_now(unless_same)
        if ok is None:
            return True
        self.metrics.config_reloads.labels("success" if ok else "failure").inc()
        return ok

    async def _reload_now(self, unless_same: bool) -> bool | None:
        """Whether the new policy is in force; None when it is the running one, byte
        for byte, and `unless_same`."""
        source = self.policy.source
        try:
            text = await asyncio.to_thread(read_policy_text, source)
            new = self._overrides.apply(await asyncio.to_thread(load_policy_text, text, source))
        except ConfigError as exc:
            log.error("reload refused; the running policy stays in force:\n%s", exc)
            return False
        except (OSError, UnicodeDecodeError) as exc:
            log.error("reload refused: cannot read %s (%s); the running policy stays in force", source, exc)
            return False
        except Exception as exc:  # a reload must never take the running gateway down
            log.error("reload refused (%s); the running policy stays in force", type(exc).__name__)
            return False
        if unless_same and new.snapshot.same(self.policy.snapshot):
            log.info("policy files rewritten with the same contents: nothing to reload")
            return None
        admin: tuple[web.AppRunner, int] | None = None
        if new.admin_listen != self.policy.admin_listen:
            try:
                admin = await _serve(admin_app(self), new.admin_listen)
            except OSError as exc:
                log.error("reload refused: cannot listen on %s (%s)", new.admin_listen, exc)
                return False
        if (new.listen, new.workers) != (self.policy.listen, self.policy.workers):
            ok = await self._replace(new)
        else:
            ok = await self._in_place(new)
        if admin is not None:
            old, self._admin = self._admin, admin[0]
            if ok:
                self.admin_port = admin[1]
                if old is not None:
                    await old.cleanup()
            else:
                self._admin = old
                await admin[0].cleanup()
        if ok:
            log.info("policy reloaded from %s (%d routes, %d workers)", source, len(new.table.routes), new.workers)
        return ok

    async def _in_place(self, new: CompiledPolicy) -> bool:
        self._generation += 1
        gen = self._generation
        timeout = new.reload_timeout + STATUS_TIMEOUT + 5.0
        message = {"op": "prepare", "gen": gen, **self._wire(new)}
        # A worker that died and waits for its restart is not asked: its restart (under
        # this lock) takes the text in force when it comes, this one if it is committed.
        alive = [w for w in self.workers if not w.exited.is_set()]
        pending: Asked = {asyncio.ensure_future(w.channel.request(message, within=timeout)): w for w in alive}
        problems: list[str] = []
        try:
            await _prepared(gen, pending, problems)
        finally:
            for task in pending:
                task.cancel()  # a cancelled reload (SIGTERM) leaves no request behind
        op = "abort" if problems else "commit"
        await asyncio.gather(
            *(w.channel.request({"op": op, "gen": gen}, within=timeout) for w in alive), return_exceptions=True
        )
        if problems:
            log.error("reload refused; the running policy stays in force: %s", "; ".join(problems))
            return False
        self.policy = new
        return True

    async def _replace(self, new: CompiledPolicy) -> bool:
        """New workers on the new policy (and socket); once they serve with keys, the old
        ones stop accepting and drain."""
        assert self._socket is not None
        listen = self._socket
        if new.listen != self.policy.listen:
            try:
                listen = await asyncio.to_thread(bind, new.listen)
            except OSError as exc:
                log.error("reload refused: cannot listen on %s (%s)", new.listen, exc)
                return False
        self._generation += 1
        started = await asyncio.gather(
            *(self._start_worker(str(slot), listen, new, False) for slot in range(new.workers))
        )
        fresh = [w for w in started if isinstance(w, WorkerProcess)]
        problems = [s for s in started if isinstance(s, str)]
        if not problems:
            problems = await self._until_ready(fresh, new.reload_timeout)
        if problems:
            log.error("reload refused; the running policy stays in force: %s", "; ".join(problems))
            for w in fresh:
                w.terminate()
            for w in fresh:
                await w.proc.wait()
                w.channel.close()
                self._retire(w)
            if listen is not self._socket:
                listen.close()
            return False
        await self._accept(fresh)  # every new worker has its keys: now they take traffic
        old, old_socket = self.workers, self._socket
        self.workers, self._socket, self.policy = fresh, listen, new
        self.public_port = port_of(listen)
        for w in fresh:
            self._watch(w)
        for w in old:
            self._draining.add(w)
            w.terminate()
        if old_socket is not listen:
            # Close our copy now: the old workers close theirs as they stop accepting,
            # and then the old address refuses connections at once instead of queueing
            # them where nobody accepts.
            old_socket.close()
        return True

    async def _accept(self, workers: Sequence[WorkerProcess]) -> None:
        await asyncio.gather(
            *(w.channel.request({"op": "accept"}, within=STATUS_TIMEOUT) for w in workers), return_exceptions=True
        )

    async def _until_ready(self, workers: Sequence[WorkerProcess], within: float) -> list[str]:
        deadline = time.monotonic() + within
        while True:
            waiting = [what for w in workers for what in await self._status(w)]
            if not waiting:
                return []
            if time.monotonic() > deadline:
                return waiting
            await asyncio.sleep(0.05)

    # -- what the admin listener reports -----------------------------------------------

    async def health(self) -> dict[str, Any]:
        return {
            "workers": self._serving(),
            "workers_configured": self.policy.workers,
            "restarts": self.restarts,
            "pids": [w.pid for w in self.workers],
        }

    async def waiting(self) -> list[str]:
        if self._stop.is_set():
            return ["stopping"]
        missing = self.policy.workers - self._serving()
        waiting = [f"{missing} of {self.policy.workers} workers"] if missing else []
        for answer in await asyncio.gather(*(self._status(w) for w in self.workers)):
            waiting += answer
        return waiting

    async def exposition(self) -> bytes:
        # The status round trip makes each worker write its gauges to its cells.
        await asyncio.gather(*(self._status(w) for w in [*self.workers, *self._draining]))
        # From here on no await: the set of workers and of retired counts is one state.
        self.metrics.workers.set(self._serving())
        live: list[tuple[str | None, dict[str, float]]] = [(None, self.metrics.cells())]
        live += [(w.name, _cells(w)) for w in self.workers if not w.exited.is_set()]
        # Workers draining after a replacement share slot names with the new ones:
        # their counters count, their gauges (a generation that is leaving) do not.
        retired = dict(self._retired)
        for w in self._draining:
            if not w.exited.is_set():
                fold(retired, _cells(w))
        return render(live, retired)

    def _serving(self) -> int:
        return sum(1 for w in self.workers if w.serving and not w.exited.is_set())


_METRICS_DIR = "gateway-metrics-"


async def _prepared(gen: int, pending: Asked, problems: list[str]) -> None:
    """Wait for every worker's answer to `prepare` (taking each out of `pending`),
    noting in `problems` what is wrong; on the first problem, the others abort."""
    while pending:
        done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            w = pending.pop(task)
            problem = _prepare_problem(task)
            if problem is not None:
                problems.append(f"worker {w.name}: {problem}")
        if problems:
            # One worker cannot take it: the others stop preparing now (and their new
            # key sources stop fetching), not at their own reload_timeout. Their answers
            # ("aborted") say nothing more.
            for w in pending.values():
                with contextlib.suppress(ChannelClosedError):
                    w.channel.send({"op": "abort", "gen": gen})
            await asyncio.gather(*pending, return_exceptions=True)
            pending.clear()


def _prepare_problem(task: asyncio.Future[dict[str, Any]]) -> str | None:
    """Why a worker's answer to `prepare` is not a yes (None if it is)."""
    exc = task.exception()
    if exc is not None:
        return "no answer" if isinstance(exc, TimeoutError) else "gone"
    answer = task.result()
    return None if answer.get("ok") else str(answer.get("error"))


def _sweep_metrics_dirs(parent: Path) -> None:
    """Remove what a supervisor killed with SIGKILL left: its directory of cell files
    (memory, on tmpfs), named after its pid. Only our own, and only of dead processes."""
    uid = os.getuid()
    for entry in parent.glob(f"{_METRICS_DIR}*-*"):
        pid = entry.name[len(_METRICS_DIR) :].split("-", 1)[0]
        try:
            if not pid.isdigit() or entry.lstat().st_uid != uid or not entry.is_dir() or entry.is_symlink():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue  # alive (another user's, or ours): not ours to remove


def _cells(worker: WorkerProcess) -> dict[str, float]:
    try:
        return read_cells(worker.metrics_file)
    except OSError:  # it died before it made its file: it counted nothing
        return {}


async def _either(a: asyncio.Event, b: asyncio.Event) -> None:
    waits = {asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())}
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()


async def _serve(app: web.Application, where: Listen) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, where.host, where.port, reuse_address=True)
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    # The bound port (differs from the configured one when that is 0, as in tests).
    return runner, int(runner.addresses[-1][1])


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _address(listen: Listen) -> str:
    return f"[{listen.host}]:{listen.port}" if ":" in listen.host else f"{listen.host}:{listen.port}"


def _bind_error(exc: OSError) -> str:
    """The cause, without the Errno prefix and the address asyncio repeats in its text."""
    if exc.errno == errno.EADDRINUSE:
        return "the address is already in use (another process listens there; `ss -ltnp` shows which)"
    if exc.errno == errno.EACCES:
        return "permission denied (a port below 1024 needs privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no interface of this host has that address"
    return exc.strerror or str(exc)
