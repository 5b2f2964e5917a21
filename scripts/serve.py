"""Watch a portrait live in the browser: speak into the microphone and see and hear it say your words.

    python scripts/serve.py --id example [--device cuda] [--backend torch|compile|onnx] [--port 8080]

Open the printed address, pick an identity, press Start microphone (or choose an audio file). The
server (models/live) listens on 127.0.0.1 unless --host says otherwise; any other host needs the token
it prints (or --token). Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.live.runtime import SessionSettings
from models.runtime.renderer import BACKENDS
from util.argtypes import ArgumentParser, non_negative_float, non_negative_int, positive_int, seed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="serve.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--id", type=str, required=True, help="identity loaded at start (the page lists every trained one)")
    p.add_argument("--config_dir", type=Path, default=None, help="folder of <id>.yaml files (default: config/)")
    p.add_argument("--device", type=str, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--backend", type=str, default="torch", choices=BACKENDS,
                   help="renderer backend (onnx, onnx_int8: the files scripts/export_onnx.py [--int8] writes; CPU)")
    p.add_argument("--host", type=str, default="127.0.0.1",
                   help="address to listen on; anything but loopback requires the token")
    p.add_argument("--port", type=non_negative_int, default=8080, help="port to listen on (0: any free port)")
    p.add_argument("--token", type=str, default=None,
                   help="access token (default: a random one when --host is not loopback, none on loopback)")
    p.add_argument("--tls_cert", type=Path, default=None,
                   help="certificate file (PEM): serve https, which browsers require for the microphone on any "
                        "address but localhost (with --tls_key)")
    p.add_argument("--tls_key", type=Path, default=None, help="the certificate's private key file (PEM)")
    p.add_argument("--max_sessions", type=positive_int, default=4, help="concurrent live sessions; more get 'busy'")
    p.add_argument("--max_upload_mb", type=non_negative_float, default=20.0, help="largest audio file accepted")
    p.add_argument("--frame_step", type=positive_int, default=SessionSettings.frame_step,
                   help="send every n-th model frame (2 gives 30 fps from a 60 fps identity)")
    p.add_argument("--max_lag_ms", type=non_negative_float, default=SessionSettings.max_lag_ms,
                   help="skip frames this late beyond the models' lookahead so sessions stay live (0: never skip)")
    p.add_argument("--hop_ms", type=non_negative_float, default=SessionSettings.hop_ms,
                   help="run the audio side once this much new audio has come (every packet by default: "
                        "measured 70 ms lower glass-to-glass latency than 50 ms, at the same frame rate)")
    p.add_argument("--idle_timeout_s", type=non_negative_float, default=10.0,
                   help="end a session when its page has been silent this long (closed tab, lost network)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the head-motion sampling")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Parse, load the identity, serve until Ctrl-C; one-line errors for bad input (exit status 2)."""
    args = parse_args(argv)
    import asyncio
    import contextlib
    import logging
    import signal

    from models.live import runtime
    from models.live.identities import IdentityPool
    from models.live.server import ServerConfig, is_loopback, serve_forever
    from util.errors import InputError, run_cli
    from util.log import get_logger

    get_logger(level=logging.DEBUG if args.verbose else logging.INFO)
    settings = runtime.SessionSettings(args.frame_step, args.max_lag_ms or None, args.hop_ms, args.seed)
    tls = (args.tls_cert, args.tls_key) if args.tls_cert or args.tls_key else None
    config = ServerConfig(args.id, args.config_dir, args.device, args.backend, args.host, args.port, args.token,
                          args.max_sessions, args.max_upload_mb, args.idle_timeout_s, settings, tls)

    async def run() -> None:
        pool = IdentityPool(args.config_dir, args.device, args.backend, args.max_sessions)
        await asyncio.get_running_loop().run_in_executor(None, pool.load, args.id)
        ready = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(serve_forever(config, pool, ready))
        await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        server = ready.result()
        where = "this machine only" if is_loopback(args.host) else "other machines too; share the address with care"
        print(f"live portrait of {args.id!r} at {server.url}  ({where}; Ctrl-C stops)", flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, or a service manager: end the sessions, then exit
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def work() -> None:
        runtime.resolve_device(args.device)
        if tls and not (args.tls_cert and args.tls_key):
            raise InputError("--tls_cert and --tls_key go together")
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a server is stopped: no error
            asyncio.run(run())

    return run_cli("serve.py", work)


if __name__ == "__main__":
    sys.exit(main())
