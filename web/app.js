// Live Speech Portraits: the page. Plain JavaScript, no build step, no network access but this server.
//
// Glass-to-glass latency: the page records when each outgoing audio packet leaves its audio pipeline
// (an RTCRtpScriptTransform on the microphone's sender sees every packet with its RTP timestamp); the
// server tells, per frame, the RTP timestamp of the last sample the frame was made from; each frame
// carries its sequence number in a strip of blocks below the picture, read back from the frame on screen
// (requestVideoFrameCallback). Latency = display time - capture time, both on this page's clock.
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const OPUS_RATE = 48000;
const SENT_KEPT = 1000; // outgoing audio packets remembered (20 s)
const KEPT = 600; // latencies kept for the figures

// Everything the page measures; also read by the tests and the benchmark.
const lsp = (window.lsp = { state: "idle", sessions: null });
function fresh(source) {
  Object.assign(lsp, { error: null, source, session: null, hello: null, method: null, ended: false, frames: 0,
    skipped: 0, late: 0, g2g: [], server: [], g2gCount: 0, serverCount: 0, lipSync: [], eptOffsets: [],
    audioBytes: 0 });
}
fresh(null);

let pc = null, channel = null, stream = null, timers = [], upload = null;
let sent = [], info = new Map(), shown = new Map(), lastSeq = -1, shownTimes = [];
let clockOffset = null, bestRtt = Infinity; // server clock - page clock (ms), from the least delayed ping
const strip = document.createElement("canvas");
const stripCtx = strip.getContext("2d", { willReadFrequently: true });

function now() { return performance.timeOrigin + performance.now(); }

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
  if (isError) lsp.error = text;
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {}, token ? { "X-Token": token } : {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `the server answered ${response.status}`);
  return body;
}

async function loadIdentities() {
  const data = await api("/api/identities").catch((err) => say(`Cannot reach the server: ${err.message}`, true));
  if (!data) return;
  $("identity").replaceChildren(...data.identities.map((name) => new Option(name, name, false, name === data.default)));
  $("file").dataset.maxMb = data.max_upload_mb;
}

// --- microphone -------------------------------------------------------------------------------------
const MIC_PROBLEMS = {
  NotAllowedError: "The browser did not allow the microphone. Click the microphone or lock icon next to the " +
    "address, allow the microphone for this page, and press Start microphone again. Or stream an audio file.",
  NotFoundError: "No microphone was found. Plug one in (or pick it in your system's sound settings) and try again.",
  NotReadableError: "The microphone is busy or blocked by the system (another program may be using it).",
};
MIC_PROBLEMS.SecurityError = MIC_PROBLEMS.NotAllowedError;
MIC_PROBLEMS.OverconstrainedError = MIC_PROBLEMS.NotFoundError;

function micProblem(err) {
  if (!window.isSecureContext || !navigator.mediaDevices) {
    return "Browsers only lend the microphone to secure pages: open this page as http://127.0.0.1:… or " +
      "http://localhost:… on the machine running the server (or through an SSH tunnel), or over https.";
  }
  return MIC_PROBLEMS[err && err.name] ||
    `The microphone could not be opened (${err ? err.name + ": " + err.message : "unknown reason"}).`;
}

// A worker that notes when each outgoing audio packet leaves the browser's audio pipeline.
const TRANSFORM_WORKER = `
onrtctransform = (event) => {
  const t = event.transformer;
  t.readable.pipeThrough(new TransformStream({
    transform(frame, out) {
      const ts = frame.getMetadata().rtpTimestamp ?? frame.timestamp; // older Firefox: only .timestamp
      postMessage([ts, performance.timeOrigin + performance.now()]);
      out.enqueue(frame);
    },
  })).pipeTo(t.writable);
};`;

function watchCapture(sender) {
  if (typeof RTCRtpScriptTransform !== "function") return false;
  const worker = new Worker(URL.createObjectURL(new Blob([TRANSFORM_WORKER], { type: "text/javascript" })));
  worker.onmessage = (event) => {
    sent.push(event.data);
    if (sent.length > SENT_KEPT) sent.splice(0, sent.length - SENT_KEPT);
  };
  sender.transform = new RTCRtpScriptTransform(worker, { side: "send" });
  timers.push({ terminate: () => worker.terminate() });
  return true;
}

// Capture time (page clock, ms) of the sample with RTP timestamp ts: the packet holding it left the audio
// pipeline once its last sample was captured, so step back by the samples after ts.
function captureTime(ts) {
  for (let i = sent.length - 1; i > 0; i--) {
    const [start, t] = sent[i - 1], next = sent[i][0];
    const span = (next - start) >>> 0, into = (ts - start) >>> 0;
    if (span > 0 && span < OPUS_RATE && into < span) return t - ((span - into) * 1000) / OPUS_RATE;
  }
  return null;
}

// --- lips vs sound: the loudness of the sound played here against the loudness each shown frame was made
// from (the server labels every frame with its audio level); the lag that best lines them up is the offset.
const LEVEL_WORKLET = `registerProcessor("lsp-level", class extends AudioWorkletProcessor {
  constructor() { super(); this.sum = 0; this.n = 0; this.t0 = null; }
  process(inputs) {
    const ch = (inputs[0] && inputs[0][0]) || [];
    if (this.t0 === null) this.t0 = currentTime;
    for (let i = 0; i < ch.length; i++) this.sum += ch[i] * ch[i];
    this.n += ch.length;
    if (this.n >= sampleRate / 100) { // 10 ms of sound
      this.port.postMessage([this.t0, Math.sqrt(this.sum / this.n)]);
      this.sum = 0; this.n = 0; this.t0 = null;
    }
    return true;
  }
});`;
let audioCtx = null, heard = [], seen = []; // [page time ms, level] of sound played and of frames shown

async function listen(track) {
  audioCtx = new AudioContext();
  await audioCtx.audioWorklet.addModule(URL.createObjectURL(new Blob([LEVEL_WORKLET], { type: "text/javascript" })));
  const node = new AudioWorkletNode(audioCtx, "lsp-level");
  node.port.onmessage = (event) => {
    const stamp = audioCtx.getOutputTimestamp();
    if (!stamp.performanceTime) return;
    const at = performance.timeOrigin + stamp.performanceTime + (event.data[0] - stamp.contextTime) * 1000;
    heard.push([at, event.data[1]]);
    if (heard.length > 1500) heard.splice(0, heard.length - 1500);
  };
  audioCtx.createMediaStreamSource(new MediaStream([track])).connect(node);
  node.connect(audioCtx.destination); // silent: the worklet writes no output
}

function levelAt(t) {
  let lo = 0, hi = heard.length - 1;
  if (hi < 1 || t < heard[0][0] || t > heard[hi][0]) return null;
  while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (heard[mid][0] <= t) lo = mid; else hi = mid; }
  const [t0, a] = heard[lo], [t1, b] = heard[hi];
  return t1 > t0 ? a + ((b - a) * (t - t0)) / (t1 - t0) : a;
}

// The lag (ms) by which the sound follows the picture, from the last 10 s; null without enough speech.
function lipsVsSound() {
  const recent = seen.filter(([t]) => t > now() - 10000);
  let best = null, bestCorr = 0.5;
  for (let lag = -400; lag <= 400; lag += 5) {
    const pairs = recent.map(([t, v]) => [v, levelAt(t + lag)]).filter(([, a]) => a !== null);
    const n = pairs.length, mean = (k) => pairs.reduce((sum, p) => sum + p[k], 0) / n;
    if (n < 60) continue;
    const mv = mean(0), ma = mean(1);
    let sva = 0, svv = 0, saa = 0;
    for (const [v, a] of pairs) { sva += (v - mv) * (a - ma); svv += (v - mv) ** 2; saa += (a - ma) ** 2; }
    const corr = sva / Math.sqrt(svv * saa + 1e-12);
    if (corr > bestCorr) { bestCorr = corr; best = lag; }
  }
  return best;
}

// --- frames -----------------------------------------------------------------------------------------
function readCode(video) { // the frame's sequence number from its code strip (tracks.py draws it), or null
  const code = lsp.hello.code, w = video.videoWidth, h = video.videoHeight;
  if (!w || !h) return null;
  const scale = h / code.height, rows = code.rows;
  if (strip.width !== w) { strip.width = w; strip.height = rows; }
  stripCtx.drawImage(video, 0, code.strip * scale, w, rows * scale, 0, 0, w, rows);
  const row = stripCtx.getImageData(0, rows >> 1, w, 1).data, block = Math.floor(w / code.bits);
  let value = 0;
  for (let b = 0; b < code.bits; b++) { // the middle half of each block, bright or dark
    let sum = 0, n = 0;
    for (let x = b * block + (block >> 2); x < (b + 1) * block - (block >> 2); x++, n++) sum += row[4 * x + 1];
    if (sum / n > 127) value |= 1 << b;
  }
  const seq = value & ((1 << code.seq_bits) - 1);
  const check = (seq ^ (seq >> 4) ^ (seq >> 8)) & 0xf;
  return (value >>> code.seq_bits) === check ? seq : null;
}

function keep(list, value) {
  list.push(value);
  if (list.length > KEPT) list.splice(0, list.length - KEPT);
}

function measure(seq) {
  const at = shown.get(seq), msg = info.get(seq);
  if (at === undefined || msg === undefined) return;
  shown.delete(seq);
  seen.push([at, msg.lvl]);
  if (seen.length > 900) seen.shift();
  let captured = null;
  if (msg.ts !== null && sent.length) { captured = captureTime(msg.ts); lsp.method = "capture"; }
  if (captured === null && clockOffset !== null) { captured = msg.arr - clockOffset; lsp.method = "server clock"; }
  if (captured !== null) { keep(lsp.g2g, at - captured); lsp.g2gCount += 1; }
  keep(lsp.server, msg.srv);
  lsp.serverCount += 1;
}

function onFrame(_, meta) {
  const video = $("video");
  if (pc === null) return;
  video.requestVideoFrameCallback(onFrame);
  if (!lsp.hello) return;
  const seq = readCode(video);
  if (seq === null || seq === lastSeq) return;
  lastSeq = seq;
  lsp.frames += 1;
  const at = performance.timeOrigin + meta.expectedDisplayTime;
  shownTimes.push(at);
  shown.set(seq, at);
  if (shown.size > 256) shown.delete(shown.keys().next().value); // its message never came
  measure(seq);
}

function onMessage(event) {
  const msg = JSON.parse(event.data);
  if (msg.type === "frame") {
    lsp.skipped = msg.skip;
    lsp.late += msg.late > 5 ? 1 : 0; // ms after its due time: picture later than its sound
    info.set(msg.seq, msg);
    if (info.size > 256) info.delete(info.keys().next().value);
    $("level").firstElementChild.style.width = `${Math.min(100, 400 * (msg.lvl || 0))}%`;
    measure(msg.seq);
  } else if (msg.type === "hello") {
    lsp.hello = msg;
    lsp.session = msg.session;
    $("frame").style.aspectRatio = `${msg.code.width} / ${msg.code.top}`;
  } else if (msg.type === "pong") {
    const t = now(), rtt = t - msg.t;
    if (rtt < bestRtt) { bestRtt = rtt; clockOffset = msg.srv - (msg.t + rtt / 2); }
  } else if (msg.type === "end" || msg.type === "error") {
    lsp.ended = msg.type === "end";
    say(msg.message || "The file has been spoken to the end.", msg.type === "error");
    stop();
  }
}

// --- session ----------------------------------------------------------------------------------------
function percentile(values, q) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((q / 100) * sorted.length))];
}

function figures() {
  const t = now();
  shownTimes = shownTimes.filter((x) => x > t - 2000);
  return {
    g2g_p50: percentile(lsp.g2g, 50), g2g_p95: percentile(lsp.g2g, 95),
    server_p50: percentile(lsp.server, 50), server_p95: percentile(lsp.server, 95),
    fps: shownTimes.length / 2, frames: lsp.frames, skipped: lsp.skipped,
    av_offset_ms: percentile(lsp.eptOffsets.slice(-10).map(([, v]) => v), 50),
    av_loudness_ms: lsp.lipSync.length ? lsp.lipSync[lsp.lipSync.length - 1][1] : null,
  };
}

function ms(x) { return x === null || x === undefined ? "–" : `${Math.round(x)} ms`; }

function show() {
  const f = figures();
  $("g2g-p50").textContent = ms(f.g2g_p50);
  $("g2g-p95").textContent = ms(f.g2g_p95);
  $("srv").textContent = f.server_p50 === null ? "–" : `${Math.round(f.server_p50)} / ${ms(f.server_p95)}`;
  $("fps").textContent = f.fps.toFixed(1);
  $("skipped").textContent = String(f.skipped);
  $("av").textContent = ms(f.av_offset_ms);
  $("method").textContent = lsp.method === "server clock" ? "file: from the moment the server played the sample, " +
    "clocks matched over the data channel" : "measured from capture on this page";
  return f;
}

async function avOffset() {
  if (pc === null) return;
  const lag = lipsVsSound();
  if (lag !== null) keep(lsp.lipSync, [now(), lag]);
  const report = await pc.getStats();
  const ept = {};
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.estimatedPlayoutTimestamp) ept[s.kind] = s.estimatedPlayoutTimestamp;
    if (s.type === "inbound-rtp" && s.kind === "audio") lsp.audioBytes = s.bytesReceived || 0;
  });
  // the browser's own view: the sender-clock time of the frame shown minus that of the sound playing,
  // i.e. how much later the sound plays than the picture of the same moment
  if (ept.audio && ept.video && lsp.frames > 0) keep(lsp.eptOffsets, [now(), ept.video - ept.audio]);
}

async function pollSessions() {
  const stats = await api("/api/stats").catch(() => null); // the next poll tries again
  if (stats) { lsp.sessions = stats.sessions; $("sessions").textContent = `${stats.sessions} of ${stats.max_sessions}`; }
}

function every(ms, fn) { const id = setInterval(fn, ms); timers.push({ terminate: () => clearInterval(id) }); }

function send(msg) { if (channel && channel.readyState === "open") channel.send(JSON.stringify(msg)); }

function gathered(peer) { // loopback candidates come at once; do not wait long for slow interfaces
  return new Promise((resolve) => {
    if (peer.iceGatheringState === "complete") resolve();
    peer.addEventListener("icegatheringstatechange", () => peer.iceGatheringState === "complete" && resolve());
    setTimeout(resolve, 3000);
  });
}

async function uploadFile() {
  const file = $("file").files[0];
  const maxMb = Number($("file").dataset.maxMb || 0);
  if (maxMb && file.size > maxMb * 1048576) {
    throw new Error(`The file is ${(file.size / 1048576).toFixed(1)} MB; this server accepts up to ${maxMb} MB.`);
  }
  say(`Sending ${file.name}…`);
  const body = await api(`/api/upload?name=${encodeURIComponent(file.name)}`, { method: "POST", body: file });
  return body.upload;
}

async function start(source) {
  if (pc !== null) return;
  fresh(source);
  lsp.state = "starting";
  heard = []; seen = []; sent = []; info = new Map(); shown = new Map(); lastSeq = -1; shownTimes = [];
  clockOffset = null; bestRtt = Infinity;
  setButtons(true);
  try {
    if (source === "mic") {
      if (!window.isSecureContext || !navigator.mediaDevices) throw new Error(micProblem(null));
      say("Asking for the microphone…");
      stream = await navigator.mediaDevices.getUserMedia({ audio: true }).catch((err) => {
        throw new Error(micProblem(err));
      });
    } else {
      upload = await uploadFile();
    }
    await connect(source);
  } catch (err) {
    say(err.message, true);
    await stop();
  }
}

async function connect(source) {
  say("Connecting…");
  pc = new RTCPeerConnection();
  channel = pc.createDataChannel("lsp");
  channel.onmessage = onMessage;
  channel.onopen = () => { lsp.state = "live"; say(source === "mic" ? "Live: speak!" : "Live: streaming the file."); };
  if (stream) {
    const sender = pc.addTrack(stream.getAudioTracks()[0], stream);
    watchCapture(sender);
  } else {
    pc.addTransceiver("audio", { direction: "recvonly" });
  }
  pc.addTransceiver("video", { direction: "recvonly" });
  const media = new MediaStream();
  pc.ontrack = (event) => {
    media.addTrack(event.track);
    if (event.track.kind === "audio") listen(event.track).catch(() => { /* no lips-vs-sound figure */ });
    $("video").srcObject = media;
    $("idle").hidden = true;
  };
  pc.onconnectionstatechange = () => {
    if (pc && pc.connectionState === "failed") { say("The connection to the server was lost.", true); stop(); }
  };
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const answer = await api("/api/offer", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", identity: $("identity").value, upload }),
  });
  lsp.session = answer.session;
  await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  if ($("video").requestVideoFrameCallback) $("video").requestVideoFrameCallback(onFrame);
  else say("Live. (This browser cannot time the frames it shows, so no latency figures.)");
  every(1000, () => send({ type: "ping", t: now() }));
  every(2000, () => avOffset());
  every(500, () => { send({ type: "report", figures: show() }); });
}

async function stop() {
  const session = lsp.session;
  send({ type: "bye" });
  for (const t of timers) t.terminate();
  timers = [];
  if (pc) pc.close();
  pc = null; channel = null; upload = null;
  if (audioCtx) audioCtx.close();
  audioCtx = null;
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
  $("video").srcObject = null;
  $("idle").hidden = false;
  if (session) await api(`/api/sessions/${session}/stop`, { method: "POST" }).catch(() => null); // or gone
  if (lsp.state !== "idle" && !lsp.error && !lsp.ended) say("Stopped.");
  lsp.state = "idle";
  setButtons(false);
  show();
  pollSessions();
}

function setButtons(running) {
  $("start-mic").disabled = running;
  $("start-file").disabled = running || !$("file").files.length;
  $("stop").disabled = !running;
  $("identity").disabled = running;
}

$("start-mic").addEventListener("click", () => start("mic"));
$("start-file").addEventListener("click", () => start("file"));
$("stop").addEventListener("click", () => stop());
$("file").addEventListener("change", () => setButtons(pc !== null));
window.addEventListener("pagehide", () => {
  if (lsp.session && pc) navigator.sendBeacon(`/api/sessions/${lsp.session}/stop` + (token ? `?token=${token}` : ""));
});
loadIdentities();
pollSessions();
setInterval(pollSessions, 2000);
if (!window.isSecureContext) say(micProblem(null));
