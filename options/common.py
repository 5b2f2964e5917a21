"""What every option class shares: printing the non-default values and saving opt.txt / opt.json."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from util.io import write_text

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
    """Write `<phase>_opt.txt` (human) and the same as JSON (machine-readable) into `folder`: `opt.json`
    for training and the demo, `<phase>_opt.json` otherwise, so testing a run never replaces the
    options it was trained with."""
    write_text(folder / f"{phase}_opt.txt", format_options(opt, parser) + "\n")
    name = "opt.json" if phase in ("train", "demo") else f"{phase}_opt.json"
    write_text(folder / name, json.dumps(vars(opt), indent=2, sort_keys=True, default=str) + "\n")


def log_non_defaults(opt: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Log the options whose value differs from the default (all of them with --verbose)."""
    changed = {k: v for k, v in vars(opt).items() if v != parser.get_default(k)}
    if changed:
        log.info("options: %s", ", ".join(f"{k}={v}" for k, v in sorted(changed.items())))
