"""Live serving: a WebRTC server (aiortc + aiohttp) that lets a browser talk to a portrait.

    server.py       the aiohttp app: page, signalling, uploads, sessions, stats, token
    connection.py   one viewer: peer connection, StreamingSession in a worker thread, data channel
    playout.py      when audio and video leave: one clock for both, adaptive delay (lips in sync)
    tracks.py       aiortc tracks: microphone in, portrait video (frame number in a code strip) and speech out
    render.py       one renderer per identity shared by its sessions (requests due together batched)
    identities.py   trained identities, loaded on first use
    runtime.py      the only imports from the inference runtime
    browser.py      headless Chromium with a fake microphone (tests and the benchmark)
    bench.py        scripts/benchmark.py --serve
"""
