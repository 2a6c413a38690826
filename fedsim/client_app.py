"""The ClientApp: a simulated client's work on whatever Message a round sends it.

Each Message carries the resolved scenario, so a client needs nothing else: a worker process
builds (once) the workload, the federation and one model that is reset in place for every
client it serves. Every workload answers the same three Messages: ``train``, ``evaluate`` and
``query.exchange`` (one of its exchanges). Before each call the model gets the shared entries
the server sent and the client's local entries from its ``context.state``; after the call the
local entries and the workload's own state go back there, and the reply carries the shared
entries only (evaluation changes neither, and keeps only a first call's draw). The shared
entries are not copied in again when the model holds them as the same record sent them, after
a report of an exchange that ``keeps_model`` (an analysis's two round trips send each client
one model twice, and a process serves many clients). Features the scenario turns on wrap the
training call as client mods (``fedsim.features``).

With ``resources.vectorize`` the local engine hands a round's Messages to ``train_cohort``,
which trains the train Messages' clients as one batched model where the workload can; each
client's reply is still built by the same handler.

The server checkpoints and restores a client's ``context.state`` with ``query.state`` and
``query.restore`` (``fedsim.client_states``); a reply whose call changed the state says so.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, reduce
from typing import Any, cast

import torch
import yaml
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from torch import nn

from clients import Exchange, State, TrainConfig, Workload
from clients.workload import TRAINED, Fitted, Member, split_state
from fedsim import client_states, wire
from fedsim.build import (
    TORCH_STREAM,
    build_workload,
    initial_model,
    local_entries,
    pick_device,
    scenario_federation,
    seed_torch,
    seeded_generator,
    torch_rng_kept,
)
from fedsim.data import Federation, Labelled
from fedsim.features import ClientMod, Fit, Trained, changes_training, client_mods
from fedsim.loading import load_entries
from fedsim.scenario import Scenario, parse

CLIENT_ERROR = 1  # Error.code of a client whose work raised
LOCAL = "local-entries"  # context.state: the model's entries that never leave this client
STATE = "workload-state"  # context.state: the workload's own tensors
EXCHANGE_STREAM = 23  # an exchange report's generator, apart from training's
EVAL_STREAM = 29  # an evaluation's generator (e.g. a sampled neighbourhood)

client_app = ClientApp()
log = logging.getLogger(__name__)


@dataclass
class ClientRuntime:
    """What one worker process keeps for the whole run: data once, one model reset in place.

    Data and the model live on the device for the whole run (on a GPU, nothing of them goes
    back to the host per client; only each reply's tensors do).
    """

    scenario: Scenario
    workload: Workload
    device: torch.device
    model: nn.Module
    federation: Federation
    template: ArrayRecord  # the shared entries: names, shapes and dtypes of what travels
    local_keys: tuple[str, ...]
    sizes: list[int]
    mods: list[ClientMod]
    alone: bool  # a mod changes each client's training: no cohort trains them together
    exchanges: dict[str, Exchange]
    # The shared entries the model still holds as they were sent, after a call that only read
    # them (the report of an exchange that ``keeps_model``): the record (weakly) and its
    # identity. The next call sent the same record does not copy them in again.
    as_sent: tuple[weakref.ref[ArrayRecord], tuple[int, tuple[int, ...]]] | None = None


@lru_cache(maxsize=2)
def runtime(scenario_text: str) -> ClientRuntime:
    torch.set_num_threads(1)  # workers share the cores: more threads oversubscribe
    scenario = parse(yaml.safe_load(scenario_text))
    workload: Workload = build_workload(scenario)
    federation = scenario_federation(scenario)
    device = pick_device(scenario.device)
    model = initial_model(workload, scenario, federation.dataset)
    shared, local = split_state(model.state_dict(), workload.local)
    return ClientRuntime(
        scenario,
        workload,
        device,
        model.to(device),
        federation.to(device),
        ArrayRecord(shared),
        tuple(local),
        federation.client_sizes(),
        client_mods(scenario),
        changes_training(scenario),
        {exchange.name: exchange for exchange in workload.exchanges},
    )


def prepare(scenario_text: str) -> None:
    """Build this process's runtime for a scenario now, before its first training Message: at
    start-up rather than in round 1, and once for the workers forked from this process. Leaves
    torch on one thread, as the runtime runs it (no thread pool is alive when workers fork)."""
    runtime(scenario_text)
    # torch imports its compiler stack (seconds) when the first optimiser is built: now.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds; with the scenario, get ready for it
    (on every engine this is start-up, before round 1)."""
    if "config" in msg.content.config_records:
        # A runtime that cannot be built fails round 1's Messages again, which report it.
        with contextlib.suppress(Exception):
            prepare(_scenario_text(msg.content))
    info = MetricRecord(
        {
            "partition-id": int(context.node_config["partition-id"]),
            "num-partitions": int(context.node_config["num-partitions"]),
        }
    )
    return Message(RecordDict({"metrics": info}), reply_to=msg)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    return _reply(msg, context, _train)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _reply(msg, context, _evaluate)


@client_app.query(wire.EXCHANGE)
def exchange(msg: Message, context: Context) -> Message:
    return _reply(msg, context, _report)


@client_app.query(client_states.STATE)
def state(msg: Message, context: Context) -> Message:
    """Reply with this client's state (all of its ``context.state``) for a checkpoint."""
    return Message(context.state.copy(), reply_to=msg)


@client_app.query(client_states.RESTORE)
def restore(msg: Message, context: Context) -> Message:
    """Take the state a checkpoint saved, in place of whatever this client holds."""
    context.state = msg.content.copy()
    return Message(RecordDict(), reply_to=msg)


@dataclass(frozen=True)
class Call:
    """One Message's work as every handler starts it: the model loaded, the client's state."""

    rt: ClientRuntime
    round: int
    sent: ArrayRecord  # the shared entries as received
    positions: torch.Tensor | None  # the global mask, when the model came masked
    state: State
    config: TrainConfig


def _start(client: int, content: RecordDict, context: Context, *stream: int) -> Call:
    """Load the model (shared entries sent, local ones kept) and build the call's config, its
    generator seeded from (seed, client, round, *stream), and torch's global one beside it."""
    rt = runtime(_scenario_text(content))
    rnd = int(cast(int, _config(content)["server-round"]))
    sent, positions = wire.received_model(content, rt.template)
    state = _load(rt, client, sent, context)
    generator = seeded_generator(rt.scenario.seed, client, rnd, *stream)
    seed_torch(rt.scenario.seed, client, rnd, *stream, TORCH_STREAM)
    config = TrainConfig(rnd, client, generator, rt.device, received=_received(rt, content))
    return Call(rt, rnd, sent, positions, state, config)


def _train(client: int, content: RecordDict, context: Context) -> RecordDict:
    call, fit = _train_call(client, content, context)
    return _trained(call, fit, context, call.rt.workload.fit)


def _trained(call: Call, fit: Fit, context: Context, train: Train) -> RecordDict:
    """Train (``train``: the workload's ``fit``, or a cohort's result) inside the scenario's
    client mods; keep the client's state; reply with the model (or what a mod made of it)."""
    rt = call.rt
    trained = reduce(_wrap, reversed(rt.mods), _fitted(rt, train))(fit)
    _save(rt, context, call.state)
    metrics = dict(trained.metrics)
    weight = metrics.pop(TRAINED, rt.sizes[fit.client])  # the workload may say what it trained on
    record = MetricRecord({**metrics, "num-examples": int(weight)})
    return RecordDict({trained.key: trained.arrays, "metrics": record})


def _train_call(client: int, content: RecordDict, context: Context) -> tuple[Call, Fit]:
    call = _start(client, content, context)
    rt = call.rt
    fit = Fit(
        rt.scenario,
        client,
        call.round,
        rt.model,
        rt.federation.train_data(client),
        call.state,
        call.config,
        context.state,
        call.sent,
        _config(content),
        call.positions,
    )
    return call, fit


# A workload's ``fit``: trains the model in place, returns its metrics.
Train = Callable[[nn.Module, Any, State, TrainConfig], dict[str, float]]


def _fitted(rt: ClientRuntime, train: Train) -> Callable[[Fit], Trained]:
    """The innermost call: the workload trains; the reply is the shared entries."""

    def fit(call: Fit) -> Trained:
        metrics = train(call.model, call.data, call.state, call.config)
        return Trained(metrics, wire.ARRAYS, _shared(rt))

    return fit


def _wrap(inner: Callable[[Fit], Trained], mod: ClientMod) -> Callable[[Fit], Trained]:
    return lambda fit: mod(fit, inner)


def _evaluate(client: int, content: RecordDict, context: Context) -> RecordDict:
    call = _start(client, content, context, EVAL_STREAM)
    rt = call.rt
    data = rt.federation.val_data(client)
    if data is None:  # no held-out data: evaluate on what it trains on
        data = rt.federation.train_data(client)
    metrics = rt.workload.evaluate(rt.model, data, call.state, call.config)
    if rt.local_keys and LOCAL not in context.state:  # a first call keeps its draw
        _save(rt, context, call.state)
    examples = len(data.labels) if isinstance(data, Labelled) else rt.sizes[client]
    return RecordDict({"metrics": MetricRecord({**metrics, "num-examples": examples})})


def _report(client: int, content: RecordDict, context: Context) -> RecordDict:
    """One exchange's report: what this client sends up after the round's aggregation."""
    call = _start(client, content, context, EXCHANGE_STREAM)
    rt = call.rt
    exchange = rt.exchanges[str(_config(content)[wire.EXCHANGE])]
    data = rt.federation.train_data(client)
    arrays, metrics = exchange.report(rt.model, data, call.state, call.config)
    if getattr(exchange, "keeps_model", False):  # it only read the model: the next call may
        rt.as_sent = weakref.ref(call.sent), wire.identity(call.sent)  # find them as sent
    _save(rt, context, call.state)
    report = wire.record(arrays)
    metrics_record = MetricRecord({**metrics, "num-examples": rt.sizes[client]})
    return RecordDict({wire.REPORT: report, "metrics": metrics_record})


# ---- a round's clients trained together (resources.vectorize) ------------------------------


def train_cohort(work: Sequence[tuple[Message, Context]]) -> list[Message]:
    """The ClientApp's replies to ``work``, its train Messages trained together where the
    workload can (``fit_cohort``) and no client mod changes the training.

    A client of the cohort goes through the same ``_trained`` as alone, its workload call
    replaced by its share of the cohort's result; every other Message, and every client the
    cohort leaves out, is served by the ClientApp one at a time.
    """
    with torch_rng_kept():  # the members' calls seed it (``_start``)
        together = _fit_together(work)
    replies = []
    for i, (msg, context) in enumerate(work):
        if i in together:
            replies.append(_reply(msg, context, _finish(*together[i])))
        else:
            replies.append(client_app(msg, context))
    return replies


def _fit_together(work: Sequence[tuple[Message, Context]]) -> dict[int, tuple[Call, Fit, Fitted]]:
    """The train Messages that one ``fit_cohort`` trains, by index in ``work``: each one's
    call as ``_train`` starts it, and its result."""
    calls: list[tuple[Call, Fit]] = []
    members: list[Member] = []
    where: list[int] = []
    rt: ClientRuntime | None = None
    for i, (msg, context) in enumerate(work):
        if msg.metadata.message_type != MessageType.TRAIN:
            continue
        try:
            call, fit = _train_call(int(context.node_config["partition-id"]), msg.content, context)
        except Exception:  # its own call replies with the error
            continue
        if call.rt.alone or (rt is not None and call.rt is not rt):
            continue  # a client mod changes this client's training: it trains alone
        rt = call.rt
        start = {k: v.detach().clone() for k, v in rt.model.state_dict().items()}
        members.append(Member(start, fit.data, call.state, call.config))
        calls.append((call, fit))
        where.append(i)
    fit_cohort = getattr(rt.workload, "fit_cohort", None) if rt is not None else None
    if rt is None or fit_cohort is None or len(members) < 2:
        return {}
    try:
        results = fit_cohort(rt.model, members)
    except Exception as err:  # e.g. a model torch.func cannot batch: the loop still can
        log.warning(
            "resources.vectorize: the cohort could not train together (%s: %s); "
            "its clients train one by one",
            type(err).__name__,
            err,
        )
        return {}
    return {
        i: (*started, fitted)
        for i, started, fitted in zip(where, calls, results, strict=True)
        if fitted is not None
    }


def _finish(
    call: Call, fit: Fit, fitted: Fitted
) -> Callable[[int, RecordDict, Context], RecordDict]:
    """The rest of ``_train``, for a client that the cohort has trained."""
    return lambda client, content, context: _trained(call, fit, context, _replay(fitted))


def _replay(fitted: Fitted) -> Train:
    """A workload call whose training the cohort has done: the model takes its result."""

    def train(model: nn.Module, data: Any, state: State, config: TrainConfig) -> dict[str, float]:
        model.load_state_dict(fitted.entries)
        return dict(fitted.metrics)

    return train


# ---- the model's two halves and the client's state -----------------------------------------


def _load(rt: ClientRuntime, client: int, sent: ArrayRecord, context: Context) -> State:
    """Load the shared entries sent (unless the model holds them as sent) and this client's
    local entries; its workload state."""
    held, rt.as_sent = rt.as_sent, None  # this call may change the model
    if held is None or held[0]() is not sent or held[1] != wire.identity(sent):
        load_entries(rt.model, wire.tensors(sent))
    if rt.local_keys:
        kept = cast(ArrayRecord | None, context.state.get(LOCAL))
        local: dict[str, torch.Tensor]
        if kept is not None:
            local = dict(kept.to_torch_state_dict())
        else:  # the client's first call: its own draw from (seed, client)
            local = local_entries(rt.workload, rt.scenario, rt.federation.dataset, client)
        load_entries(rt.model, local)
    kept_state = cast(ArrayRecord | None, context.state.get(STATE))
    if kept_state is None:
        return {}
    return {k: v.to(rt.device) for k, v in kept_state.to_torch_state_dict().items()}


def _save(rt: ClientRuntime, context: Context, state: State) -> None:
    if rt.local_keys:
        model_state = rt.model.state_dict()
        context.state[LOCAL] = wire.record({k: model_state[k] for k in rt.local_keys})
    if state:
        context.state[STATE] = wire.record(state)


def _shared(rt: ClientRuntime) -> ArrayRecord:
    model_state = rt.model.state_dict()
    return wire.record({k: model_state[k] for k in rt.template})


def _received(rt: ClientRuntime, content: RecordDict) -> dict[str, dict[str, torch.Tensor]]:
    """The exchanges' latest broadcasts a Message carries, on the device."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, record in content.items():
        if key.startswith(wire.RECEIVED) and isinstance(record, ArrayRecord):
            tensors = wire.tensors(record)  # shared by the round's clients: each its own copy
            out[key.removeprefix(wire.RECEIVED)] = {
                k: v.to(rt.device, copy=True) for k, v in tensors.items()
            }
    return out


def _scenario_text(content: RecordDict) -> str:
    return str(_config(content)["scenario"])


def _config(content: RecordDict) -> ConfigRecord:
    # Item access: ``content.config_records`` builds a new mapping of them at every call.
    return cast(ConfigRecord, content["config"])


def _reply(
    msg: Message,
    context: Context,
    work: Callable[[int, RecordDict, Context], RecordDict],
) -> Message:
    """Run a client's work; an exception becomes an error reply the server records. A reply
    whose work changed the client's state says so (the server's checkpoint asks for it)."""
    before: dict[str, object] = dict(context.state.items())
    try:
        with torch_rng_kept():  # the call seeds it for the model's own dropout (``_start``)
            content = work(int(context.node_config["partition-id"]), msg.content, context)
    except Exception as err:  # the round goes on without this client
        return Message(
            Error(code=CLIENT_ERROR, reason=f"{type(err).__name__}: {err}"), reply_to=msg
        )
    if _changed(before, context.state):
        content[client_states.CHANGED] = ConfigRecord()
    return Message(content, reply_to=msg)


def _changed(before: dict[str, object], state: RecordDict) -> bool:
    """Whether ``state`` holds other records than ``before`` (fedsim's handlers and mods
    replace a record to change it, never edit one in place)."""
    return state.keys() != before.keys() or any(state[k] is not r for k, r in before.items())
