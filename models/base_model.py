"""BaseModel: pix2pix's model contract, with full-state checkpoints (edm2) and name checks.

Order of calls: create_model(opt) -> setup() -> [set_input(batch) -> optimize_parameters() ->
get_current_losses() / get_current_visuals()] ... -> save_checkpoint() -> update_learning_rate().
`test()` runs forward() without gradients. A subclass lists `loss_names`, `visual_names` and
`model_names`; each name X needs `self.loss_X`, `self.X` or `self.netX`, and setup() checks the nets.
"""

from __future__ import annotations

import argparse
import logging
import random
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import lr_scheduler

from util.checkpoint import atomic_save, init_network, load_file, load_strict, save_network
from util.distributed import is_distributed, world_info
from util.errors import InputError, MissingFileError

log = logging.getLogger("lsp")


def get_scheduler(optimizer: torch.optim.Optimizer, opt: argparse.Namespace) -> Any:
    """pix2pix's learning-rate schedules, stepped once per epoch.

    linear: constant for n_epochs, then linearly to 0 over n_epochs_decay; step: x lr_gamma every
    lr_decay_iters epochs; plateau: x0.2 when the validation metric stalls; cosine: to 0 over n_epochs.
    """
    if opt.lr_policy == "linear":
        def rule(epoch: int) -> float:
            return 1.0 - max(0, epoch + opt.epoch_count - opt.n_epochs) / float(opt.n_epochs_decay + 1)

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=rule)
    if opt.lr_policy == "step":
        return lr_scheduler.StepLR(optimizer, step_size=opt.lr_decay_iters, gamma=opt.lr_gamma)
    if opt.lr_policy == "plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.2, threshold=0.01, patience=5)
    if opt.lr_policy == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=opt.n_epochs, eta_min=0)
    raise ValueError(f"unknown --lr_policy '{opt.lr_policy}'")


def git_commit() -> str:
    """The project's current git commit, or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def rng_state() -> dict:
    """Every random generator's state, for exact resumption."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class BaseModel(ABC):
    """Abstract base of the stage models (apc, audio2feature, audio2headpose, feature2face)."""

    default_dataset_mode: str | None = None

    def __init__(self, opt: argparse.Namespace) -> None:
        self.opt = opt
        self.is_train = opt.is_train
        local = world_info()[2]
        gpus = opt.gpu_ids
        self.device = torch.device(f"cuda:{gpus[local % len(gpus)]}") if gpus else torch.device("cpu")
        self.distributed = is_distributed()
        self.save_dir = Path(opt.checkpoints_dir) / opt.name
        self.loss_names: list[str] = []
        self.model_names: list[str] = []
        self.visual_names: list[str] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self.schedulers: list[Any] = []
        self.metric = 0.0  # the plateau policy's validation metric
        self.use_amp = bool(getattr(opt, "amp", False)) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_amp)

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
                init_network(getattr(self, "net" + name), init, name, "--init_weights", self.init_weights_strip,
                             self.init_weights_optional)
                log.info("net%s initialised from %s", name, init)
            self.schedulers = [get_scheduler(o, self.opt) for o in self.optimizers]
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
        """Validation metrics of the current test() pass; the first is the one `best` is kept by."""
        return {k: float(v) for k, v in self.get_current_losses().items()}

    best_metric_mode = "min"  # whether a lower or higher first metric is better
    init_weights_strip: tuple[str, ...] = ("module.",)  # --init_weights: prefixes of released raw state dicts
    init_weights_optional: tuple[str, ...] = ()  # --init_weights: weights a released file may lack

    def validate(self, loader: torch.utils.data.DataLoader) -> dict[str, float]:
        """Mean of current_metrics() over a loader, in eval mode; back to train mode after."""
        self.eval()
        sums: dict[str, float] = {}
        n = 0
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

    def update_learning_rate(self) -> float:
        """Step every scheduler once (end of an epoch); returns the new learning rate."""
        for scheduler in self.schedulers:
            if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
                scheduler.step(self.metric)
            else:
                scheduler.step()
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

    @staticmethod
    def set_requires_grad(nets: nn.Module | list[nn.Module], requires_grad: bool) -> None:
        for net in nets if isinstance(nets, list) else [nets]:
            for p in net.parameters():
                p.requires_grad_(requires_grad)

    # ------------------------------------------------------------------ checkpoints
    def net_path(self, label: str, name: str) -> Path:
        return self.save_dir / f"{label}_net_{name}.pth"

    def save_networks(self, label: str) -> None:
        """Write `<label>_net_<Name>.pth` per network, with its config and network_meta()."""
        for name, net in self.networks().items():
            save_network(self.net_path(label, name), net, name, net.cfg, self.network_meta())

    def load_networks(self, label: str) -> None:
        """Strictly load `<label>_net_<Name>.pth` into every network."""
        for name, net in self.networks().items():
            path = self.net_path(label, name)
            if not path.is_file():
                raise MissingFileError(f"no checkpoint {path} (--name {self.opt.name}, --epoch {label})")
            obj = load_file(path, f"{name} checkpoint")
            if obj.get("network") != name:
                raise InputError(f"{name} checkpoint {path}: holds a '{obj.get('network')}' network, expected '{name}'")
            if obj.get("config") != _asdict(net.cfg):
                raise InputError(f"{name} checkpoint {path}: network sizes {obj.get('config')} differ from the "
                                 f"options' {_asdict(net.cfg)}")
            load_strict(net, obj["state_dict"], path, f"{name} checkpoint")

    def save_checkpoint(self, label: str, epoch: int, total_iters: int, extra: dict | None = None) -> None:
        """Weights plus `<label>_state.pth`: optimizers, schedulers, AMP scaler, counters, RNG, opt, commit."""
        self.save_networks(label)
        state = {
            "epoch": epoch, "total_iters": total_iters, "model": self.opt.model,
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "scaler": self.scaler.state_dict(), "rng": rng_state(),
            "opt": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.opt).items()},
            "git_commit": git_commit(), "extra": dict(extra or {}),
        }
        atomic_save(state, self.save_dir / f"{label}_state.pth")

    def load_checkpoint(self, label: str) -> dict:
        """Restore everything `save_checkpoint` wrote; returns the state dict (epoch, total_iters, extra)."""
        path = self.save_dir / f"{label}_state.pth"
        if not path.is_file():
            raise MissingFileError(f"--continue_train: nothing to continue, {path} does not exist "
                                   f"(train without --continue_train first, or check --name / --epoch)")
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("model") != self.opt.model:
            raise InputError(f"{path}: a checkpoint of --model {state.get('model')}, not {self.opt.model}")
        self.load_networks(label)
        for opt_obj, sd in zip(self.optimizers, state["optimizers"]):
            opt_obj.load_state_dict(sd)
        for sched, sd in zip(self.schedulers, state["schedulers"]):
            sched.load_state_dict(sd)
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        return state


def _asdict(cfg: Any) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)
