"""A fork server for fast restarts: children forked from a process that imported them already.

A service's restart is mostly the new interpreter importing numpy, OpenCV, PyAV, aiortc
and our own modules (0.3-1 s each, several seconds on a loaded 2-core board). The
zygote is started once by the supervisor (``python -m agent.apps.zygote``, exec'd: it shares
nothing with the supervisor's threads), imports every service module, and then forks a
child per request; the child runs ``navtalk-agent ARGV`` (:func:`agent.apps.cli.main`) with its
own environment, as multiprocessing's ``forkserver`` does::

    supervisor ──request (argv, env[, secret fd])──▶ zygote ──fork──▶ child: cli.main(argv)
               ◀──spawned pid / exited pid+code─────

- Fork safety: the zygote is single-threaded when it forks (checked before every fork:
  OpenBLAS's pool is kept at one thread, ``OPENBLAS_NUM_THREADS=1``) and has no event
  loop, no ZeroMQ context, no PortAudio (``sounddevice`` is not pre-imported: PortAudio
  scans the devices when imported, and must see the devices of now).
- Secrets: the zygote's own environment has no license, and it never reads one. The
  session's license travels in a pipe whose read end is passed with the request
  (``SCM_RIGHTS``); only the child reads it. A later child cannot find the license in
  memory inherited from the zygote.
- Lifelines: the zygote dies with the supervisor and each child with the zygote
  (:mod:`agent.lifeline`, armed by each process itself). The zygote reaps its children
  and reports each exit code (negative: the signal) to the supervisor.

:class:`Zygote` is the supervisor's (asyncio) side; :class:`ForkedProcess` has the
part of :class:`asyncio.subprocess.Process` the supervisor uses.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import importlib
import json
import logging
import os
import random
import selectors
import signal
import socket
import sys
import time
import traceback
from typing import Any

from agent.errors import SupervisorError
from agent.lifeline import PARENT_ENV, die_with_parent

__all__ = ["PRELOAD", "ForkedProcess", "Zygote"]

log = logging.getLogger(__name__)

# Imported once by the zygote. Not sounddevice (see the module doc).
PRELOAD = (
    "agent.apps.cli",
    "agent.runtime",
    "agent.apps.preflight",
    "services.tools",
    "services.speaker",
    "services.mic",
    "services.session",
    "services.display",
    "services.camera",
    "agent.emulator.server",
    "cv2",
    "av",
    "aiortc",
)
MAX_MESSAGE = 1 << 20
_PR_SET_NAME = 15
_IMPORT_ENV: dict[str, str] = {}  # set by the preloaded modules' imports
THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1"}  # keep BLAS single-threaded: forked while alone


# --- the zygote process ------------------------------------------------------------------------


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.send(json.dumps(msg).encode())


def _run_child(
    sock: socket.socket, wakeup: tuple[int, int], req: dict[str, Any], fds: list[int]
) -> None:
    """In the forked child: become ``navtalk-agent ARGV``. Never returns."""
    code = 1
    try:
        sock.close()
        signal.set_wakeup_fd(-1)
        for fd in wakeup:
            os.close(fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        zygote_pid = os.getppid()
        os.environ.clear()
        os.environ.update(req["env"])
        os.environ.update(_IMPORT_ENV)  # what preloaded modules set (cv2: Qt's plugin path)
        os.environ[PARENT_ENV] = str(zygote_pid)
        secret_env = req.get("secret_env")
        for fd in fds:
            with os.fdopen(fd, "rb") as f:
                value = f.read(65536).decode()
            if secret_env:
                os.environ[secret_env] = value
        random.seed()  # not the zygote's (shared by every child) random state
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        argv = [str(a) for a in req["argv"]]
        _set_name(f"nt-{argv[1] if argv[:1] == ['service'] and len(argv) > 1 else argv[0]}")
        sys.argv = ["navtalk-agent", *argv]
        from agent.apps.cli import main

        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


def _set_name(name: str) -> None:
    """The name `ps`/`top` show (/proc/PID/comm; the command line stays the zygote's)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def serve(fd: int) -> int:
    """The zygote's main loop on the SOCK_SEQPACKET socket ``fd``; returns at EOF."""
    die_with_parent()
    sock = socket.socket(fileno=fd)
    t0 = time.monotonic()
    preloaded = []
    before = dict(os.environ)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
            preloaded.append(name)
        except Exception as exc:  # the child will import it again and report
            print(f"zygote: cannot preload {name}: {exc}", file=sys.stderr, flush=True)
    # A module may set variables when imported (cv2 sets Qt's plugin path): a child that
    # gets its own environment must keep them, as if it had imported the module itself.
    _IMPORT_ENV.update({k: v for k, v in os.environ.items() if before.get(k) != v})
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    _send(sock, {"ready": os.getpid(), "preloaded": len(preloaded),
                 "seconds": round(time.monotonic() - t0, 3), "threads": _threads()})  # fmt: skip
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "sock")
    sel.register(wake_r, selectors.EVENT_READ, "child")
    while True:
        for key, _ in sel.select():
            if key.data == "child":
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                _reap(sock)
                continue
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 4)
            except ConnectionError:
                data = b""
            if not data:  # the supervisor closed its end (or died): the zygote's work is done
                return 0
            req = json.loads(data)
            if _threads() != 1:
                _send(sock, {"spawned": req["id"], "error": f"zygote has {_threads()} threads"})
            else:
                pid = os.fork()
                if pid == 0:
                    _run_child(sock, (wake_r, wake_w), req, fds)
                _send(sock, {"spawned": req["id"], "pid": pid})
            for f in fds:
                os.close(f)
        _reap(sock)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        with contextlib.suppress(OSError):
            _send(sock, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})


# --- the supervisor's side ---------------------------------------------------------------------


class ForkedProcess:
    """A child forked by the zygote: the ``pid``/``returncode``/``wait``/``send_signal``/
    ``kill`` of :class:`asyncio.subprocess.Process`."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self._done = asyncio.Event()

    async def wait(self) -> int:
        await self._done.wait()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _exited(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._done.set()


class Zygote:
    """Starts the zygote process and asks it for children. Restarts it if it dies."""

    def __init__(
        self,
        python: str,
        env: dict[str, str],
        *,
        tag: list[str] | None = None,
        start_timeout_s: float = 60.0,
    ):
        self._python = python
        self._tag = tag or []  # extra argv, ignored: what `ps` shows (config path) for the children
        self._env = {**env, **{k: v for k, v in THREAD_ENV.items() if k not in env}}
        self._env[PARENT_ENV] = str(os.getpid())
        self._timeout = start_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._children: dict[int, ForkedProcess] = {}
        self._early_exits: dict[int, int] = {}  # exit reported before the spawn reply was read
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = 0
        self._lock = asyncio.Lock()
        self._closing = False
        self.pid = 0
        self.started = 0  # how many zygotes were started (1 unless one died)

    @property
    def env(self) -> dict[str, str]:
        """The environment the zygote runs with (children get their own)."""
        return dict(self._env)

    async def start(self) -> None:
        async with self._lock:
            if self._reader is None or self._reader.done():
                await self._start()

    async def _start(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self._python, "-m", "agent.apps.zygote", str(theirs.fileno()), *self._tag,
                env=self._env, pass_fds=(theirs.fileno(),),
            )  # fmt: skip
        except OSError as exc:
            mine.close()
            raise SupervisorError(f"cannot start the zygote: {exc}") from exc
        finally:
            theirs.close()
        mine.setblocking(False)
        self._sock = mine
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                hello = json.loads(await loop.sock_recv(mine, MAX_MESSAGE) or b"{}")
        except (TimeoutError, ValueError, OSError) as exc:
            await self._discard()
            raise SupervisorError(f"the zygote did not start: {exc!r}") from exc
        if "ready" not in hello:
            await self._discard()
            raise SupervisorError("the zygote did not start (it exited)")
        self.pid = int(hello["ready"])
        self.started += 1
        log.info(
            "= zygote pid %d: %d modules preloaded in %.2f s, %d thread(s)",
            self.pid, hello["preloaded"], hello["seconds"], hello["threads"],
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read(mine), name="zygote-reader")

    async def spawn(
        self, argv: list[str], env: dict[str, str], secret: tuple[str, str] | None = None
    ) -> ForkedProcess:
        """Fork ``navtalk-agent ARGV`` with ``env``; ``secret`` = (variable, value) reaches
        the child through a pipe, never the zygote's memory."""
        await self.start()
        assert self._sock is not None
        self._ids += 1
        req_id = self._ids  # not self._ids later: other spawns run meanwhile
        req: dict[str, Any] = {"id": req_id, "argv": argv,
                               "env": {**env, **THREAD_ENV}}  # fmt: skip
        fds: list[int] = []
        if secret is not None:
            req["secret_env"] = secret[0]
            r, w = os.pipe()
            os.write(w, secret[1].encode())
            os.close(w)
            fds.append(r)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[req_id] = reply
        try:
            self._sock.sendmsg(
                [json.dumps(req).encode()],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else [],
            )
            async with asyncio.timeout(self._timeout):
                got = await reply
        except (OSError, TimeoutError) as exc:
            raise SupervisorError(f"the zygote did not fork {argv[:2]}: {exc!r}") from exc
        finally:
            self._waiting.pop(req_id, None)
            for fd in fds:
                os.close(fd)
        if "pid" not in got:
            raise SupervisorError(f"the zygote did not fork {argv[:2]}: {got.get('error')}")
        proc = ForkedProcess(int(got["pid"]))
        self._children[proc.pid] = proc
        if proc.pid in self._early_exits:
            self._exited(proc.pid, self._early_exits.pop(proc.pid))
        return proc

    async def _read(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.sock_recv(sock, MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                break
            msg = json.loads(data)
            if "spawned" in msg:
                fut = self._waiting.get(int(msg["spawned"]))
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            elif "exited" in msg:
                pid, code = int(msg["exited"]), int(msg["code"])
                if pid in self._children:
                    self._exited(pid, code)
                else:
                    self._early_exits[pid] = code
        # The zygote is gone: its children die with it (PDEATHSIG). Each is reported
        # exited once it really is (a pidfd turns readable), as killed.
        if not self._closing:
            log.error("the zygote (pid %d) is gone; its children die with it", self.pid)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_result({"error": "the zygote died"})
        for pid in list(self._children):
            self._watch_orphan(pid)
        sock.close()

    def _exited(self, pid: int, code: int) -> None:
        proc = self._children.pop(pid, None)
        if proc is not None:
            proc._exited(code)

    def _watch_orphan(self, pid: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # already gone
            self._exited(pid, -signal.SIGKILL)
            return

        def gone() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            self._exited(pid, -signal.SIGKILL)

        loop.add_reader(fd, gone)

    async def _discard(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()

    async def close(self) -> None:
        """Stop the zygote (after its children: they die with it)."""
        self._closing = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(5):
                    await self._reader
            self._reader.cancel()
        if self._proc is not None and self._proc.returncode is None:
            try:
                async with asyncio.timeout(5):
                    await self._proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                await self._proc.wait()
        if self._sock is not None:
            self._sock.close()
            self._sock = None


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1])))
