"""Shared test fixtures and helpers; tests run on CPU with tiny shapes and synthetic data."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "2")


def reference_keys() -> dict[str, dict[str, tuple[int, ...]]]:
    """Sections of tests/fixtures/lsp_checkpoint_keys.txt: network name -> {key: shape}."""
    sections: dict[str, dict[str, tuple[int, ...]]] = {}
    current = None
    for line in (FIXTURES / "lsp_checkpoint_keys.txt").read_text().splitlines():
        head = re.match(r"\[(.+?)\]\s+params=(\d+)", line)
        if head:
            current = sections.setdefault(head.group(1), {"__params__": (int(head.group(2)),)})
            continue
        row = re.match(r"^(\S+)\s+\(([\d, ]*)\)\s+\w+", line)
        if row and current is not None:
            current[row.group(1)] = tuple(int(v) for v in row.group(2).replace(" ", "").split(",") if v)
    return sections


@pytest.fixture(scope="session")
def ref_keys() -> dict[str, dict[str, tuple[int, ...]]]:
    return reference_keys()


def shared_file(*parts: str) -> Path:
    """A file of ../shared/data, or skip the test when it is not present."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


def trainable_identity(tmp_path: Path, name: str = "syn") -> tuple[Path, Path, Path]:
    """A synthetic identity with random networks, a config and training clips under `tmp_path`, and a folder
    holding one bundled LibriSpeech utterance: (config dir, identity folder, speech folder)."""
    import shutil

    from models.synthetic import make_identity, write_training_clips

    config_dir = make_identity(tmp_path, name)
    root = tmp_path / "data" / name
    write_training_clips(root)
    speech = tmp_path / "speech"
    speech.mkdir()
    shutil.copy(sorted((ROOT / "data" / "example_src" / "speech").glob("*.ogg"))[0], speech)
    return config_dir, root, speech


def ar1(e, tau: float):
    """AR(1) noise of time constant `tau` frames from independent draws e (n, k), written out as a loop: the
    reference for models.runtime.streams.NoiseSource's slow noise (y_0 = e_0)."""
    a, y = np.exp(-1 / tau), e.clone() if hasattr(e, "clone") else e.copy()
    for i in range(1, len(y)):
        y[i] = a * y[i - 1] + np.sqrt(1 - a * a) * e[i]
    return y


def load_script(name: str):
    """Import scripts/<name>.py as a module (scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder with a tiny random-weight identity 'tiny' (config/ and data/); test files that need
    another one define their own `project`."""
    from models.synthetic import make_identity

    root = tmp_path_factory.mktemp("project")
    make_identity(root, "tiny", size=64)
    return root


@pytest.fixture(scope="module")
def identity(tmp_path_factory) -> Path:
    """A synthetic identity folder with training clips (models.synthetic), for the training tests."""
    from models.synthetic import write_assets, write_training_clips

    root = tmp_path_factory.mktemp("identity") / "syn"
    write_assets(root, 64, n_frames=60, apc_frames=100)
    write_training_clips(root, seconds=(4.0, 2.0))
    return root


@pytest.fixture(scope="session")
def landmarker() -> Path:
    """MediaPipe's face_landmarker.task, fetched (and checked) on first use; skip when impossible."""
    from datasets.preprocessing.tracker import ensure_landmarker
    from util.errors import MissingFileError

    try:
        return ensure_landmarker()
    except MissingFileError as err:
        pytest.skip(str(err))


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run only where CUDA is available (never in CI)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
