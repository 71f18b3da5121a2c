"""Atomic checkpoints without pickle: tensors in a safetensors file, everything else as JSON in
its metadata (docs/benchmarks.md: loading never unpickles a file).

A state is any nesting of dicts (string or integer keys), lists, tuples, tensors, numpy arrays
and JSON scalars (optimizer and scheduler ``state_dict()``, RNG states, histories). The file is written
to a temporary name and renamed, so an interruption leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from focusvit.errors import ArgumentError, CheckpointError

from .records import check_output_path, replace_atomically, write_error

_FORMAT = "focusvit-state-1"


def _encode(value: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, Counter):  # e.g. MultiStepLR milestones: missing keys count 0
        return {"__counter__": [[_key(k), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, dict):
        return {"__dict__": [[_key(k), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, np.ndarray):  # e.g. numpy's RNG state
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalar
        return value.item()
    raise ArgumentError(
        f"cannot store a {type(value).__name__} in a checkpoint; convert it to tensors, "
        "lists, dicts or numbers first"
    )


def _key(key: Any) -> Any:
    if isinstance(key, bool | int | str):
        return key
    raise ArgumentError(
        f"checkpoint dict keys must be str or int, got {type(key).__name__}; convert the key "
        "(e.g. str(key)) before saving"
    )


def _decode(value: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        if "__dict__" in value:
            return {k: _decode(v, tensors) for k, v in value["__dict__"]}
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=value["dtype"])
        if "__counter__" in value:
            return Counter({k: _decode(v, tensors) for k, v in value["__counter__"]})
    return value


def save_state(path: str | os.PathLike, state: Any) -> Path:
    """Write ``state`` to ``path`` (a ``.safetensors`` file) atomically; returns the path.

    Tensors that share storage are stored once each as independent copies. The file is written
    to a synced temporary file that is renamed over ``path`` (and removed on any error).

    Raises:
        ConfigError: ``path`` is a symbolic link or not a regular file.
        OutputWriteError: the write failed (e.g. disk full); the previous checkpoint is kept.
    """
    path = check_output_path(path)
    tensors: dict[str, Tensor] = {}
    skeleton = _encode(state, tensors)
    tensors = {k: v.clone() if _shares_storage(v, tensors) else v for k, v in tensors.items()}
    metadata = {"format": _FORMAT, "state": json.dumps(skeleton)}
    return write_safetensors(path, tensors, metadata)


def write_safetensors(
    path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict[str, str]
) -> Path:
    """Write ``tensors`` with string ``metadata`` to the ``.safetensors`` file ``path``
    atomically (a synced temporary file renamed over it); returns the path.

    Raises:
        ConfigError: ``path`` is a symbolic link, a directory or a device file.
        OutputWriteError: the write failed (e.g. disk full); a previous file is kept.
    """
    path = check_output_path(path)
    existed = path.exists()
    try:
        replace_atomically(path, lambda tmp: _save_file(tensors, tmp, metadata))
    except OSError as error:
        kept = "the previous file is unchanged" if existed else "nothing was written"
        raise write_error(path, error, kept) from error
    return path


def _save_file(tensors: dict[str, Tensor], tmp: Path, metadata: dict[str, str]) -> None:
    """safetensors' ``save_file``; its own error type for a failed write becomes an OSError."""
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(tmp), metadata=metadata)
    except OSError:
        raise
    except Exception as error:  # SafetensorError("... IoError(Os { code: 28, ... })")
        code = re.search(r"code: (\d+)", str(error))
        raise OSError(int(code.group(1)) if code else None, str(error)) from error


def _shares_storage(tensor: Tensor, tensors: dict[str, Tensor]) -> bool:
    if tensor.numel() == 0:
        return False
    pointer = tensor.untyped_storage().data_ptr()
    return (
        sum(t.numel() > 0 and t.untyped_storage().data_ptr() == pointer for t in tensors.values())
        > 1
    )


def load_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Read a state written by :func:`save_state` (no code is ever executed).

    Raises:
        CheckpointError: the file is missing, not a safetensors file, damaged, or not a
            focusvit state (each message names the file and the fix).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises several types on a damaged header
        raise CheckpointError(
            f"cannot read checkpoint {path}: {error}; the file is damaged or not a focusvit "
            "checkpoint (.safetensors): delete it to start again"
        ) from error
    if metadata.get("format") != _FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a focusvit checkpoint (no {_FORMAT!r} "
            "metadata); point to a checkpoint written by focusvit"
        )
    return _decode(json.loads(metadata["state"]), tensors)
