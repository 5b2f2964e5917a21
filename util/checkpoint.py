"""Checkpoint I/O: atomic saves, our self-describing network files, and strict loading of both ours
and the authors' released state dicts (`module.` / `netG.` prefixes, LSP §2.1).

Our per-network file is a dict {format, network, config, meta, state_dict}: the network's frozen
dataclass config travels with its weights, so inference rebuilds every network from its file alone.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from util.errors import InputError, require_file

FORMAT = "lsp-network/1"
C = TypeVar("C")


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_network(path: str | Path, net: nn.Module, network: str, config: Any, meta: dict | None = None) -> None:
    """Write `net`'s weights with its dataclass `config` and free-form `meta` (e.g. fps, lookahead)."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    atomic_save({"format": FORMAT, "network": network, "config": dataclasses.asdict(config),
                 "meta": dict(meta or {}), "state_dict": state}, path)


def load_file(path: str | Path, what: str) -> Any:
    """torch.load on CPU with weights_only, turning a missing or unreadable file into InputError."""
    require_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise InputError(f"{what} {path}: cannot be read as a torch checkpoint ({type(err).__name__}: {err})") from err


def _strip_common_prefix(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Remove each prefix in turn when every key carries it (DataParallel's `module.`, the wrapper's `netG.`)."""
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str,
                optional_prefixes: tuple[str, ...] = ()) -> None:
    """Load `state` into `module`; any missing, unexpected or mis-shaped key is an InputError naming it.

    Keys under `optional_prefixes` may be absent from the file (e.g. APC's pre-training postnet).
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(optional_prefixes)]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            raise InputError(f"{what} {path}: {label}: {', '.join(keys[:3])}{more}")
    own.update(state)
    module.load_state_dict(own)


def _read_network_file(path: str | Path, network: str, what: str,
                       strip: tuple[str, ...]) -> tuple[dict | None, dict, dict]:
    """(config dict or None for a raw state dict, state dict, meta) of our file or a released raw one."""
    obj = load_file(path, what)
    if not isinstance(obj, dict):
        raise InputError(f"{what} {path}: expected a state dict, found {type(obj).__name__}")
    if obj.get("format") == FORMAT:
        if obj.get("network") != network:
            raise InputError(f"{what} {path}: holds a '{obj.get('network')}' network, expected '{network}'")
        return obj["config"], obj["state_dict"], obj.get("meta", {})
    return None, _raw_state(obj, path, what, strip), {}


def _raw_state(obj: Any, path: str | Path, what: str, strip: tuple[str, ...]) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise InputError(f"{what} {path}: expected a state dict, found {type(obj).__name__}")
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{what} {path}: expected a state dict of tensors")
    return _strip_common_prefix(obj, strip)


def load_state_dict_file(path: str | Path, what: str, strip: tuple[str, ...] = ("module.",)) -> dict[str, torch.Tensor]:
    """A raw state dict file (e.g. third-party weights), with wrapper prefixes common to all keys removed."""
    return _raw_state(load_file(path, what), path, what, strip)


def load_network(path: str | Path, network: str, net_cls: type[nn.Module], config_cls: type[C],
                 default_config: C, what: str, strip: tuple[str, ...] = ("module.",),
                 optional_prefixes: tuple[str, ...] = ()) -> tuple[nn.Module, C, dict]:
    """Build and load a network from our file (config inside) or a released raw state dict.

    Args:
        network: the name our files record (checked, so a file of another network is refused).
        default_config: the config used for a raw state dict, which carries none.
        strip: key prefixes removed from a raw state dict when every key has them.
    Returns:
        (network in eval mode, its config, the file's meta dict).
    """
    cfg, state, meta = _read_network_file(path, network, what, strip)
    if cfg is None:
        config = default_config
    else:
        try:
            config = config_cls(**cfg)
        except TypeError as err:
            raise InputError(f"{what} {path}: config does not fit {config_cls.__name__} ({err})") from err
    net = net_cls(config)
    try:
        load_strict(net, state, path, what, optional_prefixes)
    except InputError as err:
        if cfg is not None:
            raise
        raise InputError(f"{err} (a raw state dict carries no sizes; it was built as {config})") from None
    return net.eval(), config, meta


def init_network(net: nn.Module, path: str | Path, network: str, what: str, strip: tuple[str, ...] = ("module.",),
                 optional_prefixes: tuple[str, ...] = ()) -> None:
    """Load weights into an existing network (e.g. to fine-tune the authors' release); sizes must match."""
    import dataclasses

    cfg, state, _ = _read_network_file(path, network, what, strip)
    if cfg is not None and cfg != dataclasses.asdict(net.cfg):
        raise InputError(f"{what} {path}: network sizes {cfg} differ from the options' {dataclasses.asdict(net.cfg)}")
    load_strict(net, state, path, what, optional_prefixes)
