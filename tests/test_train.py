"""train.py / test.py on a tiny synthetic identity: overfitting, exact resume, DDP, bad input."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import trainable_identity

import test as test_script
import train
from models import create_model
from options.test_options import TestOptions
from options.train_options import TrainOptions

STAGE_ARGS = {
    "audio2feature": ["--sequence_length", "40", "--frame_future", "6", "--batch_size", "4"],
    "audio2headpose": ["--time_frame_length", "12", "--batch_size", "4", "--frame_jump_stride", "7"],
    "feature2face": ["--ngf", "8", "--num_downs", "5", "--ndf", "8", "--batch_size", "2", "--frame_jump", "5"],
}


def train_args(identity, tmp_path, model: str, *extra: str) -> list[str]:
    return ["--model", model, "--dataroot", str(identity), "--checkpoints_dir", str(tmp_path / "ckpt"),
            "--name", model, "--num_threads", "0", "--print_freq", "2", "--display_freq", "3", "--seed", "1",
            *STAGE_ARGS.get(model, []), *extra]


def weights(tmp_path, model: str, label: str = "latest") -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted((tmp_path / "ckpt" / model).glob(f"{label}_net_*.pth")):
        for k, v in torch.load(f, weights_only=True)["state_dict"].items():
            out[f"{f.name}:{k}"] = v
    return out


@pytest.mark.parametrize("model,extra", [("audio2headpose", ()), ("feature2face", ()),
                                         ("audio2feature", ("--ema_decay", "0.9"))])
def test_resume_equals_uninterrupted(identity, tmp_path, model, extra):
    common = ["--n_epochs", "2", "--n_epochs_decay", "0", "--save_latest_freq", "100", *extra]
    a, b = tmp_path / "a", tmp_path / "b"
    assert train.cli(train_args(identity, a, model, *common)) == 0
    total = json.loads((a / "ckpt" / model / "stats.jsonl").read_text().splitlines()[-1])["iter"]
    half = total // 2 + 1  # stops mid-epoch
    assert train.cli(train_args(identity, b, model, *common, "--max_iters", str(half))) == 0
    assert train.cli(train_args(identity, b, model, *common, "--continue_train")) == 0
    wa, wb = weights(a, model), weights(b, model)
    assert wa.keys() == wb.keys() and len(wa) > 0
    worst = max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)
    assert worst < 1e-5, worst
    state = torch.load(b / "ckpt" / model / "latest_state.pth", weights_only=True)
    straight = torch.load(a / "ckpt" / model / "latest_state.pth", weights_only=True)
    assert state["total_iters"] == straight["total_iters"]
    for name, raw in straight.get("training_weights", {}).items():  # --ema_decay: the training weights too
        assert all(torch.allclose(raw[k], state["training_weights"][name][k], atol=1e-5) for k in raw)


def test_ema_validates_saves_and_resumes_the_average(identity, tmp_path):
    """--ema_decay: the average follows decay * average + (1 - decay) * weights; validation and the saved
    network file use it, the state keeps the training weights, and the training weights are live again after."""
    opt = TrainOptions().parse(["--model", "audio2feature", "--dataroot", str(identity), "--checkpoints_dir",
                                str(tmp_path), "--name", "ema", "--gpu_ids", "-1", "--lr", "1e-2", "--ema_decay", "0.5",
                                *STAGE_ARGS["audio2feature"]], save=False)
    model = create_model(opt)
    from datasets import create_dataset

    data = create_dataset(opt, "train", model.data_spec())
    batch = torch.utils.data.default_collate([data[0], data[1]])
    model.setup()
    net = model.netAudio2Feature
    snapshot = lambda: {k: v.detach().clone() for k, v in net.state_dict().items()}  # noqa: E731
    expected = None
    for _ in range(3):
        model.set_input(batch)
        model.optimize_parameters()
        model.update_ema()
        now = snapshot()
        expected = now if expected is None else \
            {k: 0.5 * expected[k] + 0.5 * v if v.is_floating_point() else v for k, v in now.items()}
    trained = snapshot()
    assert any(not torch.equal(expected[k], trained[k]) for k in trained)  # the average is not the last step
    assert all(torch.allclose(model.ema["Audio2Feature"][k], expected[k], atol=1e-6) for k in expected)
    with model.averaged_weights():
        assert all(torch.allclose(net.state_dict()[k], expected[k], atol=1e-6) for k in expected)
    assert all(torch.equal(net.state_dict()[k], trained[k]) for k in trained)  # back to the training weights

    loader = torch.utils.data.DataLoader(data, batch_size=2)
    averaged = model.validate(loader)
    model.ema = {}  # the same validation with the training weights differs
    assert averaged != model.validate(loader)
    model.update_ema()  # restarts the average at the training weights...
    model.ema["Audio2Feature"] = {k: v.clone() for k, v in expected.items()}  # ...put the real one back
    model.save_checkpoint("latest", 1, 3)
    saved = torch.load(tmp_path / "ema" / "latest_net_Audio2Feature.pth", weights_only=True)["state_dict"]
    state = torch.load(tmp_path / "ema" / "latest_state.pth", weights_only=True)
    assert all(torch.allclose(saved[k], expected[k], atol=1e-6) for k in expected)
    assert all(torch.equal(state["training_weights"]["Audio2Feature"][k], trained[k]) for k in trained)

    resumed = create_model(opt)  # resuming restores both: the training weights live, the average aside
    resumed.setup()
    resumed.load_checkpoint("latest")
    assert all(torch.equal(resumed.netAudio2Feature.state_dict()[k], trained[k]) for k in trained)
    assert all(torch.allclose(resumed.ema["Audio2Feature"][k], expected[k], atol=1e-6) for k in expected)
    opt.ema_decay = 0.0  # resumed without averaging: on from the training weights, no average kept
    plain = create_model(opt)
    plain.setup()
    plain.load_checkpoint("latest")
    assert plain.ema == {} and all(torch.equal(plain.netAudio2Feature.state_dict()[k], trained[k]) for k in trained)


def test_training_writes_logs_pages_and_test_metrics(identity, tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / f"{identity.name}.yaml").write_text("# mine\nfps: 60\n")
    args = train_args(identity, tmp_path, "audio2feature", "--n_epochs", "2", "--n_epochs_decay", "0",
                      "--val_freq", "1", "--save_epoch_freq", "1", "--config_dir", str(tmp_path / "config"))
    assert train.cli(args) == 0
    run = tmp_path / "ckpt" / "audio2feature"
    log = (run / "loss_log.txt").read_text()
    assert "(epoch: 1, iters: 2, time:" in log and " L2: " in log
    kinds = {json.loads(line)["group"] for line in (run / "stats.jsonl").read_text().splitlines()}
    assert kinds == {"train", "val"}
    assert (run / "web" / "index.html").is_file() and any((run / "tensorboard").iterdir())
    assert {p.name for p in run.glob("*.pth")} >= {"latest_net_Audio2Feature.pth", "latest_state.pth",
                                                   "best_net_Audio2Feature.pth", "1_net_Audio2Feature.pth"}
    assert (run / "train_opt.txt").is_file() and json.loads((run / "opt.json").read_text())["model"] == "audio2feature"
    trained_with = (run / "opt.json").read_text()
    logged = (run / "log.txt").read_text()
    second = [*train_args(identity, tmp_path, "audio2feature", "--max_iters", "1"), "--name", "second"]
    assert train.cli(second) == 0  # another run in the same process (the quickstart's way) logs to its own file
    assert (run / "log.txt").read_text() == logged
    assert "parameters" in (tmp_path / "ckpt" / "second" / "log.txt").read_text()
    cfg = (tmp_path / "config" / f"{identity.name}.yaml").read_text()  # the demo now finds the trained network
    assert str(run / "best_net_Audio2Feature.pth") in cfg
    opt = TestOptions().parse(["--model", "audio2feature", "--dataroot", str(identity), "--checkpoints_dir",
                               str(tmp_path / "ckpt"), "--name", "audio2feature", "--num_test", "3",
                               "--results_dir", str(tmp_path / "res"), *STAGE_ARGS["audio2feature"]])
    report = test_script.main(opt)
    assert report["samples"] == 3 and report["batches"] == 1 and np.isfinite(report["mouth_lmd"])  # batches of 4
    assert (tmp_path / "res" / "audio2feature" / "val_latest" / "index.html").is_file()
    assert (run / "opt.json").read_text() == trained_with  # testing kept the training run's options
    assert json.loads((run / "test_opt.json").read_text())["num_test"] == 3


def test_save_by_iter_and_update_html_freq(identity, tmp_path, monkeypatch):
    from util.html import HTML

    pages = []
    real_save = HTML.save
    monkeypatch.setattr(HTML, "save", lambda self, *a: pages.append(self) or real_save(self, *a))
    args = train_args(identity, tmp_path, "audio2feature", "--n_epochs", "1", "--n_epochs_decay", "0",
                      "--max_iters", "7", "--save_latest_freq", "2", "--save_by_iter", "--display_freq", "1",
                      "--update_html_freq", "3")
    assert train.cli(args) == 0
    run = tmp_path / "ckpt" / "audio2feature"
    assert {"iter_2_net_Audio2Feature.pth", "iter_6_net_Audio2Feature.pth", "iter_6_state.pth"} <= {
        p.name for p in run.iterdir()}
    assert len(pages) == 3 and (run / "web" / "index.html").is_file()  # iterations 1, 4 and 7 of 7 displays


def test_headpose_config_points_at_the_last_model(identity, tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / f"{identity.name}.yaml").write_text("fps: 60\n")
    args = train_args(identity, tmp_path, "audio2headpose", "--n_epochs", "2", "--n_epochs_decay", "0",
                      "--val_freq", "1", "--config_dir", str(tmp_path / "config"))
    assert train.cli(args) == 0
    run = tmp_path / "ckpt" / "audio2headpose"
    assert (run / "best_net_Audio2Headpose.pth").is_file()  # validation still keeps the best ...
    cfg = (tmp_path / "config" / f"{identity.name}.yaml").read_text()
    assert str(run / "latest_net_Audio2Headpose.pth") in cfg  # ... but the demo gets the last (--config_checkpoint)


@pytest.mark.parametrize("model,steps,factor", [("apc", 60, 3), ("audio2feature", 80, 10), ("feature2face", 80, 3),
                                                ("audio2headpose", 60, None)])
def test_overfits_a_tiny_batch(identity, model, steps, factor, tmp_path):
    from datasets import create_dataset

    torch.manual_seed(0)  # the same start whatever ran before (a Gaussian NLL's loss is noisy step to step)
    args = ["--model", model, "--checkpoints_dir", str(tmp_path), "--lr", "1e-3", "--gpu_ids", "-1",
            "--dataroot", str(identity if model != "apc" else identity / "clips"), *STAGE_ARGS.get(model, [])]
    if model == "apc":
        args += ["--segment_length", "100", "--time_shift", "1"]
    opt = TrainOptions().parse(args, save=False)
    model_obj = create_model(opt)
    data = create_dataset(opt, "train", model_obj.data_spec())
    batch = torch.utils.data.default_collate([data[i] for i in range(min(2, len(data)))])
    model_obj.setup()
    losses = []
    for _ in range(steps):
        model_obj.set_input(batch)
        model_obj.optimize_parameters()
        losses.append(sum(model_obj.get_current_losses().values()) if model != "feature2face"
                      else model_obj.get_current_losses()["G_L1"])
    first, last = np.mean(losses[:3]), np.mean(losses[-5:])
    if factor is None:  # a Gaussian NLL can go negative: ask for a large absolute drop instead
        assert first - last > 1.0, (first, last)
    else:
        assert last < first / factor, (first, last)


def test_bad_inputs(identity, tmp_path, capsys):
    def error(*args: str, code: int = 2) -> str:
        assert train.cli(list(args)) == code
        return capsys.readouterr().err.strip().splitlines()[-1]

    base = ["--checkpoints_dir", str(tmp_path / "ckpt"), "--num_threads", "0"]
    assert "no such folder" in error("--model", "audio2feature", "--dataroot", str(tmp_path / "nope"), *base)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no train_list.txt; expected an identity folder" in error("--model", "feature2face", "--dataroot",
                                                                       str(empty), *base)
    assert "no audio files" in error("--model", "apc", "--dataroot", str(empty), *base)
    bare = tmp_path / "bare"
    shutil.copytree(identity, bare)
    for f in bare.glob("clips/*/apc_features.npy"):
        f.unlink()
    msg = error("--model", "audio2feature", "--dataroot", str(bare), *base)
    assert "has no APC features yet; make them with python scripts/preprocess.py --id bare --only apc_features" in msg
    msg = error("--model", "audio2feature", "--dataroot", str(identity), "--name", "fresh", "--continue_train", *base)
    assert "nothing to continue" in msg
    args = train_args(identity, tmp_path, "audio2feature", "--n_epochs", "1", "--n_epochs_decay", "0")
    assert train.cli(args) == 0
    msg = error(*train_args(identity, tmp_path, "audio2headpose", "--continue_train", "--name", "audio2feature"))
    assert "a checkpoint of --model audio2feature, not audio2headpose" in msg
    msg = error(*train_args(identity, tmp_path, "audio2feature", "--name", "nan", "--lr", "1e12", "--beta1", "0",
                            "--save_latest_freq", "1", "--n_epochs", "5"), code=3)
    assert "became" in msg and "at iteration" in msg and "last good checkpoint:" in msg and "latest_*" in msg


def _ddp_worker(rank: int, world: int, args: list[str], out: str, port: int) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    opt = TrainOptions().parse(args)
    result = train.main(opt)
    torch.save({k: v.cpu() for k, v in result["model"].networks()["Audio2Feature"].state_dict().items()},
               f"{out}/rank{rank}.pt")


def test_ddp_two_gloo_processes_agree(identity, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = train_args(identity, tmp_path, "audio2feature", "--n_epochs", "1", "--n_epochs_decay", "0")
    mp.spawn(_ddp_worker, args=(2, args, str(tmp_path), port), nprocs=2, join=True)
    w0, w1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    saved = torch.load(tmp_path / "ckpt" / "audio2feature" / "latest_net_Audio2Feature.pth", weights_only=True)
    assert all(torch.equal(saved["state_dict"][k], w0[k]) for k in w0)


def test_html_page_lists_epochs_past_999(tmp_path):
    import argparse

    from util.visualizer import Visualizer

    opt = argparse.Namespace(checkpoints_dir=tmp_path, name="v", no_tensorboard=True, display_id=0, no_html=False,
                             update_html_freq=1)
    vis = Visualizer(opt)
    for epoch in (999, 1000, 1001):
        vis.display_current_results({"fake": torch.zeros(1, 3, 8, 8)}, epoch, epoch)
    opt.no_html = True
    vis.display_current_results({"fake": torch.zeros(1, 3, 8, 8)}, 1002, 1002)
    page = (tmp_path / "v" / "web" / "index.html").read_text()
    assert all(f"epoch [{e}]" in page for e in (999, 1000, 1001))
    assert "epoch [100]" not in page and "epoch [1002]" not in page


def test_distillation_learns_the_teachers_average_on_other_speech(tmp_path):
    """--teacher_ckpts: the targets are the teachers' averaged runtime output on the other speech as the runtime
    encodes it; training brings the network's output on it down to them; a teacher of another lookahead is
    refused."""
    from datasets.identity import load_config
    from models.runtime.motion import speech_files, speech_pairs
    from models.runtime.pipeline import load_mouth_encoder
    from util.errors import InputError

    config_dir, root, speech = trainable_identity(tmp_path)
    teacher = root / "checkpoints" / "Audio2Feature.pth"  # random weights, trained with 18 frames of lookahead
    other = tmp_path / "other.pth"
    state = torch.load(teacher, weights_only=False)
    state["state_dict"] = {k: v * 0.5 if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    torch.save(state, other)

    def args(frame_future: int = 18) -> list[str]:
        return ["--model", "audio2feature", "--dataroot", str(root), "--checkpoints_dir", str(tmp_path / "ckpt"),
                "--name", "student", "--num_threads", "0", "--seed", "1", "--sequence_length", "40",
                "--batch_size", "2", "--frame_future", str(frame_future), "--config_dir", str(config_dir), "--lr",
                "3e-3", "--max_iters", "30", "--print_freq", "5", "--teacher_ckpts", str(teacher), str(other),
                "--distill_speech", str(speech), "--distill_seconds", "5", "--distill_batch", "4"]

    encoder, average, _ = load_mouth_encoder(load_config("syn", config_dir), [teacher, other], torch.device("cpu"))
    pairs = torch.from_numpy(speech_pairs(encoder, speech_files(speech, 5)[0])).float()
    with torch.no_grad():
        expected = (teacher_net(teacher, pairs) + teacher_net(other, pairs)) / 2
        assert torch.allclose(average.eval()(pairs.reshape(1, 2 * len(pairs), -1))[0][0], expected, atol=1e-5)
    targets = create_model(TrainOptions().parse(args(), save=False)).speech.items
    assert len(targets) == 1 and torch.equal(targets[0][0], pairs)
    assert torch.allclose(targets[0][1], expected, atol=1e-5)
    assert train.cli(args()) == 0
    logged = [json.loads(line) for line in (tmp_path / "ckpt" / "student" / "stats.jsonl").read_text().splitlines()]
    teacher_loss = [row["L2_teacher"] for row in logged if "L2_teacher" in row]
    assert len(teacher_loss) >= 5 and teacher_loss[-1] < 0.2 * teacher_loss[0], teacher_loss
    with pytest.raises(InputError, match="--teacher_ckpts .*--frame_future 18 .*--frame_future 9"):
        create_model(TrainOptions().parse([*args(9), "--overwrite"], save=False))


def teacher_net(path, pairs: torch.Tensor) -> torch.Tensor:
    """One mouth checkpoint's output (frames, 75) on APC pairs (frames, 2 * d), loaded on its own."""
    from models.networks import Audio2FeatureConfig, Audio2FeatureNet
    from util.checkpoint import load_network

    net, _, _ = load_network(path, "Audio2Feature", Audio2FeatureNet, Audio2FeatureConfig, Audio2FeatureConfig(),
                             "teacher")
    return net(pairs.reshape(1, 2 * len(pairs), -1))[0][0]
