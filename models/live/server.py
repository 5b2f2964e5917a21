"""The live server: the page, WebRTC signalling, uploads, sessions and a JSON stats endpoint (aiohttp).

    GET  /                          the page (web/index.html) and /app.js
    GET  /api/identities            trained identities under the config folder
    POST /api/upload?name=x.wav     an audio file (raw body, at most --max_upload_mb) -> {"upload": id}
    POST /api/offer                 {"sdp", "type", "identity", "upload"?} -> the answer + session id
    POST /api/sessions/<id>/stop    end a session (also sent as a beacon when the tab closes)
    GET  /api/stats                 sessions, renderer load, per-session latency and the page's figures

Security: a server on another address than loopback refuses every request without its token
(?token=, header X-Token, or the cookie the page gets with it); on loopback, requests must name
the loopback host (no DNS rebinding) and POSTs must come from the page's own origin.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import json
import logging
import re
import secrets
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from aiohttp import web

from models.live import runtime
from models.live.connection import LiveConnection, SessionPlan
from models.live.identities import IdentityPool
from util.audio import SAMPLE_RATE
from util.errors import InputError

log = logging.getLogger("lsp")
WEB_DIR = Path(__file__).resolve().parents[2] / "web"
TOKEN_COOKIE = "lsp_token"
MAX_JSON_BYTES = 256 * 1024  # an SDP offer is a few kB
UPLOAD_TTL = 600.0  # seconds an uploaded file waits for its session
UPLOAD_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")
LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class ServerConfig:
    """The serve.py flags."""

    identity: str
    config_dir: Path | None = None
    device: str = "cpu"
    backend: str = "torch"
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    max_sessions: int = 4
    max_upload_mb: float = 20.0
    idle_timeout: float = 10.0
    session: runtime.SessionSettings = field(default_factory=runtime.SessionSettings)
    tls: tuple[Path, Path] | None = None  # (certificate, key): serve https, which browsers need for a
    # microphone on any address but localhost


def is_loopback(host: str) -> bool:
    """Whether `host` only listens on this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@dataclass
class Upload:
    name: str
    audio: np.ndarray
    created: float


class LiveServer:
    """Sessions of one server; `start()` it in a running event loop, `stop()` it at the end."""

    def __init__(self, config: ServerConfig, pool: IdentityPool) -> None:
        self.config, self.pool = config, pool
        self.token = config.token or (None if is_loopback(config.host) else secrets.token_urlsafe(16))
        self.sessions: dict[str, LiveConnection] = {}
        self.opening = 0  # offers being answered (they count against --max_sessions)
        self.ended = 0
        self.uploads: dict[str, Upload] = {}
        self.runner: web.AppRunner | None = None
        self.port = config.port
        limit = int(config.max_upload_mb * 2**20)
        self.app = web.Application(middlewares=[self._guard], client_max_size=limit + MAX_JSON_BYTES)
        self.app.add_routes([web.get("/", self._page), web.get("/app.js", self._script),
                             web.get("/api/identities", self._identities), web.get("/api/stats", self._stats),
                             web.post("/api/upload", self._upload), web.post("/api/offer", self._offer),
                             web.post("/api/sessions/{sid}/stop", self._stop)])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::") else self.config.host
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if self.config.tls else "http"
        return f"{scheme}://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    async def start(self) -> None:
        """Listen; an InputError naming --port or --host when that is impossible."""
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.host, self.config.port, ssl_context=_tls(self.config.tls))
        try:
            await site.start()
        except OSError as err:
            await self.runner.cleanup()
            what = "already in use" if err.errno == errno.EADDRINUSE else f"cannot be opened ({err.strerror})"
            raise InputError(f"--port {self.config.port}: {self.config.host}:{self.config.port} is {what}; "
                             "choose another --port (or --host)") from err
        self.port = self.runner.addresses[0][1] if self.config.port == 0 else self.config.port

    async def stop(self) -> None:
        """End every session and stop listening (the identity pool stays with its owner)."""
        await asyncio.gather(*(c.close("server stopping") for c in list(self.sessions.values())))
        if self.runner is not None:
            await self.runner.cleanup()

    # security ----------------------------------------------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:  # noqa: ANN001
        if self.token is not None:
            given = (request.query.get("token") or request.headers.get("X-Token")
                     or request.cookies.get(TOKEN_COOKIE) or "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return _error(401, "this server needs its token: open the address it printed (…/?token=…)")
        elif not is_loopback(request.url.host or ""):
            return _error(403, f"this server answers on {self.config.host} only")
        if request.method == "POST" and request.headers.get("Origin") not in (None, "null"):
            if request.headers["Origin"].rstrip("/") != f"{request.scheme}://{request.host}":
                return _error(403, "requests from other sites are refused")
        response = await handler(request)
        if self.token is not None and request.query.get("token"):
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="Strict")
        return response

    # the page ----------------------------------------------------------------------------------------
    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-store"})

    async def _script(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB_DIR / "app.js", headers={"Cache-Control": "no-store"})

    async def _identities(self, request: web.Request) -> web.Response:
        names = await asyncio.get_running_loop().run_in_executor(None, self.pool.names)
        return web.json_response({"identities": names, "default": self.config.identity,
                                  "max_upload_mb": self.config.max_upload_mb})

    # uploads -----------------------------------------------------------------------------------------
    async def _upload(self, request: web.Request) -> web.Response:
        name = request.query.get("name", "upload")[:200]
        limit = int(self.config.max_upload_mb * 2**20)
        too_big = _error(413, f"the file {name!r} is larger than this server accepts (--max_upload_mb "
                              f"{self.config.max_upload_mb:g} MB)")
        if (request.content_length or 0) > limit:
            return too_big
        data = bytearray()
        async for chunk in request.content.iter_chunked(1 << 16):
            data += chunk
            if len(data) > limit:
                return too_big
        loop = asyncio.get_running_loop()
        try:
            audio = await loop.run_in_executor(None, _decode_upload, bytes(data), name)
        except InputError as err:
            return _error(400, str(err))
        self._expire_uploads()
        key = secrets.token_urlsafe(12)
        self.uploads[key] = Upload(name, audio, time.monotonic())
        return web.json_response({"upload": key, "seconds": round(len(audio) / SAMPLE_RATE, 2)})

    def _expire_uploads(self) -> None:
        """Forget uploads older than UPLOAD_TTL, and the oldest beyond two per session slot."""
        now = time.monotonic()
        for key in [k for k, u in self.uploads.items() if now - u.created > UPLOAD_TTL]:
            del self.uploads[key]
        while len(self.uploads) >= 2 * self.config.max_sessions:
            del self.uploads[next(iter(self.uploads))]

    # sessions ----------------------------------------------------------------------------------------
    async def _offer(self, request: web.Request) -> web.Response:
        body = await _json(request)
        if not isinstance(body, dict) or not isinstance(body.get("sdp"), str) or body.get("type") != "offer":
            return _error(400, "expected a JSON body with an SDP offer: {sdp, type: 'offer', identity}")
        if len(self.sessions) + self.opening >= self.config.max_sessions:
            return _error(503, f"busy: all {self.config.max_sessions} live sessions of this server are in use "
                               "(--max_sessions); try again when one ends")
        self.opening += 1
        try:
            return await self._open(body)
        except InputError as err:
            return _error(400, str(err))
        finally:
            self.opening -= 1

    async def _open(self, body: dict) -> web.Response:
        identity = runtime.checked_identity(body.get("identity") or self.config.identity)
        loaded = await self.pool.get(identity)
        audio = None
        if body.get("upload"):
            upload = self.uploads.pop(str(body["upload"]), None)
            if upload is None:
                raise InputError("the uploaded file is no longer here (uploads wait 10 minutes); choose it again")
            loaded.pipe.check_audio(upload.audio, f"uploaded file {upload.name!r}")
            audio = upload.audio
        settings = self.config.session
        session = loaded.open_session(settings)
        delay, max_delay = loaded.delays(session, settings)
        plan = SessionPlan(identity, loaded.pipe.fps, loaded.pipe.sample_rate, settings.frame_step, loaded.scale,
                           loaded.pipe.assets.image_size, delay, max_delay, self.config.idle_timeout)
        sid = secrets.token_urlsafe(12)
        conn = LiveConnection(sid, plan, session, audio, self._closed)
        self.sessions[sid] = conn
        try:
            answer = await conn.answer(body["sdp"], "offer")
        except Exception as err:  # a malformed offer ends this session only
            await conn.close("bad offer")
            raise InputError(f"the browser's offer could not be used ({type(err).__name__}: {err})") from err
        log.info("session %s: %s, %s, %d of %d in use", sid[:8], identity, conn.source, len(self.sessions),
                 self.config.max_sessions)
        return web.json_response({**answer, "session": sid})

    def _closed(self, conn: LiveConnection) -> None:
        if self.sessions.pop(conn.sid, None) is not None:
            self.ended += 1

    async def _stop(self, request: web.Request) -> web.Response:
        conn = self.sessions.get(request.match_info["sid"])
        if conn is None:
            return web.json_response({"stopped": False})
        await conn.close("stopped by the viewer")
        return web.json_response({"stopped": True})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    def stats(self) -> dict:
        """Sessions, renderers and threads, for /api/stats and the benchmark."""
        return {"sessions": len(self.sessions), "max_sessions": self.config.max_sessions,
                "ended_sessions": self.ended, "threads": threading.active_count(),
                "renderers": {name: item.renderer.stats() for name, item in self.pool.loaded.items()},
                "per_session": [c.summary() for c in self.sessions.values()]}


def _tls(files: tuple[Path, Path] | None) -> ssl.SSLContext | None:
    """A server TLS context from --tls_cert/--tls_key, with errors naming them."""
    if files is None:
        return None
    from util.errors import require_file

    cert, key = files
    require_file(cert, "--tls_cert")
    require_file(key, "--tls_key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as err:
        raise InputError(f"--tls_cert {cert} / --tls_key {key}: not a usable certificate and key ({err})") from err
    return context


async def _json(request: web.Request) -> object:
    raw = await request.content.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        return None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _decode_upload(data: bytes, name: str) -> np.ndarray:
    """Decode an uploaded file with the project's safe loader, inside a temporary folder removed after."""
    from util.audio import load_audio

    if not data:
        raise InputError(f"uploaded file {name!r}: it is empty")
    suffix = Path(name).suffix if UPLOAD_SUFFIX.match(Path(name).suffix) else ".bin"
    with tempfile.TemporaryDirectory(prefix="lsp-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            return load_audio(path, SAMPLE_RATE, what=f"uploaded file {name!r}")
        except InputError as err:  # name the file as the user knows it, not by its temporary path
            what = f"uploaded file {name!r}"
            detail = str(err).replace(str(path), "").replace(what, "").strip(" :")
            raise InputError(f"{what}: {detail}") from err


async def serve_forever(config: ServerConfig, pool: IdentityPool, ready: asyncio.Future | None = None) -> None:
    """Run a LiveServer until cancelled (Ctrl-C); `ready` gets the server once it listens."""
    server = LiveServer(config, pool)
    await server.start()
    if ready is not None:
        ready.set_result(server)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
        pool.close()


class BackgroundServer:
    """A LiveServer in its own thread and event loop (tests and the benchmark): `with BackgroundServer(...)
    as server: server.url`."""

    def __init__(self, config: ServerConfig, pool: IdentityPool) -> None:
        self.config, self.pool = config, pool
        self.loop = asyncio.new_event_loop()
        self.server: LiveServer | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, name="lsp-server", daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        self.server = LiveServer(self.config, self.pool)
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(60)
        except BaseException:
            self._end_loop()
            raise
        return self

    @property
    def url(self) -> str:
        return self.server.url

    def call(self, fn, *args):  # noqa: ANN001, ANN201 - run fn(*args) in the server's loop and return its result
        """Run a plain function in the server's thread (its state is not thread-safe)."""
        async def run():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(60)
        self._end_loop()

    def _end_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
