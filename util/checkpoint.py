"""Checkpoint I/O: our self-describing network files, training checkpoints saved as one atomic unit,
and strict loading of both ours and the authors' released state dicts (`module.` / `netG.`, LSP §2.1).

A network file is a dict {format, network, config, meta, state_dict}: the network's frozen dataclass
config travels with its weights, so inference rebuilds every network from its file alone. A training
checkpoint `<label>` is pix2pix's `<label>_net_<Name>.pth` per network plus `<label>_state.pth`
(optimizers, schedulers, counters, RNG: plain tensors, numbers and strings, so every file loads with
`weights_only=True`). All of them carry one stamp, and they are committed together (see
`save_checkpoint`), so a kill at any moment leaves either the old checkpoint or the new one.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from util.errors import InputError, require_file
from util.io import atomic_write

FORMAT = "lsp-network/1"
PENDING = ".new"  # suffix of a checkpoint's files until the whole checkpoint is written
MAX_REASON = 200  # characters of a library's own error message quoted in ours
C = TypeVar("C")
_NETWORK_FILE = re.compile(r"^(?P<label>.+)_net_(?P<network>[A-Za-z0-9]+)\.pth$")


def network_path(folder: str | Path, label: str, network: str) -> Path:
    """`<folder>/<label>_net_<network>.pth` (pix2pix's name)."""
    return Path(folder) / f"{label}_net_{network}.pth"


def state_path(folder: str | Path, label: str) -> Path:
    """`<folder>/<label>_state.pth`: the training state saved with the networks of `label`."""
    return Path(folder) / f"{label}_state.pth"


def split_network_path(path: str | Path) -> tuple[str, str] | None:
    """(label, network) of a `<label>_net_<network>.pth` path, or None for any other name."""
    m = _NETWORK_FILE.match(Path(path).name)
    return (m["label"], m["network"]) if m else None


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save, atomically (util.io.atomic_write)."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def save_network(path: str | Path, net: nn.Module, network: str, config: Any, meta: dict | None = None) -> None:
    """Write `net`'s weights with its dataclass `config` and free-form `meta` (e.g. fps, lookahead)."""
    atomic_save(_network_record(net, network, config, meta), path)


def _network_record(net: nn.Module, network: str, config: Any, meta: dict | None) -> dict:
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}  # a copy: the live network is not moved
    return {"format": FORMAT, "network": network, "config": dataclasses.asdict(config), "meta": dict(meta or {}),
            "state_dict": state}


def save_checkpoint(folder: str | Path, label: str, networks: dict[str, tuple[nn.Module, Any, dict]],
                    state: dict) -> None:
    """Write checkpoint `label`: every network file and the state file, as one unit.

    Each file is first written completely under its name + PENDING; the state file is written last,
    so its pending file existing means the whole checkpoint is on disk (the commit point). Then the
    pending files are renamed over the old ones. `recover_checkpoint` finishes an interrupted rename
    phase, or drops a checkpoint whose state file was never written, so a kill at any moment resumes
    from either the previous checkpoint or this one, never a mix.

    Args:
        networks: name -> (network, its dataclass config, meta saved with it).
        state: the training state (plain tensors, numbers, strings, lists and dicts).
    """
    folder = Path(folder)
    recover_checkpoint(folder, label)
    stamp = secrets.token_hex(8)
    staged = []
    for name, (net, config, meta) in networks.items():
        final = network_path(folder, label, name)
        atomic_save(_network_record(net, name, config, {**meta, "stamp": stamp}), _pending(final))
        staged.append(final)
    final = state_path(folder, label)
    atomic_save({**state, "stamp": stamp, "networks": sorted(networks)}, _pending(final))
    staged.append(final)
    for path in staged:
        os.replace(_pending(path), path)


def _pending(path: Path) -> Path:
    return path.with_name(path.name + PENDING)


def recover_checkpoint(folder: str | Path, label: str) -> None:
    """Complete or drop a `save_checkpoint` that was interrupted (see there)."""
    folder = Path(folder)
    nets = sorted(folder.glob(f"{glob_escape(label)}_net_*.pth{PENDING}"))
    state = _pending(state_path(folder, label))
    if state.is_file():  # everything was written: finish the renames
        for path in nets:
            os.replace(path, path.with_name(path.name[: -len(PENDING)]))
        os.replace(state, state_path(folder, label))
    else:  # the save stopped before its commit point: the previous checkpoint stands
        for path in nets:
            path.unlink()


def glob_escape(text: str) -> str:
    """`text` with glob's special characters made literal."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def load_checkpoint_state(folder: str | Path, label: str, what: str) -> dict:
    """The state file of checkpoint `label`, after checking that every network file is of the same save."""
    folder = Path(folder)
    recover_checkpoint(folder, label)
    path = state_path(folder, label)
    state = load_file(path, what)
    if not isinstance(state, dict) or "stamp" not in state or "total_iters" not in state:
        raise InputError(f"{what} {path}: not a training state file of this project")
    for name in state.get("networks", []):
        net_file = network_path(folder, label, name)
        meta = load_file(net_file, f"{name} checkpoint", mmap=True).get("meta", {})
        if meta.get("stamp") != state["stamp"]:
            raise InputError(f"checkpoint '{label}' in {folder} is mixed: {net_file.name} was not saved with "
                             f"{path.name} (iteration {state['total_iters']}); restore both from one save, or "
                             "resume from another --epoch")
    return state


def load_file(path: str | Path, what: str, mmap: bool = False) -> Any:
    """torch.load on CPU with weights_only (no code runs from a file), turning a missing, unreadable or
    pickled-object file into InputError; `mmap` maps tensors instead of reading them (to read metadata)."""
    require_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises many types for corrupt, truncated, foreign or pickled-code files
        reason = " ".join(str(err).split())
        reason = reason if len(reason) <= MAX_REASON else reason[:MAX_REASON] + " ..."
        raise InputError(f"{what} {path}: cannot be read as a checkpoint of this project ({type(err).__name__}: "
                         f"{reason})") from err


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
    try:
        net = net_cls(config)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as err:
        raise InputError(f"{what} {path}: its network config is impossible ({err}): {config}") from err
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
    cfg, state, _ = _read_network_file(path, network, what, strip)
    if cfg is not None and cfg != dataclasses.asdict(net.cfg):
        raise InputError(f"{what} {path}: network sizes {cfg} differ from the options' {dataclasses.asdict(net.cfg)}")
    load_strict(net, state, path, what, optional_prefixes)
