"""Bad input and faults, as a careless or malicious user makes them: each gets one line naming the flag or
file and what was expected (printed last, exit 2), never a traceback, and never loses or overwrites work."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch
import yaml
from conftest import FIXTURES, load_script
from test_train import train_args

import demo
import train
from util.checkpoint import state_path

SPEECH = FIXTURES / "speech_3s.wav"


@pytest.fixture
def copy(project, tmp_path):
    """A private copy of the project, to break its files."""
    root = tmp_path / "project"
    shutil.copytree(project, root)
    return root


def one_line_error(capsys, prog: str) -> str:
    """The error printed by a CLI: exactly one line, the last, no traceback or usage block."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage:" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


def run_demo(root, tmp_path, *extra, identity="tiny", audio=SPEECH) -> int:
    return demo.cli(["--id", identity, "--driving_audio", str(audio), "--config_dir", str(root / "config"),
                     "--results_dir", str(tmp_path / "results"), *extra])


def demo_error(capsys, root, tmp_path, *extra, **kw) -> str:
    assert run_demo(root, tmp_path, *extra, **kw) == 2
    return one_line_error(capsys, "demo.py")


def write_config(root, name: str, text: str | bytes) -> None:
    path = root / "config" / f"{name}.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def tiny_config(root, **sections) -> str:
    """tiny.yaml with `sections` merged in (dataset paths pinned to data/tiny)."""
    cfg = yaml.safe_load((root / "config" / "tiny.yaml").read_text())
    cfg["dataset_params"] = {"root": "./data/tiny/", "fit_data_path": "./data/tiny/3d_fit_data.npz",
                             "pts3d_path": "./data/tiny/tracked3D_normalized_pts_fix_contour.npy"}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            for k, v in value.items():
                cfg[key][k] = {**cfg[key].get(k, {}), **v} if isinstance(v, dict) else v
        else:
            cfg[key] = value
    return yaml.safe_dump(cfg)


@pytest.mark.parametrize("identity,expected", [
    ("../../evil", "an identity name is letters"), ("/etc/passwd", "an identity name is letters"),
    ("..", "an identity name is letters"), ("a/b", "an identity name is letters"),
])
def test_an_identity_name_is_not_a_path(project, tmp_path, capsys, identity, expected):
    assert expected in demo_error(capsys, project, tmp_path, identity=identity)
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


CONFIGS = {
    "alias_bomb": ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                   "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
                   "aliases (*a) are not allowed"),
    "huge": ("# " + "x" * (1 << 20) + "\n", "a config may have at most"),
    "binary": (b"fps: 60\n\xff\xfe\x00bad: 1\n", "not UTF-8"),
    "model_params_5": ("model_params: 5\n", "model_params must be a mapping"),
    "dataset_params_null": ("dataset_params: null\n", "dataset_params must be a mapping"),
    "ckp_list": ({"model_params": {"Headpose": {"ckp_path": ["a.pth", "b.pth"]}}}, "Headpose.ckp_path must be a path"),
    "mouth_list_empty": ({"model_params": {"Audio2Mouth": {"ckp_path": []}}}, "a path or a non-empty list of paths"),
    "mouth_list_missing": ({"model_params": {"Audio2Mouth": {"ckp_path": ["a.pth"]}}},
                           "Audio2Feature checkpoint not found: "),  # each listed mouth model is looked for
    "knear_0": ({"model_params": {"APC": {"Knear": 0}}}, "Knear must be an integer >= 1"),
    "ngf_text": ({"model_params": {"Image2Image": {"ngf": "wide"}}}, "Image2Image size/ngf/num_downs"),
    "amp_text": ({"model_params": {"Headpose": {"AMP": ["a", 1]}}}, "Headpose.AMP must be"),
    "fps_0": ({"fps": 0}, "fps must be a number > 0"),
    "lookahead_mismatch": ({"model_params": {"Audio2Mouth": {"frame_future": 9}}},
                           "Audio2Mouth.frame_future is 9, but the network was trained with 18"),
    "not_yaml": ("model_params: {APC: [\n", "not valid YAML"),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_broken_configs(project, tmp_path, capsys, name):
    text, expected = CONFIGS[name]
    if isinstance(text, dict):
        text = tiny_config(project, **text)
    write_config(project, name, text)
    try:
        assert expected in demo_error(capsys, project, tmp_path, identity=name)
    finally:
        (project / "config" / f"{name}.yaml").unlink()


def corrupt(path, data: bytes | None = None) -> None:
    """Truncate a file to half (or replace its bytes)."""
    path.write_bytes(data if data is not None else path.read_bytes()[: path.stat().st_size // 2])


FILES = {
    "3d_fit_data.npz": (lambda d: corrupt(d / "3d_fit_data.npz"), "3D fit data"),
    "id_scale.mat": (lambda d: corrupt(d / "id_scale.mat", b"MATLAB junk"), "identity scale"),
    "strings.npy": (lambda d: np.save(d / "mean_pts3d.npy", np.array(["a"] * 219).reshape(73, 3)),
                    "mean 3D landmarks"),
    "object.npy": (lambda d: np.save(d / "mean_pts3d.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True),
                   "mean 3D landmarks"),
    "nan.npy": (lambda d: np.save(d / "camera_intrinsic.npy", np.full((3, 3), np.nan)), "contains NaN"),
    "checkpoint": (lambda d: corrupt(d / "checkpoints" / "Audio2Feature.pth"), "Audio2Feature checkpoint"),
    "candidate": (lambda d: corrupt(d / "candidates" / "normalized_full_2.jpg", b"not a jpeg"), "candidate image"),
}


@pytest.mark.parametrize("name", FILES)
def test_corrupt_identity_files(copy, tmp_path, capsys, name):
    breaks, expected = FILES[name]
    breaks(copy / "data" / "tiny")
    assert expected in demo_error(capsys, copy, tmp_path)


@pytest.mark.parametrize("change,expected", [
    (lambda obj: obj["config"].update(ngf=-4), "network config is impossible"),
    (lambda obj: obj["config"].update(size="huge"), "network config is impossible"),
    (lambda obj: obj["config"].update(num_downs=0), "network config is impossible"),
    (lambda obj: obj.update(config=5), "config does not fit"),
])
def test_impossible_network_configs_in_checkpoints(copy, tmp_path, capsys, change, expected):
    path = copy / "data" / "tiny" / "checkpoints" / "Feature2Face.pth"
    obj = torch.load(path, weights_only=True)
    change(obj)
    torch.save(obj, path)
    assert expected in demo_error(capsys, copy, tmp_path)


def test_impossible_rate_recorded_in_a_checkpoint(copy, tmp_path, capsys):
    path = copy / "data" / "tiny" / "checkpoints" / "Audio2Feature.pth"
    obj = torch.load(path, weights_only=True)
    obj["meta"]["fps"] = 0
    torch.save(obj, path)
    assert "recorded fps is impossible" in demo_error(capsys, copy, tmp_path)


@pytest.mark.parametrize("flag,value,expected", [
    ("--sigma_scale", "nan", "--sigma_scale: expected a finite number"),
    ("--chunk_ms", "nan", "--chunk_ms: expected a finite number"), ("--hop_ms", "inf", "--hop_ms: expected a finite"),
    ("--max_lag_ms", "-1", "--max_lag_ms: expected a number >= 0"), ("--seed", str(2**40), "--seed: expected an"),
    ("--batch_size", "0", "--batch_size: expected an integer >= 1"), ("--backend", "tpu", "--backend: invalid choice"),
])
def test_bad_flags_are_one_line(project, tmp_path, capsys, flag, value, expected):
    with pytest.raises(SystemExit) as stop:
        run_demo(project, tmp_path, flag, value)
    assert stop.value.code == 2 and expected in one_line_error(capsys, "demo.py")


def test_results_folder_problems(project, tmp_path, capsys, monkeypatch):
    (tmp_path / "results").write_text("mine")  # --results_dir is a user's file
    assert "cannot create" in demo_error(capsys, project, tmp_path)
    assert (tmp_path / "results").read_text() == "mine"
    (tmp_path / "results").unlink()
    (tmp_path / "results" / "tiny").mkdir(parents=True)
    (tmp_path / "results" / "tiny" / "speech_3s").write_text("also mine")  # the results path is a user's file
    assert "is a file, not a results folder" in demo_error(capsys, project, tmp_path, "--overwrite")
    assert (tmp_path / "results" / "tiny" / "speech_3s").read_text() == "also mine"
    monkeypatch.setattr("util.io.os.access", lambda path, mode: False)  # a read-only place
    assert "is not writable" in demo_error(capsys, project, tmp_path / "ro")


def test_bad_pose_files(project, tmp_path, capsys):
    (tmp_path / "p.npz").write_bytes(b"PK\x03\x04 truncated zip")
    assert "--pose_file" in demo_error(capsys, project, tmp_path, "--pose_file", str(tmp_path / "p.npz"))
    np.save(tmp_path / "s.npy", np.array([["a"] * 6]))
    assert "--pose_file" in demo_error(capsys, project, tmp_path / "2", "--pose_file", str(tmp_path / "s.npy"))


def test_a_full_disk_is_one_line_and_leaves_nothing_behind(project, tmp_path, capsys, monkeypatch):
    from models.runtime import offline

    real_add = offline.ArrayRecorder.add

    def full(self, **arrays):
        real_add(self, **arrays)
        raise OSError(28, "No space left on device", str(self.path))

    monkeypatch.setattr(offline.ArrayRecorder, "add", full)
    assert "disk full" in demo_error(capsys, project, tmp_path)
    out = tmp_path / "results" / "tiny" / "speech_3s"
    assert list(out.iterdir()) == []  # no temporary file, no partial video
    monkeypatch.setattr(offline.ArrayRecorder, "add", real_add)
    assert run_demo(project, tmp_path) == 0  # the rerun is not blocked


def test_ctrl_c_is_one_line_and_exit_130(project, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("models.runtime.pipeline.PortraitPipeline.generate", interrupted)
    assert run_demo(project, tmp_path) == 130
    assert "interrupted (Ctrl-C)" in one_line_error(capsys, "demo.py")


def test_a_finished_run_is_never_replaced_silently(identity, tmp_path, capsys):
    args = train_args(identity, tmp_path, "audio2feature", "--n_epochs", "1", "--n_epochs_decay", "0")
    assert train.cli(args) == 0
    run = tmp_path / "ckpt" / "audio2feature"
    before = {p.name: p.read_bytes() for p in run.glob("*.pth")}
    with pytest.raises(SystemExit) as stop:
        train.cli([*args, "--max_iters", "1"])
    msg = one_line_error(capsys, "train.py")
    assert stop.value.code == 2 and "--continue_train" in msg and "--overwrite" in msg and str(run) in msg
    assert {p.name: p.read_bytes() for p in run.glob("*.pth")} == before  # nothing touched, options included
    assert train.cli([*args, "--max_iters", "1", "--overwrite"]) == 0


@pytest.mark.parametrize("extra,expected", [
    (["--lr", "nan"], "--lr: expected a finite number"), (["--suffix", "{nope}"], "--suffix: '{nope}'"),
    (["--suffix", "{lr"], "--suffix: '{lr'"), (["--seed", "-3"], "--seed: expected an integer in"),
])
def test_bad_training_flags(identity, tmp_path, capsys, extra, expected):
    with pytest.raises(SystemExit) as stop:
        train.cli(train_args(identity, tmp_path, "audio2feature", *extra))
    assert stop.value.code == 2 and expected in one_line_error(capsys, "train.py")


def test_corrupt_training_files(identity, tmp_path, capsys):
    args = train_args(identity, tmp_path, "audio2feature", "--n_epochs", "1", "--n_epochs_decay", "0")
    assert train.cli(args) == 0
    corrupt(state_path(tmp_path / "ckpt" / "audio2feature", "latest"))
    assert train.cli([*args, "--continue_train"]) == 2
    assert "training state" in one_line_error(capsys, "train.py")
    bad = tmp_path / "bad"
    shutil.copytree(identity, bad)
    corrupt(bad / "clips" / "clip_000" / "tracks_60fps.npz")
    assert train.cli(train_args(bad, tmp_path, "audio2feature", "--name", "b")) == 2
    assert "model-rate tracks" in one_line_error(capsys, "train.py")


def test_a_config_that_cannot_be_updated_is_refused_before_training(identity, tmp_path, capsys, monkeypatch):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "syn.yaml").write_text("model_params: 3\n")
    args = train_args(identity, tmp_path, "audio2feature", "--config_dir", str(tmp_path / "config"))
    assert train.cli(args) == 2
    assert "model_params" in one_line_error(capsys, "train.py")
    assert not (tmp_path / "ckpt" / "audio2feature" / "latest_state.pth").exists()  # refused before training
    (tmp_path / "config" / "syn.yaml").write_text("fps: 60\n")
    monkeypatch.setattr("train.os.access", lambda path, mode: False)
    assert train.cli([*args, "--overwrite"]) == 2
    assert "not writable" in one_line_error(capsys, "train.py")


def test_help_lists_the_models_own_flags(capsys):
    with pytest.raises(SystemExit):
        train.cli(["--model", "apc", "--help"])
    out = capsys.readouterr().out
    assert "--apc_hidden_size" in out and "--segment_length" in out and "--frame_future" not in out


@pytest.mark.parametrize("identity", ["../x", "/tmp/abs", "a b/c"])
def test_preprocess_identity_names(tmp_path, capsys, identity):
    code = load_script("preprocess").main(["--video", str(FIXTURES / "talk_4s.mp4"), "--id", identity,
                                           "--data_root", str(tmp_path / "data"), "--config_dir", str(tmp_path)])
    assert code == 2 and "an identity name" in one_line_error(capsys, "preprocess.py")
    assert not (tmp_path / "data").exists()


def test_truncated_video_warns(tmp_path):
    import logging

    from util.video import VideoReader, ffmpeg_exe

    full = tmp_path / "full.mp4"  # moov first, so a file cut short still opens (as a broken download does)
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(FIXTURES / "talk_4s.mp4"), "-c", "copy", "-movflags",
                    "+faststart", str(full)], check=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.6)])
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("lsp").addHandler(handler)
    try:
        reader = VideoReader(cut)
        frames = sum(1 for _ in reader)
    finally:
        logging.getLogger("lsp").removeHandler(handler)
    assert 0 < frames < reader.num_frames
    assert any("looks truncated" in r.getMessage() and f"read {frames} frames" in r.getMessage() for r in records)



def test_corrupt_preprocessing_record(tmp_path, capsys):
    (tmp_path / "data" / "x").mkdir(parents=True)
    (tmp_path / "data" / "x" / "meta.json").write_text('{"status": "done", "clips": [')
    code = load_script("preprocess").main(["--id", "x", "--only", "apc_features", "--apc_ckpt", "apc.pth",
                                           "--data_root", str(tmp_path / "data"), "--config_dir", str(tmp_path)])
    assert code == 2 and "meta.json: not valid JSON" in one_line_error(capsys, "preprocess.py")
