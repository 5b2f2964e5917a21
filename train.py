"""Train any stage with one loop (pix2pix's):

    python train.py --model apc            --dataroot <folder(s) of speech> --name apc
    python train.py --model audio2feature  --dataroot data/<id> --name <id>_audio2feature
    python train.py --model audio2headpose --dataroot data/<id> --name <id>_audio2headpose
    python train.py --model feature2face   --dataroot data/<id> --name <id>_feature2face
    torchrun --nproc_per_node 2 train.py ...   # the same flags on several GPUs / nodes (DDP)

Rerunning with --continue_train resumes exactly (weights, optimizers, schedulers, counters, RNG, the
position in the epoch). At the end, config/<id>.yaml is pointed at the trained networks.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import sys
import time
from pathlib import Path

from util.errors import InputError

log = logging.getLogger("lsp")


EXIT_TRAINING_FAILED = 3


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a loss became NaN); the message names the iteration and checkpoint."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch once."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def identity_config(opt: argparse.Namespace) -> Path | None:
    """config/<id>.yaml of the identity trained on (id = the --dataroot folder's name), when a stage of an
    identity is trained and the file exists; its structure is checked before training starts."""
    from datasets.identity import STAGES
    from util.io import read_yaml

    if opt.model not in STAGES or opt.model == "apc" or not opt.dataroot:
        return None
    path = Path(opt.config_dir) / f"{Path(opt.dataroot).name}.yaml"
    if not path.is_file():
        return None
    if not os.access(path, os.W_OK):
        raise InputError(f"config file {path}: not writable; training points it at the trained network at the end, "
                         "so make it writable (or pass another --config_dir) before training")
    params = read_yaml(path).get("model_params", {})
    if not isinstance(params, dict) or not isinstance(params.get(STAGES[opt.model].section, {}), dict):
        raise InputError(f"config file {path}: model_params.{STAGES[opt.model].section} must be a mapping; fix it "
                         "before training, which points it at the trained network at the end")
    return path


def update_identity_config(opt: argparse.Namespace, label: str, config: Path | None, meta: dict) -> bool:
    """Point config/<id>.yaml at this run's network, and record the lookahead it was trained with (the
    runtime refuses a config that says otherwise); True if the config changed."""
    from datasets.identity import STAGES, project_path, set_config_value
    from util.checkpoint import network_path

    stage = STAGES[opt.model]
    path = network_path(Path(opt.checkpoints_dir) / opt.name, label, stage.network)
    values = {"ckp_path": project_path(path), **{k: meta[k] for k in ("frame_future",) if k in meta}}
    if config is None:
        log.info("no config/<id>.yaml to update: set model_params.%s to %s", stage.section, values)
        return False
    changed = False
    for key, value in values.items():
        if set_config_value(config.parent, config.stem, ("model_params", stage.section, key), value):
            log.info("%s: model_params.%s.%s = %s", config, stage.section, key, value)
            changed = True
    return changed


def point_identity_at_run(opt: argparse.Namespace, best: float | None, meta: dict, retrained: bool = True) -> None:
    """The end of a run, also for a finished run that is reused: point config/<id>.yaml at its network
    (--config_checkpoint: the best validated one or the latest) and, for audio2headpose, calibrate the head
    motion of that network (when it was `retrained`, when the config pointed at another one, or when it
    holds no calibration yet)."""
    config = identity_config(opt)
    if config is None and not identity_stage(opt):
        return
    label = "best" if best is not None and opt.config_checkpoint == "best" else "latest"
    changed = update_identity_config(opt, label, config, meta)
    if config is None or getattr(opt, "motion_calibration", "off") != "on":
        return
    from models.runtime.motion import calibrate_identity, is_calibrated

    if not (retrained or changed or not is_calibrated(config)):
        return
    try:
        calibrate_identity(config.stem, config.parent, speech=opt.motion_speech)
    except InputError as err:  # the network is trained and saved; only the calibration waits
        log.warning("head motion not calibrated: %s; once that is fixed: python scripts/calibrate_motion.py --id %s",
                    err, config.stem)


def main(opt: argparse.Namespace) -> dict:
    """Train `opt.model`; returns {'epoch', 'total_iters', 'best', 'model'}. Raises InputError / TrainingError.
    The run's log.txt gets this run's lines only, also when one process trains several (the quickstart)."""
    from util.log import close_run_log

    try:
        return _train(opt)
    finally:
        close_run_log(Path(opt.checkpoints_dir) / opt.name)


def _train(opt: argparse.Namespace) -> dict:
    import torch

    from datasets import create_dataset, create_loader
    from models import create_model
    from util.distributed import barrier, cleanup, init_distributed, rank_device
    from util.log import get_logger
    from util.visualizer import Visualizer

    rank, world = init_distributed(rank_device(opt.gpu_ids))
    save_dir = Path(opt.checkpoints_dir) / opt.name
    get_logger(save_dir if rank == 0 else None, logging.INFO if rank == 0 else logging.WARNING)
    identity_config(opt)  # checked before training, not after it: writable, with the stage's section a mapping
    seed_everything(opt.seed + rank)
    model = create_model(opt)
    spec = model.data_spec()
    train_set = create_dataset(opt, "train", spec)
    val_set = create_dataset(opt, "val", spec)  # every rank validates: DDP forwards are collective
    model.setup()
    epoch, total_iters, epoch_iter, best = opt.epoch_count, 0, 0, None
    if opt.continue_train:
        state = model.load_checkpoint(opt.epoch)
        epoch, total_iters = state["epoch"], state["total_iters"]
        epoch_iter, best = state["extra"].get("epoch_iter", 0), state["extra"].get("best")
        log.info("resuming %s at epoch %d, iteration %d", opt.name, epoch, total_iters)
    last_epoch = 1 if opt.debug else opt.n_epochs + opt.n_epochs_decay
    visualizer = Visualizer(opt, rank == 0)
    every = 1 if opt.debug else None
    last_saved = "none yet"
    batches = math.ceil(math.ceil(len(train_set) / world) / opt.batch_size)
    log.info("%s: %d training samples, %d batches per epoch, epochs %d..%d", opt.model, len(train_set), batches,
             epoch, last_epoch)

    def save(label: str, at_epoch: int, at_iter: int) -> str:
        if rank == 0:
            model.save_checkpoint(label, at_epoch, total_iters, {"epoch_iter": at_iter, "best": best})
        return f"{save_dir}/{label}_* (iteration {total_iters})"

    stop = False
    try:
        while epoch <= last_epoch and not stop:
            loader = create_loader(train_set, opt, True, epoch, epoch_iter, rank, world)
            t_data = time.time()
            bar = _progress(loader, epoch, epoch_iter, batches, rank)
            for batch in bar:
                t_start = time.time()
                model.set_input(batch)
                model.optimize_parameters()
                model.update_ema()
                total_iters, epoch_iter = total_iters + 1, epoch_iter + 1
                losses = model.get_current_losses()
                bad = [k for k, v in losses.items() if not math.isfinite(v)]
                if bad:
                    raise TrainingError(f"loss {bad[0]} became {losses[bad[0]]} at iteration {total_iters} (epoch "
                                        f"{epoch}); last good checkpoint: {last_saved}. Lower --lr or check the data")
                if total_iters % (every or opt.print_freq) == 0:
                    visualizer.print_current_losses(epoch, epoch_iter, total_iters, losses, time.time() - t_start,
                                                    t_start - t_data)
                if total_iters % (every or opt.display_freq) == 0:
                    with torch.no_grad():
                        model.compute_visuals()
                    visualizer.display_current_results(model.get_current_visuals(), epoch, total_iters)
                if total_iters % opt.save_latest_freq == 0:
                    last_saved = save("latest", epoch, epoch_iter)
                    if opt.save_by_iter:
                        save(f"iter_{total_iters}", epoch, epoch_iter)
                if opt.max_iters and total_iters >= opt.max_iters:
                    stop = True
                    break
                t_data = time.time()
            if stop and epoch_iter < batches:
                last_saved = save("latest", epoch, epoch_iter)
                break
            epoch_iter, metric = 0, None
            if (epoch % opt.val_freq == 0 or epoch == last_epoch) and len(val_set):
                best, metric = _validate(model, val_set, opt, epoch, total_iters, best, visualizer, rank == 0)
            lr = model.update_learning_rate(metric)
            log.info("end of epoch %d / %d, learning rate %.7f", epoch, last_epoch, lr)
            barrier()
            epoch += 1
            last_saved = save("latest", epoch, 0)
            if (epoch - 1) % opt.save_epoch_freq == 0:
                save(str(epoch - 1), epoch, 0)
    finally:
        visualizer.close()
    if rank == 0:
        point_identity_at_run(opt, best, model.network_meta())
    cleanup()
    return {"epoch": epoch, "total_iters": total_iters, "best": best, "model": model}


def _progress(loader, epoch: int, start: int, total: int, rank: int):  # noqa: ANN001
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch}", initial=start, total=total, unit="batch", disable=rank != 0,
                leave=False)


def identity_stage(opt: argparse.Namespace) -> bool:
    """Whether `opt.model` is a stage trained on an identity (its config points at the result)."""
    from datasets.identity import STAGES

    return opt.model in STAGES and opt.model != "apc"


def _validate(model, val_set, opt: argparse.Namespace, epoch: int, total_iters: int,  # noqa: ANN001
              best: dict | None, visualizer, main_rank: bool) -> tuple[dict | None, float]:  # noqa: ANN001
    """Metrics on the held-out split; keeps `best_*` checkpoints by the model's `best_metric`. Returns the
    best record and this validation's value of that metric."""
    from datasets import create_loader

    metrics = model.validate(create_loader(val_set, opt, False))
    visualizer.log_scalars("val", metrics, epoch, total_iters)
    log.info("validation epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    key, mode = model.best_metric
    if key not in metrics:
        raise TrainingError(f"{type(model).__name__}.best_metric names '{key}', which validation does not report "
                            f"({', '.join(metrics)})")
    value = metrics[key]
    better = best is None or (value < best["value"] if mode == "min" else value > best["value"])
    if better:
        best = {"metric": key, "value": value, "epoch": epoch}
        if main_rank:
            model.save_checkpoint("best", epoch + 1, total_iters, {"epoch_iter": 0, "best": best})
            log.info("new best %s %.4f: saved best_* checkpoints", key, value)
    return best, value


def cli(args: list[str] | None = None) -> int:
    """Parse, train; bad input is one line and exit 2, a failed training exit 3 (util.errors.run_cli)."""
    from options.train_options import TrainOptions
    from util.errors import run_cli
    from util.log import get_logger

    get_logger()
    opt = TrainOptions().parse(args)
    if opt.dry_run:
        return 0

    def work() -> None:
        main(opt)

    return run_cli("train.py", work, {TrainingError: EXIT_TRAINING_FAILED})


if __name__ == "__main__":
    sys.exit(cli())
