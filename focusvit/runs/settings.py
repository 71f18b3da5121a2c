"""The settings record: what a result depends on, and the one check that refuses to mix
results of different settings (episode files, run folders, checkpoints, pretraining runs)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from focusvit.errors import SettingsMismatchError


def to_plain(value: Any) -> Any:
    """JSON-comparable form of a settings value: dataclasses become dicts (with their class
    name under ``"type"``), tuples lists, OmegaConf containers plain containers, numpy
    scalars Python numbers."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        plain = {"type": type(value).__name__}
        plain.update({f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)})
        return plain
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if hasattr(value, "_content"):  # an OmegaConf container
        from omegaconf import OmegaConf

        return to_plain(OmegaConf.to_container(value, resolve=True))
    if isinstance(value, np.generic):  # numpy scalars (np.int64(5)) are the plain 5
        return to_plain(value.item())
    if isinstance(value, float) and value.is_integer():
        return value  # 1.0 and 1 compare equal in JSON round trips either way
    return value


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (leaves are plain values or lists)."""
    node = to_plain(node)
    if isinstance(node, dict) and node:
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def fingerprint(settings: Any) -> str:
    """A short stable hash of ``settings`` (for file names and quick comparisons)."""
    text = json.dumps(to_plain(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def changed_settings(
    stored: Mapping[str, Any], current: Mapping[str, Any], ignore: Iterable[str] = ()
) -> list[str]:
    """The flattened keys whose values differ (keys under an ``ignore`` prefix excepted)."""
    skip = tuple(ignore)
    old, new = flatten(stored), flatten(current)

    def kept(key: str) -> bool:
        return not any(key == k or key.startswith(k + ".") for k in skip)

    return sorted(k for k in set(old) | set(new) if kept(k) and old.get(k) != new.get(k))


def check_settings(
    stored: Mapping[str, Any],
    current: Mapping[str, Any],
    where: str,
    ignore: Iterable[str] = (),
    fix: str = "write to another output, or delete it to start again",
) -> None:
    """Refuse to resume ``where`` when any setting differs; the message names each one.

    Args:
        stored: the settings recorded when ``where`` was first written.
        current: this run's settings.
        where: what holds the stored settings (a path), for the message.
        ignore: keys (or key prefixes, dotted) that may change on resume (e.g. the episode count).
        fix: how to get going again.

    Raises:
        SettingsMismatchError: naming up to 8 changed settings with their old and new values.
    """
    changed = changed_settings(stored, current, ignore)
    if not changed:
        return
    old, new = flatten(stored), flatten(current)

    def shown(values: dict[str, Any], key: str) -> str:
        return repr(values[key]) if key in values else "(unset)"

    details = "; ".join(f"{key}: {shown(old, key)} -> {shown(new, key)}" for key in changed[:8])
    more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
    raise SettingsMismatchError(
        f"{where} holds results of other settings ({details}{more}); results are never mixed "
        f"or overwritten: {fix}"
    )


_WEIGHTS_CACHE: dict[int, tuple[tuple, str]] = {}


def weights_fingerprint(module) -> str:
    """A hash of every parameter and buffer of ``module`` (a ``torch.nn.Module``), cached until
    one of them changes (in place or replaced), so repeated runs hash a large model once."""
    tensors = list(module.state_dict(keep_vars=True).items())
    versions = tuple((name, t.data_ptr(), t._version) for name, t in tensors)
    cached = _WEIGHTS_CACHE.get(id(module))
    if cached is not None and cached[0] == versions:
        return cached[1]
    digest = hashlib.sha256()
    for name, tensor in tensors:
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        )
    value = digest.hexdigest()[:16]
    _WEIGHTS_CACHE[id(module)] = (versions, value)
    return value
