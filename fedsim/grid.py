"""An in-process Flower ``Grid``: each Message goes straight to the ClientApp in this process.

Same ServerApp, ClientApp and strategy objects as on Flower's engines, but no Ray start-up, no
polling floor and no serialisation. Each simulated node keeps its own ``Context`` (so
``context.state`` persists across rounds) with Flower's ``partition-id`` / ``num-partitions``.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

_FIRST_NODE_ID = 1000  # node ids differ from partition ids, as on Flower's engines


class InProcessGrid(Grid):
    """Runs ``client_app`` for ``num_nodes`` simulated nodes, one message at a time."""

    def __init__(self, client_app: ClientApp, num_nodes: int, run_id: int = 1) -> None:
        self.client_app = client_app
        self._run = Run.create_empty(run_id=run_id)
        # Flower stamps new Messages with the identity of the task that runs in this process.
        TaskIdentity.run_id = run_id
        TaskIdentity.task_id = 1
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self.contexts = {
            _FIRST_NODE_ID + i: Context(
                run_id=run_id,
                node_id=_FIRST_NODE_ID + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for i in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}

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
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = message_id = str(uuid4())
            reply = self.client_app(msg, self.contexts[msg.metadata.dst_node_id])
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            self._replies[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
