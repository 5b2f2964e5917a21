"""CUDA paths, run where a GPU is present (skipped elsewhere, so never in CI): the demo of a release-format
identity, the benchmark, one AMP training step per stage, a one-rank torchrun, and GPU == CPU inference."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import FIXTURES, ROOT, load_script
from test_models import EXTRA, make_opt, tiny_batch
from test_train import STAGE_ARGS

import demo
from models.runtime import PortraitPipeline
from models.synthetic import make_identity, write_assets, write_training_clips
from util import registry
from util.video import probe

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    make_identity(root, "May", size=256, g_size="large", ngf=16, num_downs=8, release_format=True)
    return root


def test_demo_of_a_release_identity_on_cuda(release, tmp_path):
    args = ["--id", "May", "--driving_audio", str(FIXTURES / "speech_3s.wav"), "--config_dir", str(release / "config"),
            "--results_dir", str(tmp_path), "--device", "cuda"]
    assert demo.cli(args) == 0
    assert probe(tmp_path / "May" / "speech_3s" / "speech_3s.mp4")["frames"] == 180


def test_cuda_equals_cpu(release):
    import soundfile as sf

    audio, _ = sf.read(FIXTURES / "speech_3s.wav", dtype="float32")
    cpu = PortraitPipeline.from_identity("May", "cpu", release / "config").predict(audio, seed=3)
    gpu = PortraitPipeline.from_identity("May", "cuda", release / "config").predict(audio, seed=3)
    np.testing.assert_allclose(gpu.face2d, cpu.face2d, atol=0.05)  # pixels; TF32 and kernel order differ


def test_benchmark_on_cuda(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--device", "cuda", "--g_size", "large", "--image_size", "512", "--render_frames", "16", "--batch_size",
            "8", "--seconds", "3", "--repeats", "2", "--offline_seconds", "3", "--stream_seconds", "3",
            "--compile", "--json", str(out)]
    assert load_script("benchmark").main(args) == 0
    result = json.loads(out.read_text())
    for key in ("audio_side_fps", "render_fps", "compiled_render_fps", "offline_fps", "stream_latency_ms_p95"):
        assert np.isfinite(result[key]) and result[key] > 0, key
    assert result["setup"]["device"].startswith("cuda")


@pytest.mark.parametrize("name", registry.available("model"))
def test_one_amp_training_step_per_stage(name, tmp_path):
    opt = make_opt(name, tmp_path, "--amp", *EXTRA.get(name, []))
    opt.gpu_ids = [0]
    model = registry.find("model", name)(opt)
    model.setup()
    assert model.device.type == "cuda" and model.use_amp
    batch = tiny_batch(name)
    before = {k: v.clone() for net in model.networks().values() for k, v in net.state_dict().items()}
    model.set_input(batch)
    model.optimize_parameters()
    assert all(np.isfinite(v) for v in model.get_current_losses().values())
    after = {k: v for net in model.networks().values() for k, v in net.state_dict().items()}
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())


def test_one_rank_torchrun(tmp_path):
    root = tmp_path / "syn"
    write_assets(root, 64, n_frames=60, apc_frames=100)
    write_training_clips(root, seconds=(4.0, 2.0))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", str(ROOT / "train.py"),
           "--model", "audio2feature", "--dataroot", str(root), "--checkpoints_dir", str(tmp_path / "ckpt"),
           "--name", "ddp", "--num_threads", "0", "--max_iters", "3", "--gpu_ids", "0", "--amp",
           *STAGE_ARGS["audio2feature"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = torch.load(tmp_path / "ckpt" / "ddp" / "latest_state.pth", weights_only=True)
    assert state["total_iters"] == 3
