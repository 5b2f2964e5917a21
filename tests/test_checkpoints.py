"""Learning-rate schedules, the best-model choice, checkpoints as one atomic unit, state files loaded without
running code, and the rank -> device mapping of torchrun."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch
from test_models import EXTRA, make_opt, tiny_batch

from models.base_model import rng_state, set_rng_state
from util import checkpoint as ckpt
from util import registry
from util.distributed import rank_device
from util.errors import InputError


def lr_sequence(tmp_path, policy: str, metrics: list[float | None], *extra: str) -> list[float]:
    model = registry.find("model", "apc")(make_opt("apc", tmp_path, "--lr_policy", policy, "--lr", "1.0", *extra))
    model.setup()
    with warnings.catch_warnings():  # stepping schedules without optimizer steps is the point here
        warnings.simplefilter("ignore", UserWarning)
        return [model.update_learning_rate(m) for m in metrics]


def test_cosine_decays_to_zero_and_stays(tmp_path):
    lrs = lr_sequence(tmp_path, "cosine", [None] * 12, "--n_epochs", "4", "--n_epochs_decay", "4")
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # never climbs back
    assert lrs[7] == pytest.approx(0.0, abs=1e-12) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert lrs[3] == pytest.approx(0.5)  # half-way through the 8 epochs: half the rate


def test_plateau_steps_with_the_validation_metric_only(tmp_path):
    improving = lr_sequence(tmp_path / "a", "plateau", [1.0 / (i + 1) for i in range(10)])
    assert improving == [1.0] * 10
    without_metric = lr_sequence(tmp_path / "b", "plateau", [None] * 20)
    assert without_metric == [1.0] * 20  # epochs without validation do not count as stalls
    stalled = lr_sequence(tmp_path / "c", "plateau", [1.0] * 8)
    assert stalled[:6] == [1.0] * 6 and stalled[-1] == pytest.approx(0.2)  # patience 5, then x0.2


def test_linear_and_step_schedules(tmp_path):
    linear = lr_sequence(tmp_path / "a", "linear", [None] * 6, "--n_epochs", "2", "--n_epochs_decay", "3")
    assert linear == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    step = lr_sequence(tmp_path / "b", "step", [None] * 4, "--lr_decay_iters", "2", "--lr_gamma", "0.5")
    assert step == pytest.approx([1.0, 0.5, 0.5, 0.25])


def test_each_stage_names_the_metric_its_best_model_is_chosen_by(tmp_path):
    expected = {"apc": ("L1", "min"), "audio2feature": ("mouth_lmd", "min"), "audio2headpose": ("NLL", "min"),
                "feature2face": ("PSNR", "max")}
    for name, best in expected.items():
        model = registry.find("model", name)(make_opt(name, tmp_path, *EXTRA.get(name, [])))
        assert model.best_metric == best
        model.set_input(tiny_batch(name))
        model.test()
        assert best[0] in model.current_metrics()


def trained_apc(tmp_path, steps: int = 1):
    model = registry.find("model", "apc")(make_opt("apc", tmp_path))
    model.setup()
    for _ in range(steps):
        model.set_input(tiny_batch("apc"))
        model.optimize_parameters()
    return model


def test_checkpoint_round_trip_loads_without_pickles(tmp_path):
    model = trained_apc(tmp_path, 2)
    model.save_checkpoint("latest", 3, 2, {"epoch_iter": 1, "best": {"metric": "L1", "value": 0.5, "epoch": 2}})
    state = torch.load(ckpt.state_path(model.save_dir, "latest"), weights_only=True)  # no code runs from a file
    assert state["total_iters"] == 2 and state["extra"]["best"]["value"] == 0.5
    fresh = registry.find("model", "apc")(make_opt("apc", tmp_path))
    fresh.setup()
    assert fresh.load_checkpoint("latest")["epoch"] == 3
    for a, b in zip(model.netAPC.parameters(), fresh.netAPC.parameters()):
        assert torch.equal(a, b)
    assert fresh.optimizers[0].state_dict()["state"][0]["step"] == 2


def test_a_kill_during_a_save_resumes_the_old_or_the_new_checkpoint(tmp_path, monkeypatch):
    model = trained_apc(tmp_path)
    model.save_checkpoint("latest", 1, 1)
    old = model.netAPC.rnns[0].weight_ih_l0.clone()
    model.set_input(tiny_batch("apc"))
    model.optimize_parameters()
    real_replace = ckpt.os.replace
    calls = []

    def killed_after(n):
        def replace(src, dst):
            calls.append(dst)
            if len(calls) > n:
                raise KeyboardInterrupt  # the process dies here
            real_replace(src, dst)
        return replace

    # killed while writing the network file (before the commit point): the old checkpoint stands
    monkeypatch.setattr(ckpt.os, "replace", killed_after(0))
    with pytest.raises(KeyboardInterrupt):
        model.save_checkpoint("latest", 2, 2)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    fresh = trained_apc(tmp_path / "x")
    fresh.save_dir = model.save_dir
    assert fresh.load_checkpoint("latest")["total_iters"] == 1
    assert torch.equal(fresh.netAPC.rnns[0].weight_ih_l0, old)
    assert not list(model.save_dir.glob("*.new")) and not list(model.save_dir.glob(".*tmp*"))

    # killed between renaming the network file and the state file (after the commit point): the new one
    calls.clear()
    monkeypatch.setattr(ckpt.os, "replace", killed_after(3))  # 2 pending files written, 1 final rename
    with pytest.raises(KeyboardInterrupt):
        model.save_checkpoint("latest", 2, 2)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    assert fresh.load_checkpoint("latest")["total_iters"] == 2
    assert torch.equal(fresh.netAPC.rnns[0].weight_ih_l0, model.netAPC.rnns[0].weight_ih_l0)


def test_a_mixed_checkpoint_is_refused(tmp_path):
    model = trained_apc(tmp_path)
    model.save_checkpoint("latest", 1, 1)
    net_file = ckpt.network_path(model.save_dir, "latest", "APC")
    first = net_file.read_bytes()
    model.save_checkpoint("latest", 2, 2)
    net_file.write_bytes(first)  # weights of one save beside the state of another
    with pytest.raises(InputError, match="mixed"):
        model.load_checkpoint("latest")


def test_a_state_file_that_would_run_code_is_refused(tmp_path):
    model = trained_apc(tmp_path)
    model.save_checkpoint("latest", 1, 1)

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"total_iters": 1, "stamp": "x", "evil": Evil()}, ckpt.state_path(model.save_dir, "latest"))
    with pytest.raises(InputError, match="cannot be read"):
        model.load_checkpoint("latest")


def test_rng_state_round_trip():
    state = rng_state()
    draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == draws


@pytest.mark.parametrize("gpu_ids,local,device", [([], 1, "cpu"), ([0], 0, "cuda:0"), ([0], 3, "cuda:3"),
                                                  ([2], 1, "cuda:3"), ([4, 6], 1, "cuda:6")])
def test_each_torchrun_rank_gets_its_own_gpu(monkeypatch, gpu_ids, local, device):
    monkeypatch.setenv("LOCAL_RANK", str(local))
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank_device(gpu_ids) == torch.device(device)


def test_more_ranks_than_listed_gpus_is_an_error(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ValueError, match="local rank 2"):
        rank_device([0, 1])


def test_network_file_names_are_one_rule():
    path = ckpt.network_path("runs/x", "iter_1000", "Audio2Feature")
    assert path.name == "iter_1000_net_Audio2Feature.pth" and ckpt.split_network_path(path) == ("iter_1000",
                                                                                               "Audio2Feature")
    assert ckpt.split_network_path("runs/x/APC_epoch_160.model") is None


def test_an_interrupted_save_of_a_label_with_glob_characters_is_dropped(tmp_path):
    pending = tmp_path / "run[1]_net_APC.pth.new"
    other = tmp_path / "run1_net_APC.pth.new"  # what an unescaped 'run[1]' pattern would match
    pending.write_bytes(b"x")
    other.write_bytes(b"y")
    ckpt.recover_checkpoint(tmp_path, "run[1]")
    assert not pending.exists() and other.exists()
