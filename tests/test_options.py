"""Options: two-pass parse, one registry, typed flags, saving, and every option read is declared."""

from __future__ import annotations

import json
import re

import pytest
from conftest import ROOT

from options.test_options import TestOptions
from options.train_options import TrainOptions
from util import registry


def test_registry_lists_every_stage_and_dataset():
    assert registry.available("model") == ("apc", "audio2feature", "audio2headpose", "feature2face")
    assert registry.available("dataset") == ("audio", "audiovisual", "face")
    with pytest.raises(ValueError, match="unknown --dataset_mode 'x'; available: audio, audiovisual, face"):
        registry.find("dataset", "x")


@pytest.mark.parametrize("flag,value", [("--model", "cycle_gan"), ("--dataset_mode", "aligned")])
def test_unknown_names_are_errors_listing_choices(capsys, flag, value):
    with pytest.raises(SystemExit) as exc:
        TrainOptions().parse([flag, value, "--dry_run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid choice: '{value}'" in err
    assert ("audio2feature" if flag == "--model" else "audiovisual") in err  # the available names are listed


def test_model_and_dataset_add_their_flags_and_defaults(tmp_path):
    opt = TrainOptions().parse(["--model", "audio2headpose", "--checkpoints_dir", str(tmp_path), "--name", "x"])
    assert opt.dataset_mode == "audiovisual" and opt.frame_future == 15 and opt.frame_jump_stride == 1
    assert opt.lr_policy == "step" and opt.lr_gamma == 0.2 and opt.gpu_ids == [] and opt.is_train
    opt = TrainOptions().parse(["--model", "audio2feature", "--checkpoints_dir", str(tmp_path), "--name", "y"])
    assert opt.frame_jump_stride == 4  # the model tunes its dataset's default
    saved = json.loads((tmp_path / "y" / "opt.json").read_text())
    assert saved["model"] == "audio2feature" and (tmp_path / "y" / "train_opt.txt").is_file()
    with pytest.raises(SystemExit):
        TrainOptions().parse(["--model", "audio2feature", "--frame_future", "abc"])  # typed


def test_dry_run_prints_resolved_options_and_marks_non_defaults(capsys, tmp_path):
    TrainOptions().parse(["--model", "feature2face", "--lr", "0.01", "--dry_run", "--checkpoints_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "lambda_L1: 100.0" in out and re.search(r"lr: 0\.01\s+\[default: 0\.0001\]", out)
    assert not (tmp_path / "experiment_name").exists()


def test_every_flag_has_help_and_type():
    for name in registry.available("model"):
        for opts in (TrainOptions(), TestOptions()):
            parser = opts.initialize(__import__("argparse").ArgumentParser())
            registry.find("model", name).modify_commandline_options(parser, opts.is_train)
            for action in parser._actions:
                if action.dest == "help":
                    continue
                assert action.help, f"--{action.dest} has no help"
                if action.nargs != 0:  # not a store_true
                    assert action.type is not None or action.choices, f"--{action.dest} has no type"


@pytest.mark.parametrize("model", registry.available("model"))
def test_options_read_by_models_and_datasets_are_declared(model, tmp_path):
    opt = TrainOptions().parse(["--model", model, "--checkpoints_dir", str(tmp_path)], save=False)
    model_cls = registry.find("model", model)
    files = [ROOT / "models" / f"{model}_model.py", ROOT / "models" / "base_model.py",
             ROOT / "datasets" / f"{opt.dataset_mode}_dataset.py", ROOT / "datasets" / "base_dataset.py",
             ROOT / "datasets" / "__init__.py"]
    read = set()
    for f in files:
        read |= set(re.findall(r"\bopt\.([a-zA-Z_]\w*)", f.read_text()))
    read -= {"model", "is_train", "phase"}  # set by validate()
    getattr_reads = {"amp", "grad_clip", "verbose", "debug", "max_dataset_size"}  # read with a default
    missing = sorted(k for k in read if not hasattr(opt, k) and k not in getattr_reads)
    assert missing == [], f"{model_cls.__name__} or its dataset reads undeclared options {missing}"
