"""Training logs and visuals: console, loss_log.txt (pix2pix's format), stats.jsonl, TensorBoard, an HTML
page of visuals, and visdom when --display_id > 0 and a server answers."""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from util.html import HTML
from util.log import warn_once

log = logging.getLogger("lsp")
PLOT_SIZE = (256, 512)  # (height, width) of curve and spectrogram visuals
VISUAL_FILE = re.compile(r"^epoch(?P<epoch>\d+)_(?P<label>.+)\.png$")  # epoch003_fake.png, epoch1000_fake.png
PLOT_COLORS = [(0, 170, 255), (255, 80, 0), (0, 200, 0), (200, 0, 200)]


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """First item of a (B, C, H, W) or (C, H, W) tensor in [-1, 1] -> (H, W, 3) uint8 RGB."""
    t = t.detach().float().cpu()
    t = t[0] if t.ndim == 4 else t
    t = t.repeat(3, 1, 1) if t.shape[0] == 1 else t[:3]
    return ((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def image_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) in [-1, 1], the format of visuals."""
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1


def curves_image(series: dict[str, np.ndarray], title: str = "") -> torch.Tensor:
    """Line plot of 1-D series sharing one y range, as a visual: (1, 3, H, W)."""
    h, w = PLOT_SIZE
    canvas = np.full((h, w, 3), 255, np.uint8)
    values = [np.asarray(v, np.float64).ravel() for v in series.values()]
    lo = min(v.min() for v in values)
    hi = max(v.max() for v in values)
    span = hi - lo if hi > lo else 1.0
    for k, (name, v) in enumerate(zip(series, values)):
        xs = np.linspace(8, w - 8, len(v)) if len(v) > 1 else np.array([w / 2])
        ys = h - 20 - (v - lo) / span * (h - 40)
        pts = np.stack([xs, ys], 1).round().astype(np.int32)
        color = PLOT_COLORS[k % len(PLOT_COLORS)]
        cv2.polylines(canvas, [pts], False, color, 2, cv2.LINE_AA)
        cv2.putText(canvas, name, (10 + 110 * k, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    if title:
        cv2.putText(canvas, title, (w - 200, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return image_to_tensor(canvas)


def spectrogram_image(mel: torch.Tensor) -> torch.Tensor:
    """A (T, n_mels) log-mel in about [0, 1.5] as a visual, low frequencies at the bottom: (1, 3, H, W)."""
    m = mel.detach().float().cpu().numpy().T[::-1]
    img = (np.clip(m / 1.5, 0, 1) * 255).astype(np.uint8)
    img = cv2.applyColorMap(cv2.resize(img, PLOT_SIZE[::-1], interpolation=cv2.INTER_NEAREST), cv2.COLORMAP_VIRIDIS)
    return image_to_tensor(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


class Visualizer:
    """All training output of rank 0; other ranks get a Visualizer that writes nothing."""

    def __init__(self, opt: argparse.Namespace, enabled: bool = True) -> None:
        self.opt, self.enabled = opt, enabled
        self.save_dir = Path(opt.checkpoints_dir) / opt.name
        self.web_dir = self.save_dir / "web"
        self.tb = self.vis = None
        self.last_html: int | None = None  # iteration of the last HTML page update
        if not enabled:
            return
        self.save_dir.mkdir(parents=True, exist_ok=True)
        with open(self.save_dir / "loss_log.txt", "a") as f:
            f.write(f"================ Training Loss ({time.strftime('%c')}) ================\n")
        if not getattr(opt, "no_tensorboard", False):
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.save_dir / "tensorboard"))
        if getattr(opt, "display_id", 0) > 0:
            self.vis = self._connect_visdom()

    def _connect_visdom(self) -> object | None:
        try:
            import visdom

            vis = visdom.Visdom(server=self.opt.display_server, port=self.opt.display_port,
                                env=self.opt.display_env, raise_exceptions=True)
            if vis.check_connection():
                return vis
        except Exception as err:  # visdom missing or its server unreachable: training goes on without it
            warn_once(f"visdom off ({type(err).__name__}: {err}); TensorBoard and the HTML page still work")
            return None
        warn_once(f"visdom off: no server at {self.opt.display_server}:{self.opt.display_port}")
        return None

    def print_current_losses(self, epoch: int, iters: int, total_iters: int, losses: dict[str, float],
                             t_comp: float, t_data: float) -> None:
        """pix2pix's line '(epoch: e, iters: i, time: t, data: d) name: v ...' to loss_log.txt, plus stats."""
        if not self.enabled:
            return
        message = f"(epoch: {epoch}, iters: {iters}, time: {t_comp:.3f}, data: {t_data:.3f}) "
        message += "".join(f"{k}: {v:.3f} " for k, v in losses.items())
        log.info(message)
        with open(self.save_dir / "loss_log.txt", "a") as f:
            f.write(message + "\n")
        self.log_scalars("train", losses, epoch, total_iters, {"time": t_comp, "data": t_data})

    def log_scalars(self, group: str, values: dict[str, float], epoch: int, total_iters: int,
                    extra: dict | None = None) -> None:
        """stats.jsonl line and TensorBoard scalars under <group>/<name>."""
        if not self.enabled:
            return
        record = {"group": group, "epoch": epoch, "iter": total_iters, **values, **(extra or {})}
        with open(self.save_dir / "stats.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{group}/{k}", v, total_iters)

    def display_current_results(self, visuals: dict[str, torch.Tensor], epoch: int, total_iters: int) -> None:
        """Visuals to TensorBoard and visdom, and to the HTML page (<checkpoints>/<name>/web/index.html) at
        the first display and then at most every --update_html_freq iterations (every time with --debug)."""
        if not self.enabled:
            return
        images = {k: tensor_to_image(v) for k, v in visuals.items()}
        if self.tb is not None:
            for k, im in images.items():
                self.tb.add_image(f"visuals/{k}", im, total_iters, dataformats="HWC")
        if self.vis is not None:
            for i, (k, im) in enumerate(images.items()):
                self.vis.image(im.transpose(2, 0, 1), win=self.opt.display_id + i, opts={"title": k})
        freq = 1 if getattr(self.opt, "debug", False) else getattr(self.opt, "update_html_freq", 1)
        if getattr(self.opt, "no_html", False) or (self.last_html is not None and total_iters - self.last_html < freq):
            return
        self.last_html = total_iters
        page = HTML(self.web_dir, f"Experiment name = {self.opt.name}", refresh=0)
        for k, im in images.items():
            cv2.imwrite(str(page.img_dir / f"epoch{epoch:03d}_{k}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
        by_epoch: dict[int, list[tuple[str, str]]] = {}
        for path in page.img_dir.glob("epoch*_*.png"):
            m = VISUAL_FILE.match(path.name)
            if m:
                by_epoch.setdefault(int(m["epoch"]), []).append((path.name, m["label"]))
        for e in sorted(by_epoch, reverse=True):
            page.add_header(f"epoch [{e}]")
            names = sorted(by_epoch[e])
            page.add_images([f"images/{n}" for n, _ in names], [label for _, label in names],
                            [f"images/{n}" for n, _ in names])
        page.save()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
