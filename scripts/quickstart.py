"""The bundled example end to end, on a laptop-class CPU, with no downloads:

    python scripts/quickstart.py [--profile fast|gpu|tiny] [--device cpu|cuda] [--lookahead_ms 150]

1. preprocess the bundled clip (data/example_src/TedLieu_60s.mp4) into data/example/
2. write the identity's APC features with the bundled encoder (data/apc/, trained on 81 min of speech;
   --train_apc pre-trains one on --speech instead)
3. train audio2feature (--mouth_models of them, seeds 0, 1, ..., then one more that learns their average on
   other speakers' speech: --teacher_ckpts), audio2headpose and feature2face with the profile's budget, the
   audio stages with --lookahead_ms of lookahead (the live latency floor)
4. drive the result with the held-out tail's audio and with another speaker's speech
5. evaluate and write results/example/report.html and metrics.json
6. on a CPU, export the renderer to ONNX (float32 and int8) for the live page: scripts/serve.py --backend onnx_int8
Every step is skipped when its output exists, so a second run reuses what is done (--force redoes).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "data" / "example_src"
RELEASE_LOOKAHEAD_MS = 300  # LSP §1.13: 18 frames of mouth lookahead at 60 fps
# Half the release's: on the example (fast profile, seeds 0-4, one machine) the held-out opening correlation
# was 0.62 / 0.69 / 0.70 / 0.61 / 0.72 (mean 0.67, M-LMD 6.04 px) against 0.60 / 0.72 / 0.55 / 0.59 / 0.63
# at 300 ms (mean 0.62, 6.29 px), at 150 ms less live latency
DEFAULT_LOOKAHEAD_MS = 150
MAX_POSE_LOOKAHEAD = 15  # LSP §1.13: the pose model's own lookahead; never more than the mouth's

# Training budgets: `fast` fits about 12-20 minutes on 2 CPU cores (18.4 measured with three mouth models);
# `gpu` is the full-size recipe; `tiny` is the CI smoke run.
PROFILES = {
    "fast": {
        "size": 256,
        # mouth models trained with seeds 0, 1, ... whose outputs the runtime averages (config ckp_path lists
        # them): on the example at 150 ms, one model's held-out opening correlation was 0.61-0.72 over seeds
        # 0-4 (mean 0.67), three consecutive seeds' average 0.67-0.70 (mean 0.69)
        "mouth_models": 3,
        # then member 0 fine-tuned to their average on the 12 min of --speech (and to the clips) runs alone: on
        # the example 0.71 from member 0 or 1 (the three averaged 0.69), a fifth of the members' time
        "distill": ["--max_iters", "150", "--batch_size", "16", "--distill_batch", "16"],
        "apc": ["--apc_hidden_size", "256", "--segment_length", "240", "--batch_size", "16", "--max_iters", "300",
                "--lr", "1e-3"],
        # the average of the last ~50 steps' weights, as trained (its validation M-LMD prefers an early, nearly
        # closed mouth), at batch 32 and 300 ms: held-out opening correlation 0.60 / 0.77 / 0.68 / 0.63 / 0.67
        # over seeds 0-4 (mean 0.67) on one machine, against a mean of 0.61 at batch 16, 0.57 for the best
        # checkpoint of plain training and 0.56 for its last (noise on the input features added nothing)
        "audio2feature": ["--sequence_length", "120", "--batch_size", "32", "--frame_jump_stride", "8",
                          "--max_iters", "300", "--lr", "1e-3", "--val_freq", "5", "--ema_decay", "0.98",
                          "--config_checkpoint", "latest"],
        # long windows share the WaveNet's 255-frame receptive field: 2.4x cheaper per target frame
        "audio2headpose": ["--time_frame_length", "240", "--batch_size", "4", "--frame_jump_stride", "10",
                           "--a2h_wavenet_residual_channels", "64", "--a2h_wavenet_dilation_channels", "64",
                           "--a2h_wavenet_skip_channels", "128", "--a2h_wavenet_cond_channels", "256",
                           "--max_iters", "600", "--lr", "1e-3", "--val_freq", "4"],
        # L1 + the mouth box's L1 and pixel-difference L1 only, at a high rate: without the discriminator an
        # iteration costs 0.43 s instead of 0.67, and in this budget the GAN gave no texture, only lower
        # fidelity (held-out PSNR 24.5 dB with it at 2e-4 and 700 iterations, 26.4 dB and sharper mouths
        # without it at 1e-3 and 1150). The pixel-difference term (--lambda_grad 100, the default) gave 27.8 /
        # 28.0 dB against 26.3 / 25.9 without it (seeds 0 / 1), mouth sharpness 4058 / 4481 against 3808 /
        # 3635; over the whole frame it lost (25.8 dB, seed 0). The budget
        # becomes whole epochs of the identity's clips, the last third decaying (`whole_epochs`): for the
        # example, 3 epochs of 338 batches, the last at half the rate and validated.
        "feature2face": ["--ngf", "16", "--no_discriminator", "--batch_size", "4", "--max_iters", "1014", "--lr",
                         "1e-3"],
    },
    # Full-size networks at 512² for one GPU (about 15 minutes on an H200 by the budgets below, not measured
    # here: this machine has no GPU); on a CPU only its flags and networks are tested.
    "gpu": {
        "size": 512,
        "mouth_models": 3,
        "distill": ["--max_iters", "1000", "--batch_size", "16", "--distill_batch", "16"],
        "apc": ["--segment_length", "480", "--batch_size", "32", "--max_iters", "3000", "--lr", "1e-3", "--amp"],
        "audio2feature": ["--sequence_length", "240", "--batch_size", "32", "--frame_jump_stride", "4",
                          "--max_iters", "2000", "--lr", "1e-3", "--val_freq", "5", "--amp"],
        "audio2headpose": ["--time_frame_length", "240", "--batch_size", "16", "--frame_jump_stride", "5",
                           "--max_iters", "4000", "--lr", "1e-3", "--val_freq", "5", "--amp"],
        "feature2face": ["--size", "large", "--batch_size", "4", "--max_iters", "6000", "--lr", "2e-4",
                         "--n_epochs", "4", "--n_epochs_decay", "2", "--num_threads", "8", "--amp"],
    },
    "tiny": {
        "size": 128,
        "mouth_models": 2,
        "distill": ["--max_iters", "4", "--batch_size", "4", "--distill_batch", "4", "--distill_seconds", "20"],
        "apc": ["--apc_hidden_size", "64", "--apc_layers", "2", "--segment_length", "120", "--batch_size", "8",
                "--max_iters", "10", "--max_dataset_size", "40"],
        "audio2feature": ["--sequence_length", "60", "--batch_size", "8", "--frame_jump_stride", "30",
                          "--lstm_hidden_size", "32", "--a2f_hidden_size", "64", "--max_iters", "10", "--ema_decay",
                          "0.9", "--config_checkpoint", "latest"],
        "audio2headpose": ["--time_frame_length", "20", "--batch_size", "4", "--frame_jump_stride", "60",
                           "--a2h_wavenet_residual_layers", "4", "--a2h_wavenet_residual_channels", "16",
                           "--a2h_wavenet_dilation_channels", "16", "--a2h_wavenet_skip_channels", "16",
                           "--a2h_wavenet_cond_channels", "32", "--max_iters", "10"],
        "feature2face": ["--ngf", "8", "--ndf", "8", "--batch_size", "2", "--max_iters", "10", "--frame_jump", "20"],
    },
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from models.evaluation.evaluate import add_metric_weight_flags, metric_weights
    from util.argtypes import ArgumentParser, non_negative_float, positive_int

    p = ArgumentParser(prog="quickstart.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", type=str, default="fast", choices=tuple(PROFILES), help="training budget")
    p.add_argument("--id", type=str, default="example", help="identity name of the example")
    p.add_argument("--video", type=Path, default=SOURCE / "TedLieu_60s.mp4", help="the clip to learn")
    p.add_argument("--speech", type=Path, default=SOURCE / "speech", help="speech for APC pre-training")
    p.add_argument("--driving_audio", type=Path, default=SOURCE / "eng_12s.ogg",
                   help="another speaker's speech to drive the result")
    p.add_argument("--device", type=str, default="cpu", help="cpu or cuda (training uses GPU 0 with cuda)")
    p.add_argument("--checkpoints_dir", type=Path, default=ROOT / "checkpoints", help="training runs go here")
    p.add_argument("--results_dir", type=Path, default=ROOT / "results", help="videos and the report go here")
    p.add_argument("--data_root", type=Path, default=ROOT / "data", help="identities live here")
    p.add_argument("--config_dir", type=Path, default=ROOT / "config", help="config/<id>.yaml goes here")
    p.add_argument("--force", action="store_true", help="redo every step")
    p.add_argument("--lookahead_ms", type=non_negative_float, default=DEFAULT_LOOKAHEAD_MS,
                   help="audio the mouth model may wait for (300 = the release; 0 = none): the live latency floor")
    p.add_argument("--mouth_models", type=positive_int, default=None,
                   help="mouth models (seeds 0, 1, ...) whose average one more mouth model learns (default: the "
                        "profile's)")
    p.add_argument("--no_distill", action="store_true",
                   help="no distilled mouth model: the runtime averages the --mouth_models themselves (1 = the "
                        "release's single model)")
    p.add_argument("--apc_ckpt", type=Path, default=None,
                   help="the audio encoder (default: the bundled data/apc/apc_h256.pth)")
    p.add_argument("--train_apc", action="store_true", help="pre-train the audio encoder on --speech instead")
    add_metric_weight_flags(p)
    args = p.parse_args(argv)
    args.weights = metric_weights(p, args)
    args.mouth_models = args.mouth_models or PROFILES[args.profile]["mouth_models"]
    return args


def run_step(name: str, fn: Callable[[list[str]], int], args: list[str]) -> None:
    """Run one CLI entry point in-process; stop the quickstart with its message when it fails."""
    start = time.time()
    print(f"\n== {name}", flush=True)
    code = fn(args)
    if code != 0:
        raise StepError(f"step '{name}' failed (exit {code}); fix the message above and rerun")
    print(f"== {name}: done in {time.time() - start:.0f} s", flush=True)


def lookahead_frames(a: argparse.Namespace, fps: float = 60.0) -> dict[str, int]:
    """--lookahead_ms as frames: the mouth model's, its smoothing's (within the same budget) and the pose
    model's (the release's 15 frames, never more than the mouth's, so the choice sets the latency)."""
    frames = round(a.lookahead_ms * fps / 1000)
    return {"audio2feature": frames, "smooth": min(2, frames // 4), "audio2headpose": min(MAX_POSE_LOOKAHEAD, frames)}


def run_name(a: argparse.Namespace, stage: str, member: int = 0, distilled: bool = False) -> str:
    """<id>_<stage>, with the lookahead when it is not the release's (each choice is its own model) and, for
    the mouth models after the first, _m<member> (_distilled for the one that learns their average)."""
    audio = stage in ("audio2feature", "audio2headpose") and a.lookahead_ms != RELEASE_LOOKAHEAD_MS
    return f"{a.id}_{stage}" + (f"_{a.lookahead_ms:g}ms" if audio else "") + (f"_m{member}" if member else "") + \
        ("_distilled" if distilled else "")


def with_flags(flags: list[str], overrides: list[str]) -> list[str]:
    """`flags` with the value of each "--name value" pair of `overrides` replaced, or the pair appended."""
    out = list(flags)
    for name, value in zip(overrides[::2], overrides[1::2]):
        if name in out:
            out[out.index(name) + 1] = value
        else:
            out += [name, value]
    return out


def train_stage(a: argparse.Namespace, stage: str, dataroot: Path, timings: dict, member: int = 0,
                teachers: list[Path] | None = None) -> Path:
    """Train (or resume, or skip) one stage (of the mouth models, the one seeded `member`, or with `teachers`
    the one that starts from the first of them and learns their average); returns its network checkpoint."""
    import train
    from datasets.identity import STAGES, IdentityFiles
    from util.checkpoint import load_checkpoint_state, network_path, state_path

    name = run_name(a, stage, member, distilled=bool(teachers))
    run = a.checkpoints_dir / name
    ckpt = network_path(run, "latest", STAGES[stage].network)
    flags = PROFILES[a.profile][stage] + (["--seed", str(member)] if member else [])
    if teachers:
        flags = [*with_flags(flags, PROFILES[a.profile]["distill"]), "--init_weights", str(teachers[0]),
                 "--teacher_ckpts", *map(str, teachers), "--distill_speech", str(a.speech)]
    if stage in ("audio2feature", "audio2headpose"):
        flags = [*flags, "--frame_future", str(lookahead_frames(a)[stage])]
    if stage == "audio2headpose":
        flags = [*flags, "--motion_speech", str(a.speech)]
    common = ["--model", stage, "--dataroot", str(dataroot), "--name", name, "--checkpoints_dir",
              str(a.checkpoints_dir), "--gpu_ids", "0" if a.device.startswith("cuda") else "-1", "--config_dir",
              str(a.config_dir), "--display_freq", "100", "--print_freq", "50"]
    if not a.device.startswith("cuda"):  # load data in the training process: on 2 cores, loader processes took
        common += ["--num_threads", "0"]  # cores from training (9-10 % slower per iteration with 2 of them)
    if stage == "feature2face" and "--n_epochs" not in flags:
        flags = whole_epochs(common, flags)
    target = int(flags[flags.index("--max_iters") + 1])
    args = [*common, *flags]
    features = IdentityFiles(dataroot).apc_base
    stale = stage in ("audio2feature", "audio2headpose") and ckpt.is_file() and features.is_file() and \
        ckpt.stat().st_mtime < features.stat().st_mtime
    older = [t for t in teachers or [] if ckpt.is_file() and t.is_file() and ckpt.stat().st_mtime < t.stat().st_mtime]
    if stale:
        print(f"\n== train {stage}: {run} was trained on older audio features than {features}; training anew")
    elif older:
        stale = True
        print(f"\n== train {stage}: {run} learnt from an older {older[0]}; training anew")
    if state_path(run, "latest").is_file() and not a.force and not stale:
        done = load_checkpoint_state(run, "latest", "training state")["total_iters"]
        if done >= target:
            print(f"\n== train {stage}: reusing {ckpt} ({done} iterations)")
            reuse_run(common, flags, run)
            return ckpt
        args.append("--continue_train")
    else:
        args.append("--overwrite")  # --force redoes the step; without a latest checkpoint nothing can resume
    start = time.time()
    run_step(f"train {stage}", train.cli, args)
    key = f"train_{stage}_s"
    timings[key] = timings.get(key, 0.0) + time.time() - start
    return ckpt


def train_mouth_models(a: argparse.Namespace, dataroot: Path, timings: dict) -> None:
    """Train --mouth_models mouth models, seeds 0, 1, ..., then one that starts from the first and learns their
    average on other speakers' speech (train.py points config/<id>.yaml at it). With --no_distill and more
    than one, point the config's Audio2Mouth.ckp_path at the list of the checkpoints their training chose
    (the runtime averages them)."""
    from datasets.identity import STAGES, load_config, project_path, set_config_value, stage_checkpoints

    chosen = []
    for member in range(a.mouth_models):
        if a.mouth_models > 1:
            print(f"\n== mouth model {member + 1} of {a.mouth_models} (seed {member})", flush=True)
        train_stage(a, "audio2feature", dataroot, timings, member)
        chosen += stage_checkpoints(load_config(a.id, a.config_dir), "audio2feature")[:1]
    if not a.no_distill:
        print(f"\n== one mouth model learns the average of the {len(chosen)} on other speakers' speech", flush=True)
        train_stage(a, "audio2feature", dataroot, timings, teachers=chosen)
    elif a.mouth_models > 1:
        set_config_value(a.config_dir, a.id, ("model_params", STAGES["audio2feature"].section, "ckp_path"),
                         [project_path(p) for p in chosen])


def whole_epochs(common: list[str], flags: list[str]) -> list[str]:
    """`flags` with their --max_iters budget spent in as many whole epochs of the identity's clips as fit (a
    short clip gets more epochs, a long one fewer), the last third of them with a linearly decaying rate
    (--n_epochs / --n_epochs_decay), so the last epoch ends the run and is validated. A budget shorter
    than one epoch stays as it is, at a constant rate."""
    from datasets import create_dataset
    from models import create_model
    from options.train_options import TrainOptions

    opt = TrainOptions().parse([*common, *flags, "--overwrite"], save=False)  # only read: nothing is written
    spec = create_model(opt).data_spec()  # how the model cuts the clips into samples
    batches = math.ceil(len(create_dataset(opt, "train", spec)) / opt.batch_size)
    epochs = opt.max_iters // max(batches, 1)
    if epochs == 0:
        return [*flags, "--n_epochs", "1", "--n_epochs_decay", "0"]
    decay = epochs // 3
    at = flags.index("--max_iters")
    return [*flags[:at], "--max_iters", str(epochs * batches), *flags[at + 2 :], "--n_epochs", str(epochs - decay),
            "--n_epochs_decay", str(decay)]


def reuse_run(common: list[str], flags: list[str], run: Path) -> None:
    """A finished run that is reused: point config/<id>.yaml at it as its training did, with the same flags
    (a second run may switch lookahead); the head motion is calibrated again only when that moved the config."""
    import train
    from datasets.identity import STAGES
    from options.train_options import TrainOptions
    from util.checkpoint import load_checkpoint_state, load_file, network_path

    opt = TrainOptions().parse([*common, *flags, "--continue_train"], save=False)  # only read: nothing is written
    best = load_checkpoint_state(run, "latest", "training state")["extra"].get("best")
    meta = load_file(network_path(run, "latest", STAGES[opt.model].network), "checkpoint", mmap=True).get("meta", {})
    train.point_identity_at_run(opt, best, meta, retrained=False)


class StepError(RuntimeError):
    """A step of the quickstart ended with a non-zero status (its own message is printed above)."""


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from util.errors import run_cli
    from util.log import get_logger

    get_logger()
    return run_cli("quickstart.py", lambda: quickstart(a), {StepError: 1})


def quickstart(a: argparse.Namespace) -> None:
    """Every step of the quickstart, each skipped when its output exists."""
    import json

    from datasets.identity import (
        BUNDLED_APC,
        STAGES,
        IdentityFiles,
        check_identity_name,
        project_path,
        set_config_value,
    )
    from models.evaluation.evaluate import demo_and_evaluate

    check_identity_name(a.id)
    preprocess = _load("preprocess")
    prof = PROFILES[a.profile]
    identity = a.data_root / a.id
    timings: dict[str, float] = {}
    start = time.time()
    common = ["--data_root", str(a.data_root), "--config_dir", str(a.config_dir)]
    meta = IdentityFiles(identity).meta
    if a.force or not meta.is_file() or json.loads(meta.read_text()).get("status") != "done":
        t = time.time()
        run_step("preprocess the example clip", preprocess.main,
                 ["--video", str(a.video), "--id", a.id, "--size", str(prof["size"]), *common,
                  *(["--force"] if a.force else [])])
        timings["preprocess_s"] = time.time() - t
    apc = train_stage(a, "apc", a.speech, timings) if a.train_apc else (a.apc_ckpt or BUNDLED_APC)
    if not apc.is_file():
        raise StepError(f"--apc_ckpt {apc}: no such file (the bundled encoder is data/apc/apc_h256.pth; "
                        "--train_apc pre-trains one)")
    files = IdentityFiles(identity)
    if a.force or not files.apc_base.is_file() or json.loads(files.meta.read_text()).get("apc_checkpoint") != \
            project_path(apc) or files.apc_base.stat().st_mtime < apc.stat().st_mtime:
        run_step("APC features of the example", preprocess.main,
                 ["--id", a.id, "--only", "apc_features", "--apc_ckpt", str(apc), *common])
    for stage in STAGES:
        if stage == "audio2feature":
            train_mouth_models(a, identity, timings)
        elif stage != "apc":
            train_stage(a, stage, identity, timings)
    set_config_value(a.config_dir, a.id, ("model_params", "Audio2Mouth", "smooth_lookahead"),
                     lookahead_frames(a)["smooth"])
    report = demo_and_evaluate(a.id, a.data_root, a.config_dir, a.results_dir, a.driving_audio, a.device,
                               timings, a.weights, a.speech if a.train_apc else None)
    live = "" if a.device.startswith("cuda") else f" --backend {export_live_renderer(a)} --frame_step 2"
    print(f"\nquickstart done in {(time.time() - start) / 60:.1f} min: open {report}\n"
          f"live in a browser: python scripts/serve.py --id {a.id}{live}")


def export_live_renderer(a: argparse.Namespace) -> str:
    """The renderer as ONNX float32 and int8 (the live server's CPU backends), unless both are newer than
    the renderer checkpoint; returns the backend to serve with (onnx when int8 could not be made)."""
    from datasets.identity import config_path, load_config
    from models.runtime.renderer import ONNX_FILES, onnx_renderer_path

    cfg = load_config(a.id, a.config_dir)
    ckpt = config_path(cfg, ("model_params", "Image2Image", "ckp_path"))
    files = [onnx_renderer_path(cfg, backend) for backend in ONNX_FILES]
    if a.force or any(not f.is_file() or f.stat().st_mtime < ckpt.stat().st_mtime for f in files):
        try:
            run_step("export the renderer for the live page (ONNX float32 and int8)", _load("export_onnx").main,
                     ["--id", a.id, "--config_dir", str(a.config_dir), "--int8"])
        except StepError as err:  # the results are made; only the live page's fastest backend is missing
            print(f"warning: {err}")
    return "onnx_int8" if all(f.is_file() for f in files) else "onnx"


def _load(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    sys.exit(main())
