"""The evaluation report: side-by-side video, plots and the numbers, as results/<id>/report.html."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import cv2
import dominate
import numpy as np
from dominate.tags import h1, h2, img, li, p, pre, source, table, td, th, tr, ul, video

from datasets.identity import ClipFiles
from util.audio import SAMPLE_RATE, load_audio
from util.io import write_text
from util.video import VideoReader, VideoWriter


def _plots(out_dir: Path, series: dict, pred, real: dict, fps: float) -> list[str]:  # noqa: ANN001
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, ax = plt.subplots(figsize=(10, 3))
    ref = float(np.median(series["real"])) or 1.0
    for label, s in series.items():
        if s is not None and len(s):
            ax.plot(np.arange(len(s)) / fps, s / ref, label=label, lw=1)
    ax.set_xlabel("seconds")
    ax.set_ylabel("mouth opening (x median real)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "mouth_opening.png", dpi=100)
    names.append("mouth_opening.png")
    fig, axes = plt.subplots(2, 3, figsize=(12, 5), sharex=True)
    for k, (name, arr_p, arr_r) in enumerate((("rotation (deg)", pred.rotation, real["rot"]),
                                              ("translation", pred.translation, real["trans"]))):
        for a in range(3):
            ax = axes[k, a]
            ax.plot(np.arange(len(arr_r)) / fps, arr_r[:, a] - arr_r[:, a].mean(), label="real", lw=1)
            ax.plot(np.arange(len(arr_p)) / fps, arr_p[:, a] - arr_p[:, a].mean(), label="sampled", lw=1)
            ax.set_title(f"{name} {'xyz'[a]}, minus mean", fontsize=9)
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(out_dir / "head_pose.png", dpi=100)
    plt.close("all")
    names.append("head_pose.png")
    return names


def side_by_side(out_dir: Path, clip: ClipFiles, src_fps: float, rendered: Path, audio_path: Path, fps: float) -> Path:
    """real (held-out frames) | ours (rendered from the audio) | feature map, at the model rate, with audio."""
    frames = sorted(clip.frames.glob("*.jpg"))
    maps = rendered.with_name(rendered.stem + "_feature_maps.mp4")
    ours, fmaps = VideoReader(rendered), (VideoReader(maps) if maps.is_file() else None)
    path = out_dir / "side_by_side.mp4"
    size = (ours.height, ours.width * (3 if fmaps else 2))
    with VideoWriter(path, fps, size, load_audio(audio_path), SAMPLE_RATE) as writer:
        fmap_iter = iter(fmaps) if fmaps else None
        for k, frame in enumerate(ours):
            j = min(int(k / fps * src_fps), len(frames) - 1)
            real = cv2.cvtColor(cv2.imread(str(frames[j])), cv2.COLOR_BGR2RGB)
            row = [cv2.resize(real, (ours.width, ours.height)), frame]
            if fmap_iter is not None:
                row.append(next(fmap_iter, np.zeros_like(frame)))
            writer.write(np.concatenate(row, 1))
    return path


def _table(rows: list[tuple[str, str]]) -> table:
    t = table(border=1, cellpadding=4)
    with t:
        tr(th("metric"), th("value"))
        for k, v in rows:
            tr(td(k), td(v))
    return t


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def write_report(out_dir: Path, results: dict, samples: list, series: dict, pred, real: dict, src: dict,  # noqa: ANN001
                 clip: ClipFiles, rendered: Path, driving: dict, fps: float) -> Path:
    """Write the plots, the side-by-side video, sample frames and report.html; returns the page."""
    plots = _plots(out_dir, series, pred, real, fps)
    sbs = side_by_side(out_dir, clip, float(src["fps"]), rendered, driving["heldout"], fps)
    for i, s in enumerate(samples):
        cv2.imwrite(str(out_dir / f"renderer_sample_{i}.png"), cv2.cvtColor(s, cv2.COLOR_RGB2BGR))
    other = driving["other_speaker"]
    other_video = Path(other.stem) / f"{other.stem}.mp4"
    doc = dominate.document(title=f"Live Speech Portraits: {results['identity']}")
    with doc:
        h1(f"Identity '{results['identity']}': evaluation on the held-out tail ({results['heldout_seconds']:.1f} s)")
        p(f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, {platform.processor() or 'cpu'}.")
        h2("Held-out tail: real | ours (from the audio, sampled head motion) | feature map")
        with video(controls=True, width=min(3 * 256, 900)):
            source(src=sbs.name, type="video/mp4")
        h2(f"Another speaker: {other.name}")
        with video(controls=True, width=300):
            source(src=str(other_video), type="video/mp4")
        h2("Numbers")
        r = results
        rows = [("renderer PSNR (dB), tracked landmarks in", _fmt(r["renderer"]["psnr_db"])),
                ("renderer SSIM", _fmt(r["renderer"]["ssim"])),
                *([("renderer LPIPS (AlexNet)", _fmt(r["renderer"]["lpips_alex"]))]
                  if "lpips_alex" in r["renderer"] else []),
                ("audio->mouth M-LMD (px in a 512 crop)", _fmt(r["audio_to_mouth"]["m_lmd_px"])),
                ("audio->mouth opening correlation", _fmt(r["audio_to_mouth"]["opening_correlation"]))]
        if r["end_to_end"]:
            rows += [("end to end M-LMD (rendered video re-tracked, px)", _fmt(r["end_to_end"]["m_lmd_px"])),
                     ("end to end opening correlation", _fmt(r["end_to_end"]["opening_correlation"]))]
        for label, key in (("real held-out", "real_heldout"), ("ours, held-out audio", "ours_heldout"),
                           ("ours, other speaker", "ours_other_speaker")):
            if key in r.get("lip_sync", {}):
                rows.append((f"LSE-D / LSE-C (SyncNet): {label}",
                             f"{_fmt(r['lip_sync'][key]['lse_d'])} / {_fmt(r['lip_sync'][key]['lse_c'])}"))
        rows += _lipsync_rows(r)
        rows += [("mouth opening vs loudness: predicted / real", f"{_fmt(r['mouth_vs_loudness']['predicted'])} / "
                  f"{_fmt(r['mouth_vs_loudness']['real'])}"),
                 (f"head rotation std (deg): sampled, mean of {r['head_pose']['sampled'].get('draws', 1)} draws",
                  _fmt(r["head_pose"]["sampled"]["rot_std_deg"])),
                 ("head rotation std (deg): real", _fmt(r["head_pose"]["real"]["rot_std_deg"])),
                 ("head rotation speed (deg/s): sampled / real", f"{_fmt(r['head_pose']['sampled']['rot_speed_deg_s'])}"
                  f" / {_fmt(r['head_pose']['real']['rot_speed_deg_s'])}"),
                 *_person_rows(r),
                 ("other speaker: mouth opening vs loudness", _fmt(r["other_speaker"]["mouth_vs_loudness"])),
                 *([("other speaker: our mouth opening vs the speaker's own (tracked in the driving video)",
                     _fmt(r["other_speaker"]["opening_correlation_vs_speaker"]))]
                   if "opening_correlation_vs_speaker" in r["other_speaker"] else [])]
        rows += [(f"speed: {k}", _fmt(v)) for k, v in r["speed"].items()]
        _table(rows)
        h2("Plots")
        for name in plots:
            img(src=name, style="max-width: 100%")
        h2("Renderer on held-out frames: real | rendered from tracked landmarks | feature map")
        for i in range(len(samples)):
            img(src=f"renderer_sample_{i}.png", style="max-width: 100%")
        h2("Skipped metrics")
        with ul():
            for k, v in r["skipped_metrics"].items():
                li(f"{k}: {v}")
        h2("Training")
        pre(_fmt_training(r["training"]))
    path = out_dir / "report.html"
    write_text(path, doc.render())
    return path


def _person_rows(r: dict) -> list[tuple[str, str]]:
    """The person's own head-rotation spread (training clips), against which other speech is judged."""
    person = r["head_pose"].get("person")
    if not person:
        return []
    other = r["other_speaker"].get("head_pose", {}).get("rot_std_deg")
    return [("head rotation std (deg): the person, training clips", _fmt(person["rot_std_deg"])),
            (f"head rotation std (deg): the person over {person['window_seconds']:.0f} s stretches, 5th-95th "
             "percentile", " ".join(f"[{lo:.2f}, {hi:.2f}]" for lo, hi in person["window_rot_std_deg_range"])),
            *([("head rotation std (deg): other speaker, sampled", _fmt(other))] if other else [])]


def _lipsync_rows(r: dict) -> list[tuple[str, str]]:
    """Rows of the weight-free lip-sync measure (lipsync.py), when metrics.json has them."""
    pairs = (("A/V offset, own measure (ms, + = mouth after sound): real / ours", "sync_offset_ms"),
             ("A/V sync confidence, own measure: real / ours", "sync_confidence"),
             ("mouth opening in silence (x face width): real / ours", "silence_opening"),
             ("mouth-crop sharpness (gradient energy), renderer: real / ours", "mouth_sharpness"))
    rows = [(label, f"{_fmt(r[f'{key}_real'])} / {_fmt(r[f'{key}_ours'])}") for label, key in pairs
            if f"{key}_real" in r]
    if "sync_offset_ms_predicted" in r:
        rows.append(("A/V offset / confidence, own measure: the mouth model's output before rendering",
                     f"{_fmt(r['sync_offset_ms_predicted'])} / {_fmt(r['sync_confidence_predicted'])}"))
    if "mouth_psnr" in r:
        rows.append(("mouth-crop PSNR (dB), renderer, tracked landmarks in", _fmt(r["mouth_psnr"])))
    return rows


def _fmt_training(training: dict) -> str:
    lines = []
    for k, v in training.items():
        lines.append(f"{k}: " + ", ".join(f"{a}={_fmt(b)}" for a, b in v.items()))
    return "\n".join(lines)
