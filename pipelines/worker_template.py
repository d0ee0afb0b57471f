"""Local worker processes forked from the command, which has already imported Beam.

A local run on both cores (``--direct_running_mode=multi_processing``) starts each worker
as a new interpreter that imports Beam and our modules, ~1 s of CPU per worker, after
the command has done the same and built the job. At 500k events, alternating with
started workers: 17.2-17.8 s of CPU instead of 18.1-21.3 s, 10.1-10.5 s instead of
10.4-12.1 s.

The command instead forks, before it does anything else (its imports done, one Python
thread), a *template* process: a copy of it that waits. Each worker is forked from the
template, ready within milliseconds, and runs Beam's own SDK harness
(``local_worker.exit_after_harness``) with the environment Beam gives a worker: the same
code as a started worker, without its import, and sharing the command's pages until
written.

The command keeps the template's end of a socket pair. A request carries the worker's
environment and one end of a fresh socket pair, on which the template answers the
worker's pid, then its exit code once it has reaped it (so the worker's CPU time is
counted in the command's, as a started worker's is). When the command closes its end
(or dies), the template kills the workers still running, reaps them and exits.
"""
from __future__ import annotations

import gc
import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import traceback
from typing import Any

# Imported by the template before it forks a worker: what every worker needs that the
# command has not imported (module names, as the workers unpickle them)
PRELOAD = ("apache_beam.runners.worker.sdk_worker_main", "pipelines.currents_to_partners",
           "pipelines.local_worker")

# Threads other than the forking one that a fork may leave behind: jemalloc's purging
# thread (pyarrow's allocator, imported with Beam); jemalloc holds its own locks across
# fork() (pthread_atfork), so a child's allocator is consistent. Any other thread (a
# Python thread, numpy's BLAS pool, gRPC's) might hold a lock the child would wait on.
_FORK_SAFE_THREADS = frozenset({"jemalloc_bg_thd"})

_INT = struct.Struct("i")
_MAX_MESSAGE = 1 << 20


class WorkerTemplate:
    """The command's handle on its template process (see the module's docstring)."""

    def __init__(self, pid: int, sock: socket.socket):
        self.pid = pid
        self._sock = sock
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def start(cls) -> "WorkerTemplate | None":
        """Fork the template, or None where it cannot be safely: not Linux, or this
        process runs threads a fork could leave holding a lock (see ``fork_safe``)."""
        if sys.platform != "linux" or not fork_safe():
            return None
        sys.stdout.flush()
        sys.stderr.flush()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # the template
            code = 1
            try:
                ours.close()
                _serve(theirs)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        return cls(pid, ours)

    def fork_worker(self, env: dict[str, str]) -> "ForkedWorker":
        """A worker forked from the template with ``env`` as its environment."""
        status, given = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                if self._closed:
                    raise RuntimeError("the worker template is closed")
                socket.send_fds(self._sock, [pickle.dumps(env)], [given.fileno()])
        finally:
            given.close()
        pid = _read_int(status)
        if pid is None:
            status.close()
            raise RuntimeError("the worker template forked no worker (it has exited, or "
                               "it cannot fork safely)")
        return ForkedWorker(pid, status)

    def close(self) -> None:
        """End the template (it kills any worker still running) and reap it."""
        self._end(kill=False)

    def kill(self) -> None:
        """End the template at once (a run that does not use it)."""
        self._end(kill=True)

    def _end(self, kill: bool) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._sock.close()
        try:
            if kill:
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):  # gone, and reaped already
            pass


class ForkedWorker:
    """A worker forked by the template: ``wait``, ``poll`` and ``kill`` like a Popen."""

    def __init__(self, pid: int, status: socket.socket):
        self.pid = pid
        self.returncode: int | None = None
        self._status = status

    def wait(self) -> int:
        if self.returncode is None:
            code = _read_int(self._status)
            # no code: the template died before reaping the worker
            self.returncode = -signal.SIGKILL if code is None else code
            self._status.close()
        return self.returncode

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._status], [], [], 0)[0]:
            return self.wait()
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:  # not reaped yet, so the pid is still this worker's
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def fork_safe() -> bool:
    """True when the calling thread is this process's only thread, but for threads known
    to survive a fork (``_FORK_SAFE_THREADS``)."""
    if threading.active_count() != 1:
        return False
    me = str(threading.get_native_id())
    for tid in os.listdir("/proc/self/task"):
        if tid != me:
            try:
                with open(f"/proc/self/task/{tid}/comm") as fo:
                    name = fo.read().strip()
            except OSError:  # it has just ended
                continue
            if name not in _FORK_SAFE_THREADS:
                return False
    return True


def _read_int(sock: socket.socket) -> int | None:
    data = b""
    while len(data) < _INT.size:
        chunk = sock.recv(_INT.size - len(data))
        if not chunk:
            return None
        data += chunk
    return _INT.unpack(data)[0]


def _serve(sock: socket.socket) -> None:
    """The template: import what workers need, then fork one for each request."""
    # Ctrl-C reaches every process of the terminal's group: the command handles it and
    # closes the template, which then stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.disable()  # as in the command: imports make long-lived objects, little garbage
    import importlib
    for module in PRELOAD:
        importlib.import_module(module)
    gc.freeze()
    gc.enable()
    safe = fork_safe()  # else each request is refused: the worker is started instead
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    running: dict[int, socket.socket] = {}  # pid -> where its exit code goes
    try:
        while True:
            ready = select.select([sock, wake_r], [], [])[0]
            if wake_r in ready:
                os.read(wake_r, 4096)
                _reap(running, block=False)
            if sock in ready:
                message, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 1)
                if not message:  # the command closed its end: its run is over
                    break
                status = socket.socket(fileno=fds[0])
                if not safe:
                    status.close()
                    continue
                pid = os.fork()
                if pid == 0:  # the worker: never leaves this block
                    try:
                        signal.set_wakeup_fd(-1)
                        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                        signal.signal(signal.SIGINT, signal.default_int_handler)
                        for fd in (wake_r, wake_w):
                            os.close(fd)
                        for other in (sock, status, *running.values()):
                            other.close()
                        _run_worker(pickle.loads(message))  # exits with Beam's code
                    except BaseException:
                        traceback.print_exc()
                    finally:
                        os._exit(1)
                status.sendall(_INT.pack(pid))
                running[pid] = status
    finally:
        for pid in running:  # still running after the run ended: nothing left to do
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap(running, block=True)


def _reap(running: dict[int, socket.socket], block: bool) -> None:
    """Collect exited workers and send each its exit code."""
    while running:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = running.pop(pid, None)
        if conn is not None:
            try:
                conn.sendall(_INT.pack(os.waitstatus_to_exitcode(status)))
            except OSError:
                pass
            conn.close()


def _run_worker(env: dict[str, str]) -> None:
    """In the forked worker: Beam's environment for it, then Beam's harness; never returns."""
    os.environ.clear()
    os.environ.update(env)
    arenas = env.get("MALLOC_ARENA_MAX")
    if arenas and arenas.isdigit():  # read by glibc at start-up only: set it as it would
        _set_malloc_arenas(int(arenas))
    from pipelines.local_worker import exit_after_harness
    exit_after_harness()


def _set_malloc_arenas(n: int) -> None:
    import ctypes
    try:
        ctypes.CDLL(None).mallopt(-8, n)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        pass

