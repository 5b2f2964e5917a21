"""Headless Chromium driving the live page with a fake microphone (tests and scripts/benchmark.py --serve).

Debian's full Chromium is used (Playwright's own headless shell cannot open a microphone, and its
browser download is not reachable everywhere); `--use-file-for-fake-audio-capture` makes a WAV file the
microphone, played once from the moment the page opens it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
QUIET_ARGS = ("--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required")


def unavailable() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -r requirements.txt)"
    if not CHROMIUM.is_file() and shutil.which("chromium") is None:
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None


def chromium_args(wav: Path | None, allow_microphone: bool = True) -> list[str]:
    """Flags for a fake microphone speaking `wav` once (or a silent fake device when None); without
    `allow_microphone` the page's request for it is refused, as by a user saying no."""
    fake = ["--use-fake-device-for-media-stream"] + (["--use-fake-ui-for-media-stream"] if allow_microphone else [])
    if wav is not None:
        fake.append(f"--use-file-for-fake-audio-capture={wav}%noloop")
    return [*fake, *QUIET_ARGS]


class Viewer:
    """One tab of the live page."""

    def __init__(self, page: object, url: str) -> None:
        self.page, self.url = page, url
        page.goto(url)
        page.wait_for_function("document.querySelectorAll('#identity option').length > 0")

    def start_mic(self, identity: str | None = None) -> None:
        if identity:
            self.page.select_option("#identity", identity)
        self.page.click("#start-mic")

    def start_file(self, path: Path, identity: str | None = None) -> None:
        if identity:
            self.page.select_option("#identity", identity)
        self.page.set_input_files("#file", str(path))
        self.page.click("#start-file")

    def stop(self) -> None:
        self.page.click("#stop")
        self.page.wait_for_function("window.lsp.state === 'idle'")

    def state(self) -> dict:
        """The page's measurements (window.lsp) and its figures as shown."""
        return self.page.evaluate("({...window.lsp, figures: figures(), message: "
                                  "document.getElementById('message').textContent})")

    def wait(self, condition: str, timeout: float) -> None:
        """Until the JavaScript `condition` holds (on window.lsp), or a page error, or `timeout` seconds."""
        self.page.wait_for_function(f"window.lsp.error !== null || ({condition})", timeout=timeout * 1000)
        error = self.page.evaluate("window.lsp.error")
        if error:
            raise RuntimeError(f"the page reports: {error}")

    def run_for(self, seconds: float, on_tick: object = None) -> None:
        """Let the session run `seconds`, calling on_tick(state) about every second."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.page.wait_for_timeout(min(1000, max(1, 1000 * (end - time.monotonic()))))
            if on_tick is not None:
                on_tick(self.state())


@contextmanager
def chromium(wav: Path | None = None, allow_microphone: bool = True) -> Iterator[object]:
    """A headless Chromium (Playwright Browser) whose microphone speaks `wav`."""
    from playwright.sync_api import sync_playwright

    exe = CHROMIUM if CHROMIUM.is_file() else Path(shutil.which("chromium"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(exe), headless=True, args=chromium_args(wav, allow_microphone))
        try:
            yield browser
        finally:
            browser.close()
