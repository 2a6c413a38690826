"""Scenario files: the typed, validated description of one federated experiment."""

from __future__ import annotations

import math
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fedsim import plugins as _plugins
from fedsim.data import dataset_kind
from fedsim.errors import ScenarioError, UserError
from fedsim.registry import (
    ANALYSES,
    ATTACKS,
    DATASETS,
    WORKLOADS,
    Component,
    DatasetParams,
    load_components,
    pydantic_errors,
    resolve,
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(Component):
    """``data:`` — a dataset from the registry plus how it is split among clients."""

    partition: Component = Component(name="iid")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="held out on each client")

    @property
    def dataset(self) -> Component:
        return Component(name=self.name, **self.options)


class WorkloadSpec(Component):
    """``workload:`` — a workload from the registry, optionally trained sparse (``sparsity``)."""

    sparsity: Component | None = None  # a sparse-training method; None trains dense

    @property
    def component(self) -> Component:
        return Component(name=self.name, **self.options)


class ClientsSpec(Section):
    num: int = Field(10, ge=1, description="clients in the federation")
    per_round: int = Field(10, ge=1, description="clients sampled each round")
    availability: Component = Component(name="always")  # who is online each round
    dropout: float = Field(0.0, ge=0, lt=1, description="a sampled client fails mid-round")

    @model_validator(mode="after")
    def _per_round_fits(self) -> ClientsSpec:
        if self.per_round > self.num:
            raise ValueError(
                f"per_round ({self.per_round}) cannot exceed num ({self.num}); "
                f"lower clients.per_round or raise clients.num"
            )
        return self


class EvalSpec(Section):
    every: int = Field(1, ge=1, description="evaluate every this many rounds (and the last)")
    clients: float = Field(1.0, ge=0.0, le=1.0, description="fraction of clients evaluating")


class ByzantineSpec(Section):
    """``byzantine:`` — how many clients attack, and how; the clients are chosen by the seed."""

    num: int = Field(0, ge=0, description="byzantine clients in the federation")
    attack: Component = Component(name="sign_flip")


class ResourcesSpec(Section):
    """How the engine spends the machine (or cluster); results do not depend on it."""

    workers: int = Field(1, ge=1, description="local engine: processes training clients")
    client_cpus: float = Field(1.0, gt=0, description="flower engine: CPUs per client actor")
    client_gpus: float | None = Field(
        None, ge=0, le=1, description="flower engine: GPU share per actor (None: 1/cores on GPU)"
    )
    ray_address: str | None = Field(
        None, description="flower engine: an existing Ray cluster ('auto' or 'host:port')"
    )
    vectorize: bool = Field(
        False,
        description="local engine: a round's clients trained as one batched model, where the "
        "workload can (torch.func); the results equal the loop's to float rounding",
    )


class NoPrivacy(Section):
    mode: Literal["none"] = "none"


class LocalPrivacy(Section):
    """``privacy: {mode: local}`` — every client trains by DP-SGD (Opacus); ε per client."""

    mode: Literal["local"]
    noise_multiplier: float = Field(ge=0, description="noise std / max_grad_norm (0: no privacy)")
    max_grad_norm: float = Field(gt=0, description="per-sample gradient clip (.inf: none)")
    delta: float = Field(1e-5, gt=0, lt=1, description="the δ at which ε is reported")
    poisson: bool = Field(
        True, description="Poisson-sampled minibatches, as the accountant assumes"
    )
    accountant: Literal["rdp", "prv", "gdp"] = "rdp"
    fix_model: bool = Field(False, description="let Opacus replace layers it cannot train")

    @model_validator(mode="after")
    def _noise_needs_a_clip(self) -> LocalPrivacy:
        if math.isinf(self.max_grad_norm) and self.noise_multiplier > 0:
            raise ValueError(
                "max_grad_norm is infinite but noise_multiplier > 0: the noise std is their "
                "product; give a finite max_grad_norm (infinite is only for noise_multiplier: 0)"
            )
        return self


class CentralPrivacy(Section):
    """``privacy: {mode: central}`` — Flower's server-side DP wrapper around the strategy."""

    mode: Literal["central"]
    noise_multiplier: float = Field(ge=0, description="noise std / (clipping_norm / clients)")
    clipping: Literal["fixed", "adaptive"] = "fixed"
    clipping_norm: float = Field(gt=0, allow_inf_nan=False, description="adaptive: initial norm")
    target_clipped_quantile: float = Field(0.5, ge=0, le=1, description="adaptive only")
    clip_norm_lr: float = Field(0.2, gt=0, description="adaptive only")
    clipped_count_stddev: float | None = Field(None, ge=0, description="adaptive only")
    delta: float = Field(1e-5, gt=0, lt=1, description="the δ at which ε is reported")

    @model_validator(mode="after")
    def _adaptive_keys_need_adaptive(self) -> CentralPrivacy:
        # Compared with the defaults, not the keys given: a resolved scenario spells out all.
        adaptive = ("target_clipped_quantile", "clip_norm_lr", "clipped_count_stddev")
        fields = type(self).model_fields
        given = [k for k in adaptive if getattr(self, k) != fields[k].default]
        if self.clipping == "fixed" and given:
            raise ValueError(
                f"{', '.join(given)} only apply to clipping: adaptive; remove them or set "
                f"clipping: adaptive"
            )
        return self


Privacy = Annotated[NoPrivacy | LocalPrivacy | CentralPrivacy, Field(discriminator="mode")]


class MlflowSpec(Section):
    """``tracking.mlflow:`` — an MLflow tracking store (a server's URL, ``sqlite:///…``, …)."""

    uri: str | None = Field(None, description="tracking URI (None: MLflow's own default)")
    experiment: str | None = Field(None, description="experiment (None: the scenario's name)")


class TrackingSpec(Section):
    """``tracking:`` — where metric rows go besides metrics.csv, each round as it is written."""

    tensorboard: bool = Field(False, description="TensorBoard event files in RUN_DIR/tensorboard")
    mlflow: MlflowSpec | None = None  # params (the scenario) and metrics to MLflow

    @field_validator("mlflow", mode="before")
    @classmethod
    def _true_means_defaults(cls, value: Any) -> Any:
        return {} if value is True else None if value is False else value

    @field_validator("tensorboard")
    @classmethod
    def _tensorboard_installed(cls, value: bool) -> bool:
        # Looked up, not imported: a scenario that does not ask for a tracker never loads it.
        if value and find_spec("tensorboard") is None:
            raise ValueError("needs the tensorboard package: pip install 'fedsim[tensorboard]'")
        return value

    @field_validator("mlflow")
    @classmethod
    def _mlflow_installed(cls, value: MlflowSpec | None) -> MlflowSpec | None:
        if value is not None and find_spec("mlflow") is None:
            raise ValueError("needs the mlflow package: pip install 'fedsim[mlflow]'")
        return value


class Scenario(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    plugins: list[str] = Field(
        default_factory=list,
        description="modules (dotted) or .py files imported first; they register components",
    )
    seed: int = Field(0, ge=0)
    rounds: int = Field(ge=1)
    engine: Literal["local", "flower"] = "local"
    resources: ResourcesSpec = ResourcesSpec(
        workers=1, client_cpus=1.0, client_gpus=None, ray_address=None, vectorize=False
    )
    checkpoint_every: int = Field(1, ge=0, description="rounds between checkpoints (0: never)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataSpec
    clients: ClientsSpec = ClientsSpec()
    workload: WorkloadSpec
    strategy: Component = Component(name="fedavg")
    compression: Component = Component(name="none")  # what clients do to updates they send
    byzantine: ByzantineSpec = ByzantineSpec()
    eval: EvalSpec = EvalSpec()
    privacy: Privacy = NoPrivacy()
    tracking: TrackingSpec = TrackingSpec()
    # Instruments on the workload's model, run after its exchanges (e.g. information_plane).
    analysis: list[Component] = Field(default_factory=list)

    @model_validator(mode="after")
    def _byzantine_fit(self) -> Scenario:
        if self.byzantine.num > self.clients.num:
            raise ValueError(
                f"byzantine.num ({self.byzantine.num}) cannot exceed clients.num "
                f"({self.clients.num}); lower byzantine.num"
            )
        return self

    @model_validator(mode="after")
    def _central_privacy_fits(self) -> Scenario:
        """Flower's DP wrapper calibrates its noise to a fixed number of replies per round."""
        if self.privacy.mode != "central":
            return self
        if self.clients.per_round < 2:
            raise ValueError(
                "privacy.mode central needs clients.per_round >= 2: the noise hides one client "
                "among the round's others; raise clients.per_round"
            )
        if self.clients.dropout > 0 or self.clients.availability.name != "always":
            raise ValueError(
                "privacy.mode central needs every sampled client to reply (Flower's DP wrapper "
                "skips a round with a failed client, and fewer replies than clients.per_round "
                "would need more noise): set clients.dropout: 0 and clients.availability: always"
            )
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# Where each top-level component lives and which registry validates it.
_COMPONENTS = {
    "data": "dataset",
    "data.partition": "partitioner",
    "clients.availability": "availability",
    "workload": "workload",
    "workload.sparsity": "sparsity",
    "strategy": "strategy",
    "compression": "compressor",
    "byzantine.attack": "attack",
}


def parse(raw: Any, source: str = "") -> Scenario:
    """Validate a scenario given as plain data; every default filled in, components resolved.

    ``source`` names the scenario in messages; when it is a file, relative paths to the user's
    files (``UserPath`` fields, e.g. ``data.path``) are made absolute from its folder, else from
    the working directory.
    """
    if not isinstance(raw, dict):
        raise ScenarioError(
            [f"(top level): expected a mapping of keys, got {type(raw).__name__}"], source
        )
    try:
        scenario = Scenario.model_validate(raw)
    except ValidationError as err:
        raise ScenarioError(
            [f"{loc.lstrip('.')}: {msg}" if loc else msg for loc, msg in pydantic_errors(err)],
            source,
        ) from None
    # First the plugins, whose components the rest may name; by absolute path from here on,
    # so that every process that parses the resolved scenario imports the same files.
    try:
        load_components()
        loaded = _plugins.load(scenario.plugins)
    except UserError as err:
        raise ScenarioError([f"plugins: {err}"], source) from err.__cause__
    scenario = scenario.model_copy(update={"plugins": [plugin.spec for plugin in loaded]})
    base = Path(source).resolve().parent if source and Path(source).is_file() else Path.cwd()
    problems: list[str] = []
    resolved: dict[str, Component] = {}
    for path, kind in _COMPONENTS.items():
        spec = _component_at(scenario, path)
        if spec is None:  # an optional component left out
            continue
        if path == "data":  # the dataset's own options exclude the data section's fixed keys
            spec = scenario.data.dataset
        if path == "data.partition" and scenario.data.name in DATASETS:
            # The dataset names the registry its clients split it with (a graph's nodes are
            # split with its structure in view), and its default.
            dataset = DATASETS.entry(scenario.data.name)
            kind = dataset.declared("partitioners", kind)
            if "partition" not in scenario.data.model_fields_set:
                spec = Component(name=dataset.declared("default_partition", "iid"))
        resolved[path], errs = resolve(spec, kind, path, base)
        problems += errs
    analyses = []
    for i, spec in enumerate(scenario.analysis):
        done, errs = resolve(spec, "analysis", f"analysis[{i}]", base)
        analyses.append(done)
        problems += errs
    if problems:
        raise ScenarioError(problems, source)

    data = DataSpec(
        **resolved["data"].model_dump(),
        partition=resolved["data.partition"],
        val_fraction=scenario.data.val_fraction,
    )
    clients = scenario.clients.model_copy(update={"availability": resolved["clients.availability"]})
    byzantine = scenario.byzantine.model_copy(update={"attack": resolved["byzantine.attack"]})
    workload = WorkloadSpec(
        **resolved["workload"].model_dump(), sparsity=resolved.get("workload.sparsity")
    )
    resolved_scenario = scenario.model_copy(
        update={
            "data": data,
            "clients": clients,
            "byzantine": byzantine,
            "workload": workload,
            "strategy": resolved["strategy"],
            "compression": resolved["compression"],
            "analysis": analyses,
        }
    )
    problems = [problem for check in VALIDATORS for problem in check(resolved_scenario)]
    if problems:
        raise ScenarioError(problems, source)
    return resolved_scenario


def _data_mismatch(scenario: Scenario) -> list[str]:
    """The workload reads the kind of data the dataset is; a data attack poisons that kind."""
    kind = dataset_kind(scenario.data.name)
    workload = WORKLOADS.build(scenario.workload.component)
    problems = []
    if workload.reads != kind:
        fits = [d for d in DATASETS.names() if dataset_kind(d) == workload.reads]
        fitting = [w for w in WORKLOADS.names() if _reads(w) == kind]
        problems.append(
            f"data.name: workload {scenario.workload.name!r} reads {workload.reads} data "
            f"({', '.join(fits) or 'no dataset'}), but {scenario.data.name!r} is {kind} data "
            f"(workloads for it: {', '.join(fitting) or 'none'})"
        )
    if scenario.byzantine.num:
        poisons = getattr(ATTACKS.build(scenario.byzantine.attack), "poisons", None)
        if poisons is not None and poisons != kind:
            problems.append(
                f"byzantine.attack: {scenario.byzantine.attack.name!r} poisons {poisons} data, "
                f"but {scenario.data.name!r} is {kind} data; use a model attack (e.g. sign_flip)"
            )
    return problems


def _workload_problems(scenario: Scenario) -> list[str]:
    """The workload's own checks of the scenario around it (``check``, optional in the
    contract): what it cannot train on, caught before anything runs."""
    check = getattr(WORKLOADS.build(scenario.workload.component), "check", None)
    return list(check(scenario)) if check is not None else []


def _analysis_problems(scenario: Scenario) -> list[str]:
    """Analyses probe a model called on sample tensors, and their metrics must not collide."""
    if not scenario.analysis:
        return []
    problems = []
    reads = WORKLOADS.build(scenario.workload.component).reads
    if reads != "samples":
        problems.append(
            f"analysis: the analyses probe a model called on sample tensors, but workload "
            f"{scenario.workload.name!r} reads {reads} data; remove analysis"
        )
    tags = [(spec.name, spec.options.get("tag", "")) for spec in scenario.analysis]
    if len(set(tags)) < len(tags):
        problems.append(
            "analysis: two analyses of the same name need different tags (tag: fixed, ...), "
            "or their metrics would collide"
        )
    evaluated = {r for r in range(1, scenario.rounds + 1) if r % scenario.eval.every == 0}
    for i, spec in enumerate(scenario.analysis):
        analysis = ANALYSES.build(spec)
        analysis.attach(scenario.rounds)
        # The server's own estimate is made with its central evaluation.
        missed = sorted(set(analysis.central_rounds()) - evaluated - {scenario.rounds})
        if missed:
            problems.append(
                f"analysis[{i}]: its central estimate is due in rounds {missed[:5]}"
                f"{'…' if len(missed) > 5 else ''}, where the server does not evaluate "
                f"(eval.every: {scenario.eval.every}); set eval.every to divide its rounds "
                "(eval.every: 1 for schedule: log), or central: false"
            )
    return problems


def _data_files(scenario: Scenario) -> list[str]:
    """The dataset's cheap checks of the user's files: they exist and hold what is named."""
    params = DATASETS.params(scenario.data.dataset)
    if not isinstance(params, DatasetParams):
        return []
    return [f"data.{problem}" for problem in params.check()]


def _reads(workload: str) -> str:
    return str(WORKLOADS.build(workload).reads)


def _vectorize_problems(scenario: Scenario) -> list[str]:
    """Where ``resources.vectorize`` could batch no client at all."""
    if not scenario.resources.vectorize:
        return []
    off = "or set resources.vectorize: false"
    if scenario.engine != "local":
        return [
            f"resources.vectorize: the {scenario.engine} engine trains each client in an actor "
            f"of its own; only the local engine trains clients together: set engine: local, {off}"
        ]
    workload = WORKLOADS.build(scenario.workload.component)
    if getattr(workload, "fit_cohort", None) is None:
        return [
            f"resources.vectorize: workload {scenario.workload.name!r} has no vectorised "
            f"training (fit_cohort in the workload contract); {off.removeprefix('or ')}"
        ]
    if scenario.privacy.mode == "local":
        return [
            "resources.vectorize: local DP-SGD (privacy.mode: local) clips and noises each "
            f"client's per-sample gradients in a loop of its own; remove privacy, {off}"
        ]
    return []


def _privacy_problems(scenario: Scenario) -> list[str]:
    """Why the scenario cannot carry its ``privacy`` guarantee (empty when it can).

    Either mode protects a shared model: a workload that keeps all of its model on the
    clients (``local = ("*",)``) releases something else, which neither mode covers.
    """
    if scenario.privacy.mode == "none":
        return []
    if "*" in WORKLOADS.build(scenario.workload.component).local:
        return [
            f"privacy: workload {scenario.workload.name!r} shares no model (its model stays on "
            "the clients), and what it releases is covered by neither DP mode; remove privacy"
        ]
    return central_problems(scenario)


def central_problems(scenario: Scenario) -> list[str]:
    """Why the scenario's strategy cannot carry central DP's guarantee (empty when it can).

    The noise z·C/n covers one client's clipped update in a uniform mean over n clients, added
    to the model once a round: the aggregate must be exactly that, and nothing may act on the
    updates after clipping.
    """
    if scenario.privacy.mode != "central":
        return []
    strategy = scenario.strategy
    if strategy.name != "fedavg":
        return [
            f"privacy: central DP wraps the fedavg strategy only, not {strategy.name!r} "
            f"(its replies are not the clients' models); use strategy: {{name: fedavg}}"
        ]
    options = strategy.options
    problems = []
    aggregator = options.get("aggregator", {})
    if aggregator != {"name": "mean", "weighted": False}:
        problems.append(
            "privacy: central DP needs the uniform mean (its noise covers one client in n "
            "equal shares); set strategy.aggregator: {name: mean, weighted: false}"
        )
    if options.get("preagg"):
        problems.append("privacy: central DP takes no pre-aggregators; set strategy.preagg: []")
    server_opt = options.get("server_opt", {})
    plain_step = server_opt.get("name") == "sgd" and server_opt.get("momentum", 0) == 0
    if not plain_step or server_opt.get("lr", 1) > 1:
        problems.append(
            "privacy: central DP needs a server step of at most the noisy mean (momentum "
            "would carry un-noised updates into later rounds); set strategy.server_opt: "
            "{name: sgd, lr: 1, momentum: 0}"
        )
    attack = ATTACKS.build(scenario.byzantine.attack) if scenario.byzantine.num else None
    if attack is not None and getattr(attack, "poisons", None) is None:
        problems.append(
            "privacy: byzantine model attacks act after the server's DP clipping and would "
            "bypass it; use a data attack (label_flip, noisy_data) or remove privacy"
        )
    return problems


# Checks of a resolved scenario beyond its schema, each returning its problems as lines.
VALIDATORS: list[Callable[[Scenario], list[str]]] = [
    _data_mismatch,
    _data_files,
    _workload_problems,
    _privacy_problems,
    _analysis_problems,
    _vectorize_problems,
]


def _component_at(scenario: Scenario, path: str) -> Component:
    node: Any = scenario
    for part in path.split("."):
        node = getattr(node, part)
    return node


def load(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read, override (``a.b=value``) and validate a scenario file."""
    raw = read(path, overrides)
    if "sweep" in raw:
        raise ScenarioError(
            ["sweep: this file describes a sweep of several runs; run it with `fedsim run`"],
            str(path),
        )
    return parse(raw, str(path))


def read(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A scenario file as plain data, with ``a.b=value`` overrides applied; not yet validated."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ScenarioError(["file not found; check the path"], source) from None
    except OSError as err:
        raise ScenarioError([f"cannot read the file: {err.strerror}"], source) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ScenarioError([yaml_problem(err)], source) from None
    if raw is None:
        raise ScenarioError(["(top level): the file is empty"], source)
    if not isinstance(raw, dict):
        got = type(raw).__name__
        raise ScenarioError([f"(top level): expected a mapping of keys, got {got}"], source)
    for item in overrides or []:
        apply_override(raw, item, source)
    if isinstance(raw.get("plugins"), list):  # plugin files are named relative to this file
        folder = path.resolve().parent
        raw["plugins"] = [
            _plugins.absolute(spec, folder) if isinstance(spec, str) else spec
            for spec in raw["plugins"]
        ]
    return raw


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML parse error as one line: ``(yaml) line L, column C: problem``."""
    where = getattr(err, "problem_mark", None)
    at = f"line {where.line + 1}, column {where.column + 1}: " if where else ""
    problem = getattr(err, "problem", None) or str(err)
    return f"(yaml) {at}{problem}"


def apply_override(raw: dict[str, Any], item: str, source: str = "") -> None:
    """Set ``a.b.c=value`` in nested data; the value is parsed as YAML (``5``, ``[1, 2]``)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ScenarioError([f"--set {item!r}: expected key.path=value"], source)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ScenarioError([f"--set {key}: cannot parse value {text!r}"], source) from None
    set_key(raw, key.strip(), value, f"--set {key}", source)


def set_key(raw: dict[str, Any], dotted: str, value: Any, label: str, source: str = "") -> None:
    """``raw[a][b][c] = value`` for ``a.b.c``, making the mappings on the way; ``label`` names
    the override in the error when a key on the way is not a mapping."""
    *parents, leaf = dotted.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            at = ".".join(parents[: i + 1])
            raise ScenarioError([f"{label}: {at} is not a mapping"], source)
        node = child
    node[leaf] = value
