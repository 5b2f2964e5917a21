"""What every option class shares: printing the non-default values and saving opt.txt / opt.json."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("lsp")


def format_options(opt: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """pix2pix's listing: one `name: value` per line, with `[default: x]` where the value differs."""
    lines = ["----------------- Options ---------------"]
    for key, value in sorted(vars(opt).items()):
        default = parser.get_default(key)
        note = f"\t[default: {default}]" if value != default else ""
        lines.append(f"{key:>25}: {value!s:<30}{note}")
    lines.append("----------------- End -------------------")
    return "\n".join(lines)


def save_options(opt: argparse.Namespace, parser: argparse.ArgumentParser, folder: Path, phase: str) -> None:
    """Write `<phase>_opt.txt` (human) and `opt.json` (machine-readable) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{phase}_opt.txt").write_text(format_options(opt, parser) + "\n")
    (folder / "opt.json").write_text(json.dumps(vars(opt), indent=2, sort_keys=True, default=str) + "\n")


def log_non_defaults(opt: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Log the options whose value differs from the default (all of them with --verbose)."""
    changed = {k: v for k, v in vars(opt).items() if v != parser.get_default(k)}
    if changed:
        log.info("options: %s", ", ".join(f"{k}={v}" for k, v in sorted(changed.items())))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a float >= 0."""
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value
