"""Encoder workers: processes (or threads) that run a sink's `SinkWorker` on batches of uint8 pixels.

Processes: the pixels of each batch are copied once into a slot of a shared-memory ring
(`multiprocessing.shared_memory`, one block of n_slots batches) and a worker gets only (slot, task) through a
queue: no pickling of pixels, no per-image hand-off. Workers are spawned (not forked: the main process has
inference runtimes and their threads loaded), ignore SIGINT/SIGTERM (the main process stops them, after
their batch, so every file they finish is journaled) and die with the main process (PR_SET_PDEATHSIG on
Linux, else they notice their parent is gone). Threads: the same loop with the pixels passed directly;
better where start-up (about 0.3 s per process) or too few cores would eat the gain.

Results come back to one collector thread in the main process, which hands them to `deliver` (the
session: commit, journal, progress) and frees the slot. The caller bounds what is in flight.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
import types
from typing import Callable, Iterator

import numpy as np

from gan_deploy.core.errors import GanDeployError
from gan_deploy.generate.sinks.base import Encoded, Result, SinkWorker, Task

KINDS = ("auto", "process", "thread")
Deliver = Callable[[Task, Result], None]


def handle_task(worker: SinkWorker, task: Task, pixels: np.ndarray | Encoded) -> Result:
    try:
        return worker.handle(task, pixels)
    except GanDeployError as e:
        return Result(task.seq, task.lo, error=e.one_line(), error_kind="io")
    except OSError as e:
        return Result(task.seq, task.lo, error=f"{e.filename or ''} ({e.strerror or e})", error_kind="io")
    except Exception as e:  # a bug: the main process shows the worker's traceback
        return Result(task.seq, task.lo, error=f"{type(e).__name__}: {e}\n{traceback.format_exc()}", error_kind="bug")


WORKER_NICE = int(os.environ.get("GAN_DEPLOY_WRITER_NICE", "10"))


def lower_priority() -> None:
    """Give the calling encoder thread (or process) a lower CPU priority than the main process's inference.

    Where cores are short (2 cores: the backend's threads want both), an encoder that takes a core in the middle of
    an operator stalls all of the backend's threads at the operator's end; at a lower priority it runs in the gaps
    the backend leaves and, once the ring of batches is full, while the main process waits for room. With cores
    to spare it changes nothing. Linux: per thread (setpriority on the thread id); elsewhere: not done."""
    if WORKER_NICE <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
    except OSError:
        pass


def _open(worker: SinkWorker) -> str | None:
    try:
        worker.open()
        return None
    except GanDeployError as e:
        return e.one_line()
    except OSError as e:
        return f"{e.filename or ''} ({e.strerror or e})"


class _Pool:
    kind = ""

    def __init__(self, deliver: Deliver, n_workers: int):
        self.deliver, self.n_workers = deliver, n_workers
        self.outstanding = 0
        self.cond = threading.Condition()
        self.failure: str | None = None  # the pool itself broke (a worker process died)
        self.closed = False

    def _delivered(self, task: Task, result: Result) -> None:
        try:
            self.deliver(task, result)
        finally:
            with self.cond:
                self.outstanding -= 1
                self.cond.notify_all()

    def _wait_outstanding(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while self.outstanding > 0 and self.failure is None:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.cond.wait(0.1 if left is None else min(0.1, left))
        return True


class ThreadPool(_Pool):
    kind = "thread"

    def __init__(self, worker: SinkWorker, n_workers: int, deliver: Deliver):
        super().__init__(deliver, n_workers)
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.cancel = threading.Event()
        blob = pickle.dumps(worker)  # each thread its own worker (and proof that it pickles, as processes need)
        self.threads = [threading.Thread(target=self._work, args=(pickle.loads(blob),), name=f"gan-deploy-writer-{k}", daemon=True)
                        for k in range(n_workers)]
        self.collector = threading.Thread(target=self._collect, name="gan-deploy-collector", daemon=True)
        with _signals_held():  # a Ctrl-C inside Thread.start() would leave a thread started and not known started
            for t in self.threads:
                t.start()
            self.collector.start()

    def submit(self, task: Task, pixels: np.ndarray | Encoded) -> None:
        with self.cond:
            self.outstanding += 1
        try:
            self.tasks.put((task, pixels))
        except BaseException:  # Ctrl-C right here: the task was not handed out
            with self.cond:
                self.outstanding -= 1
            raise

    def _work(self, worker: SinkWorker) -> None:
        lower_priority()
        err = _open(worker)
        while True:
            item = self.tasks.get()
            if item is None:
                break
            task, pixels = item
            if err is not None:
                self.results.put((task, Result(task.seq, task.lo, error=err)))
            elif self.cancel.is_set():
                self.results.put((task, Result(task.seq, task.lo, skipped=True)))
            else:
                self.results.put((task, handle_task(worker, task, pixels)))
        worker.close()

    def _collect(self) -> None:
        while True:
            item = self.results.get()
            if item is None:
                return
            self._delivered(*item)

    def close(self, cancel: bool) -> None:
        if self.closed:
            return
        self.closed = True
        if cancel:
            self.cancel.set()
        for _ in self.threads:
            self.tasks.put(None)
        for t in self.threads:
            t.join()
        self.results.put(None)
        self.collector.join()


def _die_with_parent(ppid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: killed when the main process dies, kill -9 too
        except (OSError, AttributeError):
            pass
    if os.getppid() != ppid:  # it died before prctl
        os._exit(1)


def _process_main(worker: SinkWorker, shm_name: str, slot_shape: tuple[int, ...], n_slots: int, tasks, results, cancel,
                  ppid: int) -> None:
    _die_with_parent(ppid)
    lower_priority()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the main process decides
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked while it started (_main_hidden): what is pending is now ignored
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(name=shm_name)
    slots = np.ndarray((n_slots, *slot_shape), dtype=np.uint8, buffer=shm.buf)
    err = _open(worker)
    try:
        while True:
            item = tasks.get()
            if item is None:
                break
            slot, task, encoded = item
            if err is not None:
                res = Result(task.seq, task.lo, error=err)
            elif cancel.is_set():
                res = Result(task.seq, task.lo, skipped=True)
            else:
                res = handle_task(worker, task, encoded if encoded is not None else slots[slot, :task.b])
            results.put((slot, task, res))
    finally:
        worker.close()
        del slots
        shm.close()


_MAIN_LOCK = threading.Lock()


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM are held, not lost, for the duration: blocked in this thread (a process started meanwhile
    inherits them blocked across exec), and recorded if another thread receives them, so that they never cut a
    step in half (a worker started without its start-up data, a task half-written into the queue's pipe). On exit
    the first one held reaches the handlers the caller had (generate: stop as Ctrl-C does)."""
    held: list[int] = []
    previous: dict[int, object] = {}
    mask: set[int] | None = None
    try:
        if threading.current_thread() is threading.main_thread():
            for stop in _STOP_SIGNALS:
                previous[stop] = signal.signal(stop, lambda signum, _frame: held.append(signum))
        if hasattr(signal, "pthread_sigmask"):
            mask = set(signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS))
        yield
    finally:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending signal is delivered: recorded in `held`
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        if held:
            signal.raise_signal(held[0])


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Spawned workers need nothing from __main__ (their code and the sink workers live in gan_deploy): hide it
    while one starts, so it neither re-imports nor re-runs the caller's script (no `if __name__ == "__main__"`
    guard needed) and starts faster. (A SinkWorker class defined in a script's __main__ cannot run in processes.)
    Signals are held meanwhile (`_signals_held`): the worker starts with Ctrl-C and SIGTERM blocked, so a Ctrl-C to
    the process group does not kill it mid-import (it unblocks them once it ignores them)."""
    with _MAIN_LOCK, _signals_held():
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__, no __spec__: nothing to import
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


class ProcessPool(_Pool):
    kind = "process"

    def __init__(self, worker: SinkWorker, n_workers: int, deliver: Deliver, slot_shape: tuple[int, ...], n_slots: int,
                 on_create: Callable[["ProcessPool"], None] | None = None):
        import multiprocessing as mp
        from multiprocessing import shared_memory

        super().__init__(deliver, n_workers)
        ctx = mp.get_context("spawn")
        self.slot_shape, self.n_slots = tuple(slot_shape), n_slots
        nbytes = int(np.prod(slot_shape, dtype=np.int64)) * n_slots
        self.shm = shared_memory.SharedMemory(create=True, size=max(1, nbytes))
        self.slots = np.ndarray((n_slots, *slot_shape), dtype=np.uint8, buffer=self.shm.buf)
        self.free = list(range(n_slots))
        self.tasks = ctx.SimpleQueue()
        self.results = ctx.Queue()
        self.cancel = ctx.Event()
        self.procs = [ctx.Process(target=_process_main, name=f"gan-deploy-writer-{k}", daemon=True,
                                  args=(worker, self.shm.name, self.slot_shape, n_slots, self.tasks, self.results, self.cancel,
                                        os.getpid()))
                      for k in range(n_workers)]
        self._stop_collector = False
        self.collector: threading.Thread | None = None
        if on_create is not None:  # the caller holds the pool before any process starts: a signal that arrives as
            on_create(self)        # the constructor returns cannot leave processes that nobody closes
        try:
            for p in self.procs:  # one at a time: a Ctrl-C or SIGTERM (as KeyboardInterrupt) stops the start-up
                start_process(p)
            self.collector = threading.Thread(target=self._collect, name="gan-deploy-collector", daemon=True)
            with _signals_held():  # a signal inside Thread.start() (waiting for the thread to say it runs) left a
                self.collector.start()  # thread running that join() refused as "not started": a traceback, exit 1
        except BaseException:
            self._abort_start()
            raise

    def _abort_start(self) -> None:
        """Stopped while starting: the workers already started are killed (they hold no task, so no file is
        half-written) and reaped, and the shared memory is freed."""
        self._stop_collector = True
        if self.collector is not None:
            self.collector.join()
        for p in self.procs:
            if p.pid is not None:
                p.kill()  # SIGKILL: a child still in spawn's bootstrap has SIGTERM blocked
        for p in self.procs:
            if p.pid is not None:
                p.join()
        self.closed = True
        self.results.close()
        del self.slots
        self.shm.close()
        self.shm.unlink()

    def submit(self, task: Task, pixels: np.ndarray | Encoded) -> None:
        with self.cond:
            while not self.free:
                if self.failure is not None:
                    raise GanDeployError("an encoder process died", self.failure, hint="see the messages above; run again")
                self.cond.wait(0.1)
            slot = self.free.pop()
            self.outstanding += 1
        handed = False
        try:
            if not isinstance(pixels, Encoded):  # files encoded on the GPU: their bytes go through the queue (the slot
                np.copyto(self.slots[slot, :task.b], pixels)  # still counts); pixels: the one copy, into shared memory
            with _signals_held():  # a Ctrl-C or SIGTERM waits for the put: never half a message in the pipe
                self.tasks.put((slot, task, pixels if isinstance(pixels, Encoded) else None))
                handed = True  # a signal held meanwhile is raised on the way out: the task is out, and comes back
        except BaseException:
            if not handed:  # Ctrl-C before the put: the task was not handed out
                with self.cond:
                    self.free.append(slot)
                    self.outstanding -= 1
            raise

    def _check_workers(self) -> None:
        dead = [p for p in self.procs if p.exitcode not in (None, 0)]
        if dead and self.failure is None:  # killed (OOM, kill -9): its batch never comes back, so the run stops
            with self.cond:
                self.failure = f"{dead[0].name} exit code {dead[0].exitcode}"
                self.cond.notify_all()

    def _collect(self) -> None:
        last_check = time.monotonic()
        while True:
            if time.monotonic() - last_check > 0.2:
                self._check_workers()
                last_check = time.monotonic()
            try:
                slot, task, res = self.results.get(timeout=0.2)
            except queue.Empty:
                if self._stop_collector:
                    return
                continue
            with self.cond:
                self.free.append(slot)
            self._delivered(task, res)

    def close(self, cancel: bool) -> None:
        if self.closed:
            return
        if cancel:
            self.cancel.set()
        self._wait_outstanding()  # every batch handed out comes back (done, or skipped once cancelled)
        self.closed = True
        for _ in self.procs:
            self.tasks.put(None)
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
        self._check_workers()
        self._stop_collector = True
        if self.collector is not None:
            self.collector.join()
        self.results.close()
        del self.slots
        self.shm.close()
        self.shm.unlink()


def start_process(p) -> None:
    """Start one encoder process (spawn: about 0.3 s on 2 cores); tests slow it down to interrupt a start-up."""
    with _main_hidden():
        p.start()


def make_pool(kind: str, worker: SinkWorker, n_workers: int, deliver: Deliver, slot_shape: tuple[int, ...],
              n_slots: int, on_create: Callable[[ProcessPool], None] | None = None) -> ThreadPool | ProcessPool:
    """`on_create(pool)` is called before any worker process starts (so the caller can close it whatever happens)."""
    if kind == "process":
        return ProcessPool(worker, n_workers, deliver, slot_shape, n_slots, on_create)
    return ThreadPool(worker, n_workers, deliver)
