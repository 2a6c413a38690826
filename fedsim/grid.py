"""fedsim's local engine: a Flower ``Grid`` that hands each Message straight to the ClientApp.

Same ServerApp, ClientApp and strategy objects as on Flower's engines, but no Ray start-up and no
polling floor. With one worker the ClientApp runs in this process and nothing is serialised; with
``workers > 1`` a pool of processes trains clients in parallel, the heaviest clients first, each
to the next worker that is free (cohorts, trained together, are shared out in advance). Each
node keeps its own ``Context`` (so ``context.state`` persists across rounds), created when the
node is first addressed, with Flower's ``partition-id`` and ``num-partitions``.

A worker's replies come back through ``fedsim.channel``: their large arrays in shared memory.

Workers are forked where the caller says it is safe (``fork=True``: Linux, no CUDA in this
process): they start at once with everything this process has loaded (modules, the data, the
ClientApp's runtime), and share those pages with it instead of each holding a copy. Otherwise
they are spawned, and each imports and loads on its own.
"""

from __future__ import annotations

import contextlib
import heapq
import importlib
import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkContext, SpawnContext
from typing import NoReturn, cast
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedsim.channel import Channel

FIRST_NODE_ID = 1000  # node ids differ from partition ids, as on Flower's engines


class InProcessGrid(Grid):
    """Runs a ClientApp for ``num_nodes`` simulated nodes, in-process or on a worker pool.

    ``client_app`` is the app itself or its import path (``"fedsim.client_app:client_app"``); worker
    processes need the path. ``costs[i]`` (e.g. client i's sample count) orders the work.
    ``cohort`` (an import path), when given, serves each batch of Messages (a worker's share of
    it) in one call instead of the app one Message at a time: it may train them together.
    """

    def __init__(
        self,
        client_app: ClientApp | str,
        num_nodes: int,
        *,
        workers: int = 1,
        costs: Sequence[float] | None = None,
        run_id: int = 1,
        fork: bool = False,
        cohort: str | None = None,
    ) -> None:
        self.num_nodes = num_nodes
        self.costs = costs
        self._run = Run.create_empty(run_id=run_id)
        # Flower stamps new Messages with the identity of the task that runs in this process.
        TaskIdentity.run_id = run_id
        TaskIdentity.task_id = 1
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._contexts: dict[int, Context] = {}
        self._replies: dict[str, Message] = {}
        self._pool = _Pool(client_app, workers, cohort, fork) if workers > 1 else None
        self._app = load_app(client_app) if self._pool is None else None
        self._cohort = load_cohort(cohort) if self._pool is None else None

    # -- Grid --------------------------------------------------------------------------------

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return range(FIRST_NODE_ID, FIRST_NODE_ID + self.num_nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        batch = list(messages)
        for msg in batch:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
        if self._pool is None:
            assert self._app is not None
            work = [(msg, self._context(msg.metadata.dst_node_id)) for msg in batch]
            replies = serve(self._app, self._cohort, work)
        else:
            replies = self._on_pool(batch)
        for msg, reply in zip(batch, replies, strict=True):
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            self._replies[msg.metadata.message_id] = reply
        return [msg.metadata.message_id for msg in batch]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    # -- client state --------------------------------------------------------------------------
    # Checkpoints reach it through Messages, as on every engine (``fedsim.client_states``).

    def client_states(self) -> dict[int, RecordDict]:
        """Each addressed client's ``context.state``, by partition id (for inspection)."""
        return {_partition(ctx): ctx.state for ctx in self._contexts.values() if ctx.state}

    def forget_clients(self) -> None:
        """Drop every client's context, as a new run on the same workers needs."""
        self._contexts.clear()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    # -- helpers -------------------------------------------------------------------------------

    def _context(self, node_id: int) -> Context:
        if node_id not in self._contexts:
            partition = node_id - FIRST_NODE_ID
            if not 0 <= partition < self.num_nodes:
                raise ValueError(f"no node {node_id} in this grid")
            self._contexts[node_id] = Context(
                run_id=self._run.run_id,
                node_id=node_id,
                node_config={"partition-id": partition, "num-partitions": self.num_nodes},
                state=RecordDict(),
                run_config={},
            )
        return self._contexts[node_id]

    def _cost(self, msg: Message) -> float:
        partition = msg.metadata.dst_node_id - FIRST_NODE_ID
        return float(self.costs[partition]) if self.costs is not None else 1.0

    def _on_pool(self, batch: list[Message]) -> list[Message]:
        assert self._pool is not None
        contexts = [self._context(msg.metadata.dst_node_id) for msg in batch]
        costs = [self._cost(msg) for msg in batch]
        if self._pool.cohort:  # a worker trains its share together: shares fixed in advance
            jobs, fixed = schedule(costs, self._pool.size), True
        else:  # one client at a time, heaviest first, to whichever worker is free
            jobs, fixed = [[i] for i in heaviest_first(costs)], False
        done = self._pool.map(batch, contexts, jobs, fixed=fixed)
        for ctx, (_, state) in zip(contexts, done, strict=True):
            ctx.state = state  # the worker's updated client state
        return [reply for reply, _ in done]


def schedule(costs: Sequence[float], workers: int) -> list[list[int]]:
    """Longest processing time first: each job, heaviest first, to the least-loaded worker.

    Returns each worker's job indices in the order it runs them (ties go to the lower index).
    """
    shares: list[list[int]] = [[] for _ in range(workers)]
    loads = [(0.0, w) for w in range(workers)]
    for job in heaviest_first(costs):
        load, worker = heapq.heappop(loads)
        shares[worker].append(job)
        heapq.heappush(loads, (load + costs[job], worker))
    return shares


def heaviest_first(costs: Sequence[float]) -> list[int]:
    """Job indices by falling cost; equal costs in index order."""
    return sorted(range(len(costs)), key=lambda j: (-costs[j], j))


def load_app(app: ClientApp | str) -> ClientApp:
    if isinstance(app, ClientApp):
        return app
    module, _, attr = app.partition(":")
    loaded = getattr(importlib.import_module(module), attr)
    if not isinstance(loaded, ClientApp):
        raise TypeError(f"{app} is not a flwr ClientApp")
    return loaded


def _partition(ctx: Context) -> int:
    return int(ctx.node_config["partition-id"])


Work = tuple[Message, Context]
Done = tuple[Message, RecordDict]
Cohort = Callable[[list[Work]], list[Message]]  # replies to several Messages, in order


def load_cohort(path: str | None) -> Cohort | None:
    if path is None:
        return None
    module, _, attr = path.partition(":")
    loaded: Cohort = getattr(importlib.import_module(module), attr)
    return loaded


def serve(app: ClientApp, cohort: Cohort | None, work: list[Work]) -> list[Message]:
    """The replies to ``work``: by ``cohort`` all at once, or by the app one at a time."""
    return list(served(app, cohort, work))


def served(app: ClientApp, cohort: Cohort | None, work: list[Work]) -> Iterator[Message]:
    """``serve``'s replies, each as soon as it is made (a cohort's once it has trained)."""
    if cohort is not None:
        yield from cohort(work)
    else:
        for msg, ctx in work:
            yield app(msg, ctx)


BATCH, JOBS = "batch", "jobs"  # what the pool sends a worker: a round's Messages, work on them


class _Pool:
    """Worker processes, each running the ClientApp on the (message, context) pairs it is sent."""

    def __init__(
        self,
        client_app: ClientApp | str,
        size: int,
        cohort: str | None = None,
        fork: bool = False,
    ) -> None:
        if not isinstance(client_app, str):
            raise TypeError("worker processes need the ClientApp's import path, e.g. 'pkg.mod:app'")
        # Forking a process that has initialised CUDA, or whose threads hold locks, can leave
        # the child stuck: the caller knows whether this one is safe to fork.
        context: SpawnContext | ForkContext = (
            mp.get_context("fork") if fork else mp.get_context("spawn")
        )
        self.size = size
        self.cohort = cohort is not None
        self._channels: list[Channel] = []
        self._procs = []
        for _ in range(size):
            parent, child = context.Pipe()
            args = (client_app, child, cohort)
            proc = context.Process(target=_work, args=args, daemon=True)
            proc.start()
            child.close()
            self._channels.append(Channel(parent, slots=False))  # replies come in shared memory
            self._procs.append(proc)

    def map(
        self, batch: list[Message], contexts: list[Context], jobs: list[list[int]], *, fixed: bool
    ) -> list[Done]:
        """Each of ``batch``'s (reply, updated client state), in order.

        Every worker is sent the whole batch first (its messages share their model, which is
        pickled once), then jobs: lists of indices into it, with their clients' contexts.
        ``fixed``: job ``w`` is worker ``w``'s. Otherwise each worker is handed the next job in
        ``jobs``' order as it finishes one, so that no worker idles while another has a queue:
        when a reply comes in, its worker gets its next job before the reply is taken in.
        A worker sends each pair as soon as it has it.
        """
        for w in range(self.size):
            self._send(w, (BATCH, batch))
        queue = deque(jobs)
        left: dict[int, deque[int]] = {}  # each busy worker's indices still to reply, in order
        for w in range(self.size if fixed else min(self.size, len(jobs))):
            self._give(w, queue.popleft(), contexts, left)
        done: dict[int, Done] = {}
        while left:
            ready = {self._channels[w].conn: w for w in left}
            for conn in wait(list(ready)):
                w = ready[cast(Connection, conn)]
                index = left[w].popleft()
                if not left[w] and queue:
                    self._give(w, queue.popleft(), contexts, left)
                try:
                    done[index] = self._channels[w].recv()
                except EOFError:
                    self._died(w)
                if not left[w]:
                    del left[w]
        return [done[i] for i in range(len(batch))]

    def close(self) -> None:
        for channel in self._channels:
            with contextlib.suppress(OSError):  # a worker that died has closed its end
                channel.send(None)
        for proc in self._procs:
            proc.join(timeout=10)
        for channel in self._channels:
            channel.close()

    def _give(
        self, w: int, job: list[int], contexts: list[Context], left: dict[int, deque[int]]
    ) -> None:
        if job:
            self._send(w, (JOBS, [(i, contexts[i]) for i in job]))
            left.setdefault(w, deque()).extend(job)

    def _send(self, w: int, obj: object) -> None:
        try:
            self._channels[w].send(obj)
        except OSError:
            self._died(w)

    def _died(self, w: int) -> NoReturn:
        proc = self._procs[w]
        proc.join(timeout=5)  # reaped, so that its exit code is known
        raise RuntimeError(f"worker process {proc.pid} died (exit code {proc.exitcode})") from None


def _work(client_app: str, conn: Connection, cohort: str | None) -> None:
    """A worker: takes a batch of Messages, then jobs (indices into it, with their contexts)."""
    channel = Channel(conn)
    TaskIdentity.run_id = TaskIdentity.task_id = 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    app, serves = load_app(client_app), load_cohort(cohort)
    batch: list[Message] = []
    with contextlib.suppress(EOFError, BrokenPipeError):  # the server has stopped: so does this
        while (received := channel.recv()) is not None:
            kind, body = received
            if kind == BATCH:
                batch = body
                continue
            work = [(batch[i], ctx) for i, ctx in body]
            for reply, (_, ctx) in zip(served(app, serves, work), work, strict=True):
                channel.send((reply, ctx.state))
