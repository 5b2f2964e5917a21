"""BaseModel: pix2pix's model contract, with full-state checkpoints (edm2) and name checks.

Order of calls: create_model(opt) -> setup() -> [set_input(batch) -> optimize_parameters() ->
get_current_losses() / get_current_visuals()] ... -> save_checkpoint() -> update_learning_rate().
`test()` runs forward() without gradients. A subclass lists `loss_names`, `visual_names` and
`model_names`; each name X needs `self.loss_X`, `self.X` or `self.netX`, and setup() checks the nets.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import lr_scheduler

from util import checkpoint as ckpt
from util.distributed import is_distributed, rank_device
from util.errors import InputError, MissingFileError
from util.log import git_commit

log = logging.getLogger("lsp")


def get_scheduler(optimizer: torch.optim.Optimizer, opt: argparse.Namespace, mode: str = "min") -> Any:
    """pix2pix's learning-rate schedules, stepped once per epoch (plateau: once per validation).

    linear: constant for n_epochs, then linearly to 0 over n_epochs_decay; step: x lr_gamma every
    lr_decay_iters epochs; plateau: x0.2 when the validation metric (its `mode`: lower or higher is
    better) stops improving for 5 validations; cosine: from lr down to 0 over n_epochs + n_epochs_decay,
    then 0.
    """
    if opt.lr_policy == "linear":
        def linear(epoch: int) -> float:
            return max(0.0, 1.0 - max(0, epoch + opt.epoch_count - opt.n_epochs) / float(opt.n_epochs_decay + 1))

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=linear)
    if opt.lr_policy == "step":
        return lr_scheduler.StepLR(optimizer, step_size=opt.lr_decay_iters, gamma=opt.lr_gamma)
    if opt.lr_policy == "plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.2, threshold=0.01, patience=5)
    if opt.lr_policy == "cosine":
        total = max(1, opt.n_epochs + opt.n_epochs_decay)

        def cosine(epoch: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(epoch + opt.epoch_count - 1, total) / total))

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=cosine)
    raise ValueError(f"unknown --lr_policy '{opt.lr_policy}'")


def rng_state() -> dict:
    """Every random generator's state as tensors and numbers (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain(value: Any) -> Any:
    """An option value as JSON-like data (paths as strings), for a weights_only state file."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def copied_state(net: nn.Module, device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """A copy of `net`'s state dict (parameters and buffers), detached, on `device` (default: where it is)."""
    return {k: v.detach().to(device or v.device, copy=True) for k, v in net.state_dict().items()}


class BaseModel(ABC):
    """Abstract base of the stage models (apc, audio2feature, audio2headpose, feature2face)."""

    default_dataset_mode: str | None = None

    def __init__(self, opt: argparse.Namespace) -> None:
        self.opt = opt
        self.is_train = opt.is_train
        self.device = rank_device(opt.gpu_ids)
        self.distributed = is_distributed()
        self.save_dir = Path(opt.checkpoints_dir) / opt.name
        self.loss_names: list[str] = []
        self.model_names: list[str] = []
        self.visual_names: list[str] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self.schedulers: list[Any] = []
        self.use_amp = bool(getattr(opt, "amp", False)) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_amp)
        self.ema_decay = float(getattr(opt, "ema_decay", 0.0)) if self.is_train else 0.0
        self.ema: dict[str, dict[str, torch.Tensor]] = {}  # name -> averaged state dict (see update_ema)

    @staticmethod
    def modify_commandline_options(parser: argparse.ArgumentParser, is_train: bool) -> argparse.ArgumentParser:
        """Add the model's own flags and change defaults; the base adds none."""
        return parser

    @abstractmethod
    def set_input(self, batch: dict) -> None:
        """Unpack a batch from the data loader onto the device."""

    @abstractmethod
    def forward(self) -> None:
        """Compute the outputs from the current input."""

    @abstractmethod
    def optimize_parameters(self) -> None:
        """One training step: forward, losses, backward, optimizer steps."""

    def data_spec(self) -> Any:
        """What the dataset must cut for this model (e.g. window lengths); None when nothing."""
        return None

    def network_meta(self) -> dict:
        """Facts saved with every network file (e.g. fps, lookahead) so inference needs no options."""
        return {}

    # ------------------------------------------------------------------ set-up
    def networks(self) -> dict[str, nn.Module]:
        """name -> network, unwrapped from DistributedDataParallel."""
        nets = {}
        for name in self.model_names:
            net = getattr(self, "net" + name)
            nets[name] = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
        return nets

    def setup(self) -> None:
        """Check the declared names, create schedulers, log the networks."""
        missing = [n for n in self.model_names if not isinstance(getattr(self, "net" + n, None), nn.Module)]
        if missing:
            raise AttributeError(f"{type(self).__name__} lists model_names {missing} without net<Name> modules")
        if self.is_train:
            init = getattr(self.opt, "init_weights", None)
            if init is not None and not self.opt.continue_train:
                name = self.model_names[0]
                ckpt.init_network(getattr(self, "net" + name), init, name, "--init_weights", self.init_weights_strip,
                                  self.init_weights_optional)
                log.info("net%s initialised from %s", name, init)
            self.schedulers = [get_scheduler(o, self.opt, self.best_metric[1]) for o in self.optimizers]
            if self.distributed:  # one replica per process; gradients are averaged in backward
                ids = [self.device.index] if self.device.type == "cuda" else None
                for name in self.model_names:
                    net = getattr(self, "net" + name)
                    setattr(self, "net" + name, nn.parallel.DistributedDataParallel(net, device_ids=ids))
        self.print_networks(getattr(self.opt, "verbose", False))

    def print_networks(self, verbose: bool) -> None:
        for name, net in self.networks().items():
            if verbose:
                log.info("%s", net)
            log.info("[net%s] %.3f M parameters", name, sum(p.numel() for p in net.parameters()) / 1e6)

    def train(self) -> None:
        for net in self.networks().values():
            net.train()

    def eval(self) -> None:
        for net in self.networks().values():
            net.eval()

    def test(self) -> None:
        """Forward without gradients, then compute_visuals()."""
        with torch.no_grad():
            self.forward()
            self.compute_visuals()

    def compute_visuals(self) -> None:
        """Extra visuals for display; the base computes none."""

    def current_metrics(self) -> dict[str, float]:
        """Validation metrics of the current test() pass (`best_metric` names the one `best_*` is kept by)."""
        return {k: float(v) for k, v in self.get_current_losses().items()}

    best_metric: tuple[str, str] = ("", "min")  # (validation metric, 'min' or 'max'): what makes a model best
    init_weights_strip: tuple[str, ...] = ("module.",)  # --init_weights: prefixes of released raw state dicts
    init_weights_optional: tuple[str, ...] = ()  # --init_weights: weights a released file may lack

    def validate(self, loader: torch.utils.data.DataLoader) -> dict[str, float]:
        """Mean of current_metrics() over a loader, in eval mode with the averaged weights (--ema_decay);
        back to train mode and the training weights after."""
        self.eval()
        sums: dict[str, float] = {}
        n = 0
        with self.averaged_weights():
            for batch in loader:
                self.set_input(batch)
                self.test()
                for k, v in self.current_metrics().items():
                    sums[k] = sums.get(k, 0.0) + v
                n += 1
        self.train()
        return {k: v / max(n, 1) for k, v in sums.items()}

    # ------------------------------------------------------------------ reporting
    def get_current_losses(self) -> dict[str, float]:
        out = {}
        for name in self.loss_names:
            if not hasattr(self, "loss_" + name):
                raise AttributeError(f"{type(self).__name__} lists loss '{name}' but never sets self.loss_{name}")
            value = getattr(self, "loss_" + name)
            out[name] = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
        return out

    def get_current_visuals(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.visual_names:
            if not hasattr(self, name):
                raise AttributeError(f"{type(self).__name__} lists visual '{name}' but never sets self.{name}")
            out[name] = getattr(self, name)
        return out

    def update_learning_rate(self, metric: float | None = None) -> float:
        """End of an epoch: step every epoch schedule; the plateau schedule steps only with a validation
        `metric` (the value of `best_metric`). Returns the learning rate now in use."""
        for scheduler in self.schedulers:
            if not isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
                scheduler.step()
            elif metric is not None:
                scheduler.step(metric)
        return self.optimizers[0].param_groups[0]["lr"] if self.optimizers else 0.0

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward through the AMP scaler, clip to --grad_clip, step; call scaler.update() after all steps."""
        self.scaler.scale(loss).backward()
        clip = float(getattr(self.opt, "grad_clip", 0.0))
        if clip > 0:
            self.scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip)
        self.scaler.step(optimizer)

    def compute_loss(self) -> torch.Tensor:
        """The training loss of the current forward pass (models with one optimizer define it)."""
        raise NotImplementedError(f"{type(self).__name__} defines no compute_loss()")

    def step_single_optimizer(self) -> None:
        """optimize_parameters() of a model with one network and one optimizer: forward, loss, step."""
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=self.use_amp):
            self.forward()
        self.backward_step(self.compute_loss(), optimizer)
        self.scaler.update()

    # ------------------------------------------------------------------ weight averaging
    def ema_networks(self) -> dict[str, nn.Module]:
        """The networks whose weights --ema_decay averages: the first one, which inference uses."""
        nets = self.networks()
        return {name: nets[name] for name in self.model_names[:1]}

    @torch.no_grad()
    def update_ema(self) -> None:
        """After an optimiser step: average = decay * average + (1 - decay) * weights (floating-point
        parameters and buffers; other buffers are copied). The first call starts the average at the weights."""
        if not self.ema_decay:
            return
        for name, net in self.ema_networks().items():
            current = net.state_dict()
            avg = self.ema.get(name)
            if avg is None:
                self.ema[name] = copied_state(net)
                continue
            for k, v in current.items():
                if v.dtype.is_floating_point:
                    avg[k].lerp_(v.detach(), 1.0 - self.ema_decay)
                else:
                    avg[k].copy_(v)

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Inside: the networks hold their averaged weights (validation and saved network files use these);
        the training weights are back on exit. Without --ema_decay (or before the first step) a no-op."""
        nets = {name: net for name, net in self.ema_networks().items() if name in self.ema}
        training = {name: copied_state(net) for name, net in nets.items()}
        for name, net in nets.items():
            net.load_state_dict(self.ema[name])
        try:
            yield
        finally:
            for name, net in nets.items():
                net.load_state_dict(training[name])

    @staticmethod
    def set_requires_grad(nets: nn.Module | list[nn.Module], requires_grad: bool) -> None:
        for net in nets if isinstance(nets, list) else [nets]:
            for p in net.parameters():
                p.requires_grad_(requires_grad)

    # ------------------------------------------------------------------ checkpoints
    def save_networks(self, label: str) -> None:
        """Write `<label>_net_<Name>.pth` per network, with its config and network_meta() (no state)."""
        for name, net in self.networks().items():
            ckpt.save_network(ckpt.network_path(self.save_dir, label, name), net, name, net.cfg, self.network_meta())

    def load_networks(self, label: str) -> None:
        """Strictly load `<label>_net_<Name>.pth` into every network."""
        for name, net in self.networks().items():
            path = ckpt.network_path(self.save_dir, label, name)
            if not path.is_file():
                raise MissingFileError(f"no checkpoint {path} (--name {self.opt.name}, --epoch {label})")
            obj = ckpt.load_file(path, f"{name} checkpoint")
            if not isinstance(obj, dict) or obj.get("network") != name:
                found = obj.get("network") if isinstance(obj, dict) else type(obj).__name__
                raise InputError(f"{name} checkpoint {path}: holds a '{found}' network, expected '{name}'")
            if obj.get("config") != dataclasses.asdict(net.cfg):
                raise InputError(f"{name} checkpoint {path}: network sizes {obj.get('config')} differ from the "
                                 f"options' {dataclasses.asdict(net.cfg)}")
            ckpt.load_strict(net, obj["state_dict"], path, f"{name} checkpoint")

    def save_checkpoint(self, label: str, epoch: int, total_iters: int, extra: dict | None = None) -> None:
        """Checkpoint `label` as one unit: the weights plus `<label>_state.pth` (optimizers, schedulers,
        AMP scaler, counters, RNG, options, commit)."""
        if self._commit is None:  # asked once: a subprocess inside every save widened its kill window
            self._commit = git_commit()
        meta = {**self.network_meta(), "iteration": total_iters}
        networks = {name: (net, net.cfg, meta) for name, net in self.networks().items()}
        state = {"epoch": epoch, "total_iters": total_iters, "model": self.opt.model,
                 "optimizers": [o.state_dict() for o in self.optimizers],
                 "schedulers": [s.state_dict() for s in self.schedulers],
                 "scaler": self.scaler.state_dict(), "rng": rng_state(), "opt": plain(vars(self.opt)),
                 "git_commit": self._commit, "extra": plain(extra or {})}
        if self.ema:  # the network files get the averaged weights; the training ones go in the state, to resume
            nets = self.ema_networks()
            state["training_weights"] = {name: copied_state(nets[name], "cpu") for name in self.ema}
        with self.averaged_weights():
            ckpt.save_checkpoint(self.save_dir, label, networks, state)

    _commit: str | None = None

    def load_checkpoint(self, label: str) -> dict:
        """Restore everything `save_checkpoint` wrote; returns the state dict (epoch, total_iters, extra)."""
        path = ckpt.state_path(self.save_dir, label)
        if not path.is_file() and not path.with_name(path.name + ckpt.PENDING).is_file():
            raise MissingFileError(f"--continue_train: nothing to continue, {path} does not exist "
                                   f"(train without --continue_train first, or check --name / --epoch)")
        state = ckpt.load_checkpoint_state(self.save_dir, label, "training state")
        if state.get("model") != self.opt.model:
            raise InputError(f"{path}: a checkpoint of --model {state.get('model')}, not {self.opt.model}")
        self.load_networks(label)
        nets = self.ema_networks()
        for name, weights in state.get("training_weights", {}).items():  # saved with --ema_decay
            if name in nets:
                self.ema[name] = copied_state(nets[name])
                ckpt.load_strict(nets[name], weights, path, f"{name} training weights")
        if not self.ema_decay:
            self.ema = {}  # resumed without averaging: train on from the training weights
        try:
            for opt_obj, sd in zip(self.optimizers, state["optimizers"], strict=True):
                opt_obj.load_state_dict(sd)
            for sched, sd in zip(self.schedulers, state["schedulers"], strict=True):
                sched.load_state_dict(sd)
            self.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise InputError(f"{path}: the saved optimizer/scheduler/RNG state does not fit this run "
                             f"({type(err).__name__}: {err}); were the options changed?") from err
        return state
