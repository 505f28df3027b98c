// The echo console: one WebSocket to the server that served this page (or to the
// ws:// or wss:// URL given as ?url=), a log of what went each way, and reconnection
// with exponential back-off. No dependencies; everything shown goes through textContent.
"use strict";

const LOG_LIMIT = 500;          // entries kept in the log; older ones are dropped
const PREVIEW_BYTES = 64;       // binary bytes shown per entry, as hex
const PREVIEW_CHARS = 500;      // text characters shown per entry
const FILE_LIMIT = 64 * 1024 * 1024;  // largest file read into memory and sent
const BACKOFF_FIRST_MS = 500;   // first reconnection delay, doubled after each failure
const BACKOFF_MAX_MS = 8000;
const CLOSE_NAMES = {
  1000: "normal closure", 1001: "going away", 1002: "protocol error",
  1003: "unsupported data", 1005: "no status", 1006: "abnormal closure (no close frame)",
  1007: "invalid payload", 1008: "policy violation", 1009: "message too big",
  1010: "missing extension", 1011: "internal error", 1012: "service restart",
  1013: "try again later", 1015: "TLS handshake failure",
};

const $ = (id) => document.getElementById(id);
const ui = {
  target: $("target"), state: $("state"), notice: $("notice"), log: $("log"),
  connect: $("connect"), disconnect: $("disconnect"), reconnect: $("reconnect"),
  message: $("message"), send: $("send"), file: $("file"), sendFile: $("send-file"),
  clear: $("clear"),
};

const target = targetUrl();
let socket = null;
let opened = false;          // whether the current socket ever reached OPEN
let pending = [];            // send times of messages not yet echoed, oldest first
let retryTimer = null;
let failures = 0;            // consecutive failed attempts, for the back-off
let wanted = true;           // false after Disconnect: do not reconnect

function targetUrl() {
  const given = new URLSearchParams(location.search).get("url");
  if (given) {
    try {
      const url = new URL(given);
      if (url.protocol === "ws:" || url.protocol === "wss:") return url;
    } catch (_) { /* reported below */ }
    return null;
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return new URL(scheme + "//" + location.host + "/");
}

function httpOrigin(url) {
  return (url.protocol === "wss:" ? "https://" : "http://") + url.host;
}

function sameOrigin() {
  return httpOrigin(target) === location.origin;
}

// -- log ------------------------------------------------------------------------------

function clock(date) {
  const pad = (n, w) => String(n).padStart(w, "0");
  return `${pad(date.getHours(), 2)}:${pad(date.getMinutes(), 2)}:` +
    `${pad(date.getSeconds(), 2)}.${pad(date.getMilliseconds(), 3)}`;
}

function addEntry(kind, summary, body, extra) {
  const item = document.createElement("li");
  item.className = kind;
  const time = document.createElement("time");
  time.dateTime = new Date().toISOString();
  time.textContent = clock(new Date());
  const what = document.createElement("span");
  what.className = "what";
  what.textContent = summary;
  item.append(time, " ", what);
  if (body !== undefined) {
    const data = document.createElement("code");
    data.textContent = body;
    item.append(" ", data);
  }
  if (extra) {
    const note = document.createElement("span");
    note.className = "extra";
    note.textContent = extra;
    item.append(" ", note);
  }
  // Follow new entries only when the log was scrolled to its end, and scroll the log
  // alone: scrollIntoView would scroll the page too, and the header out of view.
  const following = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 8;
  ui.log.append(item);
  while (ui.log.childElementCount > LOG_LIMIT) ui.log.firstElementChild.remove();
  if (following) ui.log.scrollTop = ui.log.scrollHeight;
}

function hex(bytes) {
  const shown = Array.from(bytes.subarray(0, PREVIEW_BYTES),
    (b) => b.toString(16).padStart(2, "0")).join(" ");
  return bytes.length > PREVIEW_BYTES ? shown + " …" : shown;
}

function textPreview(text) {
  return text.length > PREVIEW_CHARS ? text.slice(0, PREVIEW_CHARS) + " …" : text;
}

function describe(data) {
  if (typeof data === "string") {
    const size = new TextEncoder().encode(data).length;
    return [`text ${size} B`, textPreview(data)];
  }
  const bytes = new Uint8Array(data);
  return [`binary ${bytes.length} B`, hex(bytes)];
}

// -- state ----------------------------------------------------------------------------

function setState(state, text) {
  ui.state.dataset.state = state;
  ui.state.textContent = text || state;
  const busy = state === "open" || state === "connecting";
  ui.connect.disabled = busy || target === null;
  ui.disconnect.disabled = !busy && retryTimer === null;
  ui.send.disabled = state !== "open";
  ui.sendFile.disabled = state !== "open";
}

function notify(text) {
  ui.notice.hidden = !text;
  ui.notice.textContent = text || "";
}

// -- connection -----------------------------------------------------------------------

function connect() {
  clearTimeout(retryTimer);
  retryTimer = null;
  if (socket) return;
  wanted = true;
  opened = false;
  pending = [];
  let ws;
  try {
    ws = new WebSocket(target.href);
  } catch (error) {
    notify(`Cannot open ${target.href}: ${error.message}`);
    addEntry("event", "failed", undefined, error.message);
    setState("closed");
    return;
  }
  ws.binaryType = "arraybuffer";
  socket = ws;
  setState("connecting", "connecting…");
  ws.addEventListener("open", () => {
    opened = true;
    failures = 0;
    notify("");
    setState("open");
    addEntry("event", "connected", target.href);
  });
  ws.addEventListener("message", (event) => {
    const sentAt = pending.shift();
    const [summary, body] = describe(event.data);
    const rtt = sentAt === undefined ? "" : `rtt ${(performance.now() - sentAt).toFixed(1)} ms`;
    addEntry("received", "← " + summary, body, rtt);
  });
  ws.addEventListener("close", (event) => {
    if (socket !== ws) return;
    socket = null;
    pending = [];
    if (opened) {
      const name = CLOSE_NAMES[event.code] || "";
      const reason = event.reason ? ` “${event.reason}”` : "";
      addEntry("event", "closed", undefined,
        `code ${event.code}${name ? " " + name : ""}${reason}${event.wasClean ? "" : ", not clean"}`);
    } else {
      addEntry("event", "connection failed", target.href);
      explainFailure();
    }
    failures += 1;
    scheduleReconnect();
  });
}

function disconnect() {
  wanted = false;
  clearTimeout(retryTimer);
  retryTimer = null;
  if (socket) {
    setState("closing", "closing…");
    socket.close(1000, "bye");
  } else {
    setState("closed");
  }
}

function scheduleReconnect() {
  if (!wanted || !ui.reconnect.checked) {
    setState("closed");
    return;
  }
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** Math.max(0, failures - 1));
  const delay = Math.round(base * (0.8 + Math.random() * 0.4));
  retryTimer = setTimeout(connect, delay);
  setState("waiting", `closed, reconnecting in ${(delay / 1000).toFixed(1)} s`);
}

// A browser does not show a page the status of a refused handshake (403, 429, 503 all
// look like 1006), so ask the server's /healthz what it can tell and say what we know.
async function explainFailure() {
  const health = httpOrigin(target) + "/healthz";
  const attemptedFrom = location.origin;
  let text;
  if (sameOrigin()) {
    try {
      const reply = await fetch(health, { cache: "no-store" });
      const status = await reply.json();
      if (status.connections >= status.max_connections) {
        text = `Refused: the server is full (${status.connections} of ` +
          `${status.max_connections} connections open).`;
      } else {
        text = "Refused by the server: too many connections from your address, " +
          `or origin ${attemptedFrom} not allowed.`;
      }
    } catch (_) {
      text = `Cannot reach the server at ${target.href}.`;
    }
  } else {
    try {
      await fetch(health, { mode: "no-cors", cache: "no-store" });
      text = `Refused by the server at ${target.href}: this page's origin ` +
        `${attemptedFrom} is not in its ALLOWED_ORIGINS (or the server is full).`;
    } catch (_) {
      text = `Cannot reach the server at ${target.href}.`;
    }
  }
  if (!socket || socket.readyState !== WebSocket.OPEN) notify(text);
}

// -- sending --------------------------------------------------------------------------

function parseHex(text) {
  const digits = text.replace(/0x/gi, "").replace(/[\s,:]/g, "");
  if (!/^([0-9a-fA-F]{2})*$/.test(digits)) return null;
  const bytes = new Uint8Array(digits.length / 2);
  for (let i = 0; i < bytes.length; i += 1) bytes[i] = parseInt(digits.substr(i * 2, 2), 16);
  return bytes;
}

function transmit(data) {
  if (!socket || socket.readyState !== WebSocket.OPEN) return;
  socket.send(data);
  pending.push(performance.now());
  const [summary, body] = describe(data instanceof Uint8Array ? data.buffer : data);
  addEntry("sent", "→ " + summary, body);
}

function sendMessage() {
  const format = document.querySelector('input[name="format"]:checked').value;
  if (format === "hex") {
    const bytes = parseHex(ui.message.value);
    if (bytes === null) {
      notify("Not hex: write pairs of hex digits, e.g. 00 ff 10.");
      return;
    }
    notify("");
    transmit(bytes);
  } else {
    transmit(ui.message.value);
  }
}

async function sendFile() {
  const file = ui.file.files[0];
  if (!file) {
    notify("Choose a file first.");
    return;
  }
  if (file.size > FILE_LIMIT) {
    notify(`That file is ${file.size} bytes; this page sends at most ${FILE_LIMIT}.`);
    return;
  }
  notify("");
  transmit(new Uint8Array(await file.arrayBuffer()));
}

// -- start ----------------------------------------------------------------------------

ui.connect.addEventListener("click", connect);
ui.disconnect.addEventListener("click", disconnect);
ui.send.addEventListener("click", sendMessage);
ui.sendFile.addEventListener("click", sendFile);
ui.clear.addEventListener("click", () => ui.log.replaceChildren());
ui.message.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) sendMessage();
});
ui.reconnect.addEventListener("change", () => {
  if (!ui.reconnect.checked && retryTimer !== null) {
    clearTimeout(retryTimer);
    retryTimer = null;
    setState("closed");
  }
});

if (target === null) {
  ui.target.textContent = "(invalid ?url=)";
  notify("The url parameter must be a ws:// or wss:// URL.");
  setState("closed");
} else {
  ui.target.textContent = target.href;
  connect();
}
