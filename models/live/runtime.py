"""The one place where the live server reaches into the inference runtime and the identity files.

Everything models/live needs from the pipeline, the streaming session and the identity configs comes
through here, so a move of those modules changes these imports only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from datasets.identity import CONFIG_DIR, STAGES, check_identity_name, load_config, stage_checkpoints
from models.runtime import PortraitPipeline, RenderedFrame, StreamingSession
from models.runtime.renderer import ONNX_FILES, resolve_device
from util.errors import InputError

__all__ = ["CONFIG_DIR", "PortraitPipeline", "RenderedFrame", "SessionSettings", "StreamingSession",
           "checked_identity", "list_identities", "load_pipeline", "open_session", "resolve_device"]

log = logging.getLogger("lsp")
LIVE_ONNX_THREADS = 1  # onnxruntime threads of a live server's renderer (see load_pipeline)


@dataclass(frozen=True)
class SessionSettings:
    """How every live session of a server runs (the serve.py flags)."""

    frame_step: int = 1  # render every n-th model frame
    max_lag_ms: float | None = 150.0  # skip frames later than this (None never skips)
    hop_ms: float = 20.0  # audio-side cadence: every 20 ms packet
    seed: int = 0  # head-pose sampling seed
    sigma_scale: float | None = None  # head-pose sampling sigma (None: the identity's config)


def checked_identity(name: str) -> str:
    """`name` when it is a plain identity name (datasets.identity's rule); an InputError otherwise."""
    return check_identity_name(name, "identity")


def _trained(cfg: dict) -> bool:
    return all(path.is_file() for s in STAGES for path in stage_checkpoints(cfg, s))


def list_identities(config_dir: Path | None = None) -> list[str]:
    """Names of the identities under `config_dir` whose four checkpoints exist (trained ones)."""
    folder = Path(config_dir) if config_dir else CONFIG_DIR
    names = []
    for path in sorted(folder.glob("*.yaml")):
        if path.stem == "default" or path.stem.startswith("."):
            continue
        try:
            if _trained(load_config(path.stem, folder)):
                names.append(path.stem)
        except (InputError, KeyError, TypeError) as err:
            log.warning("identity %s skipped: %s", path.stem, err)
    return names


def load_pipeline(identity: str, device: str, config_dir: Path | None, backend: str) -> PortraitPipeline:
    """The identity's pipeline on `device` with the renderer `backend` (InputError on bad input). An ONNX
    renderer gets LIVE_ONNX_THREADS threads that sleep when idle: a live server shares the CPU with the
    browser, the video encoder and every session's audio side, and onnxruntime's default (a thread per core,
    spin-waiting between calls) then fights them for the cores and renders slower (measured on the 2-core
    CPU with other work running: 44 ms per 256² frame against 31 ms with one thread)."""
    threads = LIVE_ONNX_THREADS if backend in ONNX_FILES else None
    return PortraitPipeline.from_identity(checked_identity(identity), device, config_dir, backend, onnx_threads=threads)


def open_session(pipe: PortraitPipeline, renderer: object, settings: SessionSettings) -> StreamingSession:
    """One StreamingSession of `pipe` rendering through `renderer` (a proxy onto the shared renderer)."""
    return StreamingSession(pipe, seed=settings.seed, sigma_scale=settings.sigma_scale, batch_size=1,
                            frame_step=settings.frame_step, hop_ms=settings.hop_ms, renderer=renderer,
                            max_lag_ms=settings.max_lag_ms)
