"""The checkpoint a run resumes from: typed, and read without running anything the file holds.

``checkpoint.pt`` holds only tensors and plain containers, so that ``torch.load`` reads it with
``weights_only=True``: resuming a run directory received from someone else cannot run code, and a
damaged file is reported in one line instead of a PyTorch traceback. States that are not plain
(the pipeline's NamedTuples, numpy arrays) are written as tagged dicts by ``to_plain`` and rebuilt
by ``from_plain``; a NamedTuple is rebuilt only from fedsim's own packages.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from fedsim.errors import UserError

FILE = "checkpoint.pt"
FORMAT = "fedsim-checkpoint"
VERSION = 1  # raise it when the content changes; a file of another version is refused

# Tags of the values that to_plain turns into dicts. A plain dict may not use them as keys.
NDARRAY = "__ndarray__"  # {NDARRAY: tensor}: a numpy array
NAMEDTUPLE = "__namedtuple__"  # {NAMEDTUPLE: "module:QualName", "fields": {...}}
# The packages whose NamedTuples a checkpoint may name: importing them runs only fedsim's code.
PACKAGES = ("strategies", "clients", "fedsim")


@dataclass
class Checkpoint:
    """What a resumed run needs to go on exactly as an uninterrupted one would."""

    round: int  # the last completed round
    model: dict[str, Tensor]  # the shared global model's state dict ({} when there is none)
    strategy: Any  # the strategy's state
    # per exchange name: {"memory": its state, "broadcast": {name: Tensor}}
    exchanges: dict[str, Any] = field(default_factory=dict)
    clients: dict[int, Any] = field(default_factory=dict)  # each client's saved state, by id
    # server-side state of cross-cutting features, e.g. the sparse-training mask
    features: dict[str, Any] = field(default_factory=dict)


_FIELDS = tuple(f.name for f in fields(Checkpoint))


class PlainFormatError(ValueError):
    """Plain content that ``from_plain`` refuses to rebuild (a tag it does not trust)."""


# -- the file ------------------------------------------------------------------------------------


def save(run_dir: Path, checkpoint: Checkpoint) -> None:
    """Write ``run_dir/checkpoint.pt``; atomic, so a crash leaves the previous one whole.

    Raises TypeError, before touching the file, for a state that has no plain form.
    """
    content = {name: to_plain(getattr(checkpoint, name)) for name in _FIELDS}
    tmp = run_dir / (FILE + ".tmp")
    torch.save({"format": FORMAT, "version": VERSION, **content}, tmp)
    os.replace(tmp, run_dir / FILE)


def load(run_dir: Path) -> Checkpoint | None:
    """The checkpoint in ``run_dir``, or None when it has none.

    Raises UserError, naming the file and what to do, for a file that is damaged, holds anything
    but tensors and plain containers, or was written in another format version.
    """
    file = run_dir / FILE
    if not file.exists():
        return None
    content = _checked(file, _read(file))
    try:
        return Checkpoint(**{name: from_plain(content[name]) for name in _FIELDS})
    except PlainFormatError as err:
        raise UserError(
            f"{file} holds content that fedsim refuses to rebuild: {err}; resume it with the "
            f"fedsim that wrote it, or delete it to start the run over"
        ) from err


def _read(file: Path) -> Any:
    """The file's content, loaded with ``weights_only=True``; any failure as a UserError."""
    try:
        with open(file, "rb") as f:
            return _unpickle(file, f)
    except OSError as err:
        raise UserError(f"{file} cannot be read ({err.strerror}); check its permissions") from err


def _unpickle(file: Path, f: BinaryIO) -> Any:
    # torch.save writes a zip archive, and a truncated one lacks its central directory: checked
    # first, because torch reports it (and a plain pickle) with a traceback about its internals.
    if not zipfile.is_zipfile(f):
        raise _damaged(file, "it is not a complete zip archive")
    f.seek(0)
    try:
        return torch.load(f, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        # torch names what it refused as "GLOBAL module.name"; without one the pickle is garbled.
        if found := re.search(r"GLOBAL ([\w.]+)", str(err)):
            raise UserError(
                f"{file} holds objects other than tensors and plain containers ({found[1]}), "
                f"which fedsim refuses to load (it could run code); if an older fedsim wrote it, "
                f"resume it with that version, else delete it to start the run over"
            ) from err
        raise _damaged(file, "its pickled content is garbled") from err
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError, ValueError, ...
        raise _damaged(file, f"{type(err).__name__} while reading it") from err


def _checked(file: Path, content: Any) -> dict[str, Any]:
    """``content`` if it has this fedsim's format and version and every field."""
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise UserError(
            f"{file} is not in fedsim's checkpoint format (it has no {FORMAT!r} tag); if an "
            f"older fedsim wrote it, resume it with that version, else delete it to start the "
            f"run over"
        )
    if content.get("version") != VERSION:
        raise UserError(
            f"{file} has checkpoint format version {content.get('version')!r} but this fedsim "
            f"reads version {VERSION}; resume it with the fedsim that wrote it, or delete it to "
            f"start the run over"
        )
    missing = [name for name in _FIELDS if name not in content]
    if missing:
        raise _damaged(file, f"it lacks {', '.join(missing)}")
    model = content["model"]
    if not isinstance(content["round"], int) or not (
        isinstance(model, dict) and all(isinstance(t, Tensor) for t in model.values())
    ):
        raise _damaged(file, "its round is not a number or its model not a dict of tensors")
    return content


def _damaged(file: Path, why: str) -> UserError:
    return UserError(
        f"{file} is damaged (truncated or not a fedsim checkpoint): {why}; delete it to start "
        f"the run over, or restore it from a copy"
    )


# -- plain containers ----------------------------------------------------------------------------


def to_plain(obj: Any) -> Any:
    """``obj`` as tensors and plain containers, which ``torch.load(weights_only=True)`` reads.

    Tensors (detached, not copied), None, bool, int, float, str, lists, tuples and dicts with str
    or int keys stay as they are (a subclass of list, tuple or dict becomes the plain type);
    numpy arrays and fedsim's NamedTuples become tagged dicts; numpy scalars become Python
    numbers. Raises TypeError for anything else, e.g. a Flower RecordDict: convert it first.
    """
    for matches, convert in _TO_PLAIN:
        if matches(obj):
            return convert(obj)
    raise TypeError(
        f"a checkpoint cannot hold a {type(obj).__module__}.{type(obj).__qualname__}: only "
        f"tensors, numpy arrays, numbers, strings, None, lists, tuples, dicts and fedsim's "
        f"NamedTuples; convert it to those first"
    )


def from_plain(obj: Any) -> Any:
    """The inverse of ``to_plain``: tagged dicts become numpy arrays and NamedTuples again.

    Raises PlainFormatError for a NamedTuple tag outside fedsim's packages or one that no longer
    fits its class.
    """
    for matches, convert in _FROM_PLAIN:
        if matches(obj):
            return convert(obj)
    return obj  # tensors, numbers, strings, None: already themselves


def _is(*types: type) -> Callable[[Any], bool]:
    return lambda obj: isinstance(obj, types)


def _is_namedtuple(obj: Any) -> bool:
    return isinstance(obj, tuple) and hasattr(type(obj), "_fields")


def _tagged(tag: str) -> Callable[[Any], bool]:
    return lambda obj: isinstance(obj, dict) and tag in obj


def _exactly(*types: type) -> Callable[[Any], bool]:
    """Not subclasses: an IntEnum is an int, but pickles as its class."""
    return lambda obj: type(obj) in types


def _ndarray_to_plain(array: np.ndarray) -> dict[str, Tensor]:
    # A native-order contiguous copy: torch takes no other, and the state may change after.
    native = array.astype(array.dtype.newbyteorder("="), order="C", copy=True)
    try:
        return {NDARRAY: torch.from_numpy(native)}
    except TypeError as err:
        raise TypeError(
            f"a checkpoint cannot hold a numpy array of dtype {array.dtype}: only numbers and "
            f"bools have a tensor form"
        ) from err


def _ndarray_from_plain(tagged: dict[str, Any]) -> np.ndarray:
    tensor = tagged[NDARRAY]
    if not isinstance(tensor, Tensor):
        raise PlainFormatError(f"a numpy array is stored as a {type(tensor).__name__}")
    try:
        return tensor.detach().numpy()
    except TypeError as err:  # a dtype numpy lacks, e.g. bfloat16: not written by to_plain
        raise PlainFormatError(f"a numpy array is stored as a {tensor.dtype} tensor") from err


def _namedtuple_to_plain(obj: Any) -> dict[str, Any]:
    cls = type(obj)
    tag = f"{cls.__module__}:{cls.__qualname__}"
    # Checked now, so that a state that could not be rebuilt fails the save, not the resume.
    try:
        found = _namedtuple_class(tag)
    except PlainFormatError as err:
        raise TypeError(f"a checkpoint cannot hold this NamedTuple: {err}") from err
    if found is not cls:
        raise TypeError(f"a checkpoint cannot hold NamedTuple {tag!r}: that name is another class")
    return {NAMEDTUPLE: tag, "fields": {k: to_plain(v) for k, v in obj._asdict().items()}}


def _namedtuple_from_plain(tagged: dict[str, Any]) -> tuple[Any, ...]:
    tag, values = tagged[NAMEDTUPLE], tagged.get("fields")
    if not isinstance(tag, str) or not isinstance(values, dict):
        raise PlainFormatError(f"NamedTuple tag {tag!r} is malformed")
    cls = _namedtuple_class(tag)
    try:
        return cls(**{k: from_plain(v) for k, v in values.items()})
    except TypeError as err:
        raise PlainFormatError(
            f"NamedTuple {tag!r} has fields {cls._fields}, the checkpoint gives {tuple(values)}"  # type: ignore[attr-defined]
        ) from err


def _namedtuple_class(tag: str) -> type:
    """The NamedTuple class ``tag`` ("module:QualName") names, imported only from ``PACKAGES``."""
    module, _, qualname = tag.partition(":")
    if not any(module == p or module.startswith(p + ".") for p in PACKAGES):
        raise PlainFormatError(
            f"NamedTuple {tag!r} is outside fedsim's packages ({', '.join(PACKAGES)})"
        )
    try:
        found: Any = importlib.import_module(module)
        for name in qualname.split("."):
            found = getattr(found, name)
    except (ImportError, AttributeError) as err:
        raise PlainFormatError(f"NamedTuple {tag!r} is not defined in this fedsim") from err
    if not (isinstance(found, type) and issubclass(found, tuple) and hasattr(found, "_fields")):
        raise PlainFormatError(f"{tag!r} is not a NamedTuple")
    return found


def _dict_to_plain(d: dict[Any, Any]) -> dict[str | int, Any]:
    out: dict[str | int, Any] = {}
    for key, value in d.items():
        plain_key = to_plain(key)
        if type(plain_key) not in (str, int):
            raise TypeError(f"a checkpoint's dict keys are str or int, not {type(key).__name__}")
        if plain_key in (NDARRAY, NAMEDTUPLE):
            raise TypeError(f"a checkpoint's dict cannot use the key {key!r}: it marks a tag")
        out[plain_key] = to_plain(value)
    return out


_Converters = tuple[tuple[Callable[[Any], bool], Callable[[Any], Any]], ...]

# First match wins: a NamedTuple is a tuple, a bool an int.
_TO_PLAIN: _Converters = (
    (_is(Tensor), lambda t: t.detach()),
    (_is(np.ndarray), _ndarray_to_plain),
    (_is(np.generic), lambda x: to_plain(x.item())),
    (_is_namedtuple, _namedtuple_to_plain),
    (_is(dict), _dict_to_plain),
    (_is(list), lambda xs: [to_plain(x) for x in xs]),
    (_is(tuple), lambda xs: tuple(to_plain(x) for x in xs)),
    (_exactly(type(None), bool, int, float, str), lambda x: x),
)

_FROM_PLAIN: _Converters = (
    (_tagged(NDARRAY), _ndarray_from_plain),
    (_tagged(NAMEDTUPLE), _namedtuple_from_plain),
    (_is(dict), lambda d: {k: from_plain(v) for k, v in d.items()}),
    (_is(list), lambda xs: [from_plain(x) for x in xs]),
    (_is(tuple), lambda xs: tuple(from_plain(x) for x in xs)),
)
