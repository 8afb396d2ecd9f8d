// The benchmark's load generator: one Node process on the `ws` client.
//
// Usage:
//
//     node benchmarks/node/loadgen.mjs URL SCENARIO [options]
//
// The same process and the same client drive every server in a run, so the
// load is the same for all of them. URL is a ws:// URL on loopback
// (127.0.0.0/8, ::1 or localhost; anything else is refused). No extension is
// offered (perMessageDeflate: false), so no server compresses. It prints one
// JSON line with the result (the `idle` and `chats` scenarios print their
// phases first, one JSON line each).
//
// Scenarios (the same as benchmarks/loadgen.py):
//
// rtt      --clients connections each send `hello` and wait for the answer's
//          `message` and `turn_end`, then send the next; --idle more
//          connections are opened first and sit idle. Value: round trips/s.
// stream   the same with `stream:N` (--deltas); value: frames of the turns
//          received per second, all clients together (goal_status, delta,
//          stream_end, turn_end: N + 4 per turn).
// fanout   --clients connections on one chat (the first one's default chat;
//          the others `attach`); the first sends `stream:N` and every
//          subscriber waits for the turn's last frame (`goal_status` idle).
//          --reps measured turns after one warm-up turn; value: frames of the
//          turn delivered per second, summed over subscribers.
// connect  --total connections, --concurrency in flight: connect, wait for
//          `ready`, close (closing handshake, then wait for TCP to close).
//          Value: connects/s.
// idle     holds --total idle connections for the parent to read the
//          server's memory: prints {"phase":"baseline"} after a short warm-up
//          and waits for a line on stdin, opens the connections, prints
//          {"phase":"holding",...} and waits for another line (at most --hold
//          seconds) before closing them.
// chats    creates --total chats through the protocol (--mode new_chat: a
//          `new_chat` frame; --mode message: a `message` to a fresh chat id,
//          which runs one echo turn), over --connections connections at a
//          time with --window requests in flight on each; every connection
//          is closed after --per-conn chats and a new one opened, so what the
//          server keeps afterwards is the chats, not subscriptions. After
//          every --step chats all connections are closed and it prints
//          {"phase":"checkpoint","chats":N,...} and waits for a line on stdin
//          (the parent reads the server's RSS), then goes on.
//
// "Frames of the turn" are the events a turn produces (goal_status, message,
// delta, stream_end, turn_end); other events (nanobot broadcasts
// `session_updated` to every connection after each turn) are counted apart,
// in `other_frames`, and are not part of any value.
//
// Timed scenarios run --warmup seconds unmeasured, then --duration seconds
// measured. With --server-pid the result also has the server's CPU seconds
// over the measured window (/proc/PID/stat), the load generator's own
// (process.cpuUsage) and the rest of the machine's (/proc/stat), so one can
// tell which side was the bottleneck.
//
// Two clients: --client ws (the default), the `ws` package's client, and
// --client raw, a minimal RFC 6455 client on `net` (RawTransport) whose
// handshake costs a third of the CPU; the runner uses it for `connect`.
//
// Every loop is bounded in count (--max-ops, --total) and in time; the whole
// process exits with status 3 after --max-seconds whatever happens.

import { execFileSync } from "node:child_process";
import { createHash, randomBytes, randomFillSync } from "node:crypto";
import { EventEmitter } from "node:events";
import { readFileSync } from "node:fs";
import { connect as netConnect, isIP } from "node:net";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";

import WebSocket from "ws";

const CONNECT_TIMEOUT_MS = 15_000;
const OP_TIMEOUT_MS = 30_000;
const CLOSE_TIMEOUT_MS = 5_000;
/** Connections opened at once while setting up idle and fan-out connections. */
const OPEN_CONCURRENCY = 50;
const MAX_PAYLOAD = 64 * 1024 * 1024;

/** `ws` (the `ws` package) or `raw` (RawTransport below): --client. */
let CLIENT = "ws";

/** The events a turn produces; everything else is an "other" frame. */
const TURN_EVENTS = new Set([
  "goal_status",
  "message",
  "delta",
  "stream_end",
  "turn_end",
]);

// --- arguments ---------------------------------------------------------------

const SCENARIOS = ["rtt", "stream", "fanout", "connect", "idle", "chats"];

function parse(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      clients: { type: "string", default: "1" },
      idle: { type: "string", default: "0" },
      deltas: { type: "string", default: "50" },
      duration: { type: "string", default: "3" },
      warmup: { type: "string", default: "0.5" },
      reps: { type: "string", default: "5" },
      total: { type: "string", default: "1000" },
      concurrency: { type: "string", default: "50" },
      hold: { type: "string", default: "60" },
      "max-ops": { type: "string", default: "10000000" },
      "max-seconds": { type: "string", default: "170" },
      "server-pid": { type: "string" },
      mode: { type: "string", default: "new_chat" },
      step: { type: "string", default: "50000" },
      connections: { type: "string", default: "4" },
      "per-conn": { type: "string", default: "1000" },
      window: { type: "string", default: "32" },
      client: { type: "string", default: "ws" },
    },
  });
  if (positionals.length !== 2 || !SCENARIOS.includes(positionals[1])) {
    fail(`usage: loadgen.mjs URL {${SCENARIOS.join("|")}} [options]`);
  }
  const num = (name) => {
    const v = Number(values[name]);
    if (!Number.isFinite(v) || v < 0) fail(`--${name}: not a number: ${values[name]}`);
    return v;
  };
  const mode = values.mode;
  if (mode !== "new_chat" && mode !== "message") fail(`--mode: ${mode}`);
  if (values.client !== "ws" && values.client !== "raw") fail(`--client: ${values.client}`);
  return {
    url: checkLoopback(positionals[0]),
    scenario: positionals[1],
    clients: Math.max(1, Math.floor(num("clients"))),
    idle: Math.floor(num("idle")),
    deltas: Math.max(1, Math.floor(num("deltas"))),
    duration: num("duration"),
    warmup: num("warmup"),
    reps: Math.max(1, Math.floor(num("reps"))),
    total: Math.max(1, Math.floor(num("total"))),
    concurrency: Math.max(1, Math.floor(num("concurrency"))),
    hold: num("hold"),
    maxOps: Math.floor(num("max-ops")),
    maxSeconds: num("max-seconds"),
    serverPid: values["server-pid"] ? Number(values["server-pid"]) : null,
    mode,
    step: Math.max(1, Math.floor(num("step"))),
    connections: Math.max(1, Math.floor(num("connections"))),
    perConn: Math.max(1, Math.floor(num("per-conn"))),
    window: Math.max(1, Math.floor(num("window"))),
    client: values.client,
  };
}

function fail(message) {
  process.stderr.write(`loadgen: ${message}\n`);
  process.exit(2);
}

function checkLoopback(url) {
  let parts;
  try {
    parts = new URL(url);
  } catch {
    fail(`need ws://HOST:PORT/..., got ${JSON.stringify(url)}`);
  }
  if (parts.protocol !== "ws:" || !parts.port) {
    fail(`need ws://HOST:PORT/..., got ${JSON.stringify(url)}`);
  }
  const host = parts.hostname.replace(/^\[|\]$/g, "");
  const loopback =
    host === "localhost" ||
    (isIP(host) === 4 && host.startsWith("127.")) ||
    (isIP(host) === 6 && (host === "::1" || host === "0:0:0:0:0:0:0:1"));
  if (!loopback) fail(`refusing non-loopback host ${JSON.stringify(host)}`);
  return url;
}

// --- connections ---------------------------------------------------------------

/** The event name of a frame: the fast path reads `{"event":"NAME"` in place. */
function eventName(data) {
  // `{"event":"` (msgspec, compact json) or `{"event": "` (json.dumps defaults).
  if (data.length > 11 && data[0] === 0x7b && data[2] === 0x65 && data[8] === 0x3a) {
    const start = data[9] === 0x22 ? 10 : data[10] === 0x22 ? 11 : -1;
    if (start > 0) {
      const end = data.indexOf(0x22, start);
      if (end > start) return data.latin1Slice(start, end);
    }
  }
  try {
    const obj = JSON.parse(data.toString());
    return typeof obj?.event === "string" ? obj.event : "?";
  } catch {
    return "?";
  }
}

class Conn {
  constructor(ws) {
    this.ws = ws;
    this.frames = 0; // every frame
    this.turnFrames = 0; // frames of TURN_EVENTS
    this.counts = new Map();
    this.ready = null;
    this.closed = false;
    this.waiter = null; // {name, count, resolve, reject, timer}
    this.closedPromise = new Promise((resolve) => {
      this._resolveClosed = resolve;
    });
  }

  onMessage(data) {
    this.frames += 1;
    const name = eventName(data);
    if (TURN_EVENTS.has(name)) this.turnFrames += 1;
    const count = (this.counts.get(name) ?? 0) + 1;
    this.counts.set(name, count);
    if (name === "ready") this.ready = JSON.parse(data.toString());
    const w = this.waiter;
    if (w !== null && w.name === name && count >= w.count) {
      this.waiter = null;
      clearTimeout(w.timer);
      w.resolve();
    }
  }

  onClose() {
    this.closed = true;
    this._resolveClosed();
    const w = this.waiter;
    this.waiter = null;
    if (w !== null) {
      clearTimeout(w.timer);
      w.reject(new Error("connection closed"));
    }
  }

  count(name) {
    return this.counts.get(name) ?? 0;
  }

  /** Wait until `count` frames of event `name` have arrived in total. */
  waitEvent(name, count, withinMs = OP_TIMEOUT_MS) {
    if ((this.counts.get(name) ?? 0) >= count) return Promise.resolve();
    if (this.closed) return Promise.reject(new Error("connection closed"));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.waiter?.timer === timer) this.waiter = null;
        reject(new Error(`timeout waiting for ${name} #${count}`));
      }, withinMs);
      this.waiter = { name, count, resolve, reject, timer };
    });
  }

  send(text) {
    if (this.closed || this.ws.readyState !== WebSocket.OPEN) {
      throw new Error("connection closed");
    }
    this.ws.send(text);
  }


  /** Closing handshake, then wait for TCP to close (or give up and drop it). */
  async close() {
    if (this.closed) return;
    const timer = setTimeout(() => this.ws.terminate(), CLOSE_TIMEOUT_MS);
    try {
      this.ws.close(1000);
    } catch {
      this.ws.terminate();
    }
    await this.closedPromise;
    clearTimeout(timer);
  }
}

/** Connect and wait for `ready`, with the client chosen by --client. */
function openConn(url) {
  return CLIENT === "raw" ? openRaw(url) : openWs(url);
}

function openWs(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, {
      perMessageDeflate: false,
      handshakeTimeout: CONNECT_TIMEOUT_MS,
      maxPayload: MAX_PAYLOAD,
      skipUTF8Validation: true,
    });
    const conn = new Conn(ws);
    ws.on("message", (data) => conn.onMessage(data));
    ws.on("close", () => conn.onClose());
    settleOnReady(conn, ws, resolve, reject);
  });
}

function settleOnReady(conn, transport, resolve, reject) {
  let settled = false;
  transport.on("error", (err) => {
    if (!settled) {
      settled = true;
      transport.terminate();
      reject(err);
    }
  });
  conn.waitEvent("ready", 1, CONNECT_TIMEOUT_MS).then(
    () => {
      settled = true;
      resolve(conn);
    },
    (err) => {
      if (!settled) {
        settled = true;
        transport.terminate();
        reject(err);
      }
    },
  );
}

// --- the raw client --------------------------------------------------------------

const WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const OPEN = WebSocket.OPEN;

/**
 * A minimal RFC 6455 client on `net` with the interface Conn uses (send,
 * close, terminate, readyState, events), for `--client raw`.
 *
 * The `ws` client opens a connection through Node's HTTP client, which costs
 * the load generator about three times the CPU of a raw handshake; in the
 * connect scenario that made the load generator, not the server, the
 * bottleneck. This client writes the upgrade request itself, checks
 * Sec-WebSocket-Accept, parses frames in place, answers pings, masks what
 * it sends, and does the closing handshake.
 */
class RawTransport extends EventEmitter {
  constructor(url) {
    super();
    const parts = new URL(url);
    this.readyState = 0;
    this.key = randomBytes(16).toString("base64");
    this.accept = createHash("sha1").update(this.key + WS_GUID).digest("base64");
    this.buf = null;
    this.fragments = [];
    this.closeSent = false;
    const host = parts.hostname.replace(/^\[|\]$/g, "");
    const target = (parts.pathname || "/") + parts.search;
    this.socket = netConnect({ host, port: Number(parts.port) });
    this.socket.setNoDelay(true);
    this.socket.on("connect", () => {
      this.socket.write(
        `GET ${target} HTTP/1.1\r\nHost: ${parts.host}\r\nUpgrade: websocket\r\n` +
          "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
          `Sec-WebSocket-Key: ${this.key}\r\n\r\n`,
      );
    });
    this.socket.on("data", (data) => this.onData(data));
    this.socket.on("error", (err) => this.emit("error", err));
    this.socket.on("close", () => {
      this.readyState = 3;
      this.emit("close");
    });
  }

  onData(data) {
    let buf = this.buf === null ? data : Buffer.concat([this.buf, data]);
    this.buf = null;
    if (this.readyState === 0) {
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) {
        this.buf = buf;
        return;
      }
      const head = buf.latin1Slice(0, end);
      buf = buf.subarray(end + 4);
      const accept = /\r\nsec-websocket-accept:\s*(\S+)/i.exec(head);
      if (!head.startsWith("HTTP/1.1 101") || accept?.[1] !== this.accept) {
        this.emit("error", new Error(`handshake refused: ${head.split("\r\n")[0]}`));
        this.socket.destroy();
        return;
      }
      this.readyState = OPEN;
    }
    let pos = 0;
    const n = buf.length;
    while (n - pos >= 2) {
      const b0 = buf[pos];
      let length = buf[pos + 1] & 0x7f;
      let start = pos + 2;
      if (length === 126) {
        if (n - pos < 4) break;
        length = buf.readUInt16BE(pos + 2);
        start = pos + 4;
      } else if (length === 127) {
        if (n - pos < 10) break;
        length = Number(buf.readBigUInt64BE(pos + 2));
        start = pos + 10;
      }
      const end = start + length;
      if (end > n) break;
      const opcode = b0 & 0x0f;
      const payload = buf.subarray(start, end);
      pos = end;
      if (opcode <= 2) {
        if (!(b0 & 0x80)) {
          this.fragments.push(Buffer.from(payload));
          continue;
        }
        let message = payload;
        if (this.fragments.length) {
          message = Buffer.concat([...this.fragments, payload]);
          this.fragments = [];
        }
        this.emit("message", message);
      } else if (opcode === 9) {
        this.sendFrame(0xa, payload);
      } else if (opcode === 8) {
        if (!this.closeSent) this.sendFrame(8, payload.subarray(0, 2));
        this.closeSent = true;
        this.readyState = 2;
      }
    }
    if (pos < n) this.buf = Buffer.from(buf.subarray(pos));
  }

  sendFrame(opcode, payload) {
    const n = payload.length;
    const head = n < 126 ? 6 : n < 65536 ? 8 : 14;
    const frame = Buffer.allocUnsafe(head + n);
    frame[0] = 0x80 | opcode;
    if (n < 126) {
      frame[1] = 0x80 | n;
    } else if (n < 65536) {
      frame[1] = 0x80 | 126;
      frame.writeUInt16BE(n, 2);
    } else {
      frame[1] = 0x80 | 127;
      frame.writeBigUInt64BE(BigInt(n), 2);
    }
    randomFillSync(frame, head - 4, 4);
    for (let i = 0; i < n; i++) frame[head + i] = payload[i] ^ frame[head - 4 + (i & 3)];
    this.socket.write(frame);
  }

  send(text) {
    this.sendFrame(1, Buffer.from(text));
  }

  close(code) {
    if (this.closeSent || this.readyState !== OPEN) return;
    const body = Buffer.allocUnsafe(2);
    body.writeUInt16BE(code, 0);
    this.sendFrame(8, body);
    this.closeSent = true;
    this.readyState = 2;
  }

  terminate() {
    this.socket.destroy();
  }
}

function openRaw(url) {
  return new Promise((resolve, reject) => {
    const transport = new RawTransport(url);
    const conn = new Conn(transport);
    transport.on("message", (data) => conn.onMessage(data));
    transport.on("close", () => conn.onClose());
    const timer = setTimeout(() => transport.terminate(), CONNECT_TIMEOUT_MS);
    settleOnReady(
      conn,
      transport,
      (c) => {
        clearTimeout(timer);
        resolve(c);
      },
      (err) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}

async function mapLimited(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

function openMany(url, count) {
  return mapLimited(new Array(count).fill(url), OPEN_CONCURRENCY, openConn);
}

async function closeMany(conns) {
  await mapLimited(conns, OPEN_CONCURRENCY * 4, async (c) => {
    try {
      await c.close();
    } catch {
      // closing is best effort
    }
  });
}

// --- measurement -------------------------------------------------------------------

let CLK_TCK = 100;
try {
  CLK_TCK = Number(execFileSync("getconf", ["CLK_TCK"], { timeout: 5000 }).toString()) || 100;
} catch {
  // 100 on every Linux we know
}

class Meter {
  constructor(serverPid) {
    this.serverPid = serverPid;
  }

  machineBusy() {
    try {
      const line = readFileSync("/proc/stat", "latin1").split("\n", 1)[0];
      const f = line.trim().split(/\s+/).slice(1).map(Number);
      // user nice system idle iowait irq softirq steal ...
      const busy = f.slice(0, 8).reduce((a, b) => a + b, 0) - f[3] - f[4];
      return busy / CLK_TCK;
    } catch {
      return null;
    }
  }

  serverCpu() {
    if (!this.serverPid) return null;
    try {
      const text = readFileSync(`/proc/${this.serverPid}/stat`, "latin1");
      const f = text.slice(text.lastIndexOf(")") + 1).trim().split(/\s+/);
      return (Number(f[11]) + Number(f[12])) / CLK_TCK;
    } catch {
      return null;
    }
  }

  snapshot() {
    const u = process.cpuUsage();
    return {
      wall: performance.now() / 1000,
      client: (u.user + u.system) / 1e6,
      server: this.serverCpu(),
      machine: this.machineBusy(),
    };
  }

  static report(start, end) {
    const wall = end.wall - start.wall || 1e-9;
    const client = end.client - start.client;
    const out = {
      wall_s: round(wall, 4),
      client_cpu_s: round(client, 4),
      client_cpu_util: round(client / wall, 3),
    };
    let server = null;
    if (start.server !== null && end.server !== null) {
      server = end.server - start.server;
      out.server_cpu_s = round(server, 4);
      out.server_cpu_util = round(server / wall, 3);
    }
    if (start.machine !== null && end.machine !== null) {
      const other = Math.max(0, end.machine - start.machine - client - (server ?? 0));
      out.other_cpu_util = round(other / wall, 3);
    }
    return out;
  }
}

function round(x, digits) {
  const m = 10 ** digits;
  return Math.round(x * m) / m;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function errorText(err) {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

function otherFrames(conns) {
  const out = {};
  for (const c of conns) {
    for (const [name, n] of c.counts) {
      if (!TURN_EVENTS.has(name) && name !== "ready") out[name] = (out[name] ?? 0) + n;
    }
  }
  return out;
}

/** Sleep through warm-up, measure `counter` over the window, then stop. */
async function timedWindow(args, meter, counter, state) {
  const until = (ms) =>
    Promise.race([sleep(ms), state.failed]).catch(() => {
      // a client failed: end the window now
    });
  if (args.warmup > 0) await until(args.warmup * 1000);
  const n0 = counter();
  const t0 = meter.snapshot();
  await until(args.duration * 1000);
  const n1 = counter();
  const t1 = meter.snapshot();
  state.stop = true;
  return [n1 - n0, Meter.report(t0, t1)];
}

function failureState() {
  const state = { stop: false, errors: [] };
  state.failed = new Promise((_, reject) => {
    state.fail = (err) => {
      state.errors.push(errorText(err));
      reject(err);
    };
  });
  state.failed.catch(() => {});
  return state;
}

// --- scenarios ----------------------------------------------------------------------

async function scenarioTurns(args, meter, text, frames) {
  const idle = args.idle ? await openMany(args.url, args.idle) : [];
  const active = await openMany(args.url, args.clients);
  const state = failureState();
  let done = 0;
  const deadline = performance.now() + (args.warmup + args.duration) * 1000 + OP_TIMEOUT_MS;

  async function client(conn) {
    try {
      while (!state.stop && done < args.maxOps && performance.now() < deadline) {
        const wantTurn = conn.count("turn_end") + 1;
        const wantMsg = conn.count("message") + 1;
        conn.send(text);
        await conn.waitEvent("turn_end", wantTurn);
        if (!frames && conn.count("message") < wantMsg) {
          throw new Error("turn_end without the message");
        }
        done += 1;
      }
    } catch (err) {
      state.fail(err);
    }
  }

  const tasks = active.map(client);
  const counter = frames
    ? () => active.reduce((n, c) => n + c.turnFrames, 0)
    : () => done;
  const [count, window] = await timedWindow(args, meter, counter, state);
  await Promise.all(tasks);
  // Every turn must have brought its frames, no more, no fewer (a server
  // that merged deltas would send fewer): wait for each turn's last frame.
  const perTurn = frames ? args.deltas + 4 : 4;
  for (const conn of active) {
    const turns = conn.count("turn_end");
    try {
      await conn.waitEvent("goal_status", 2 * turns, CLOSE_TIMEOUT_MS);
    } catch (err) {
      state.errors.push(errorText(err));
      continue;
    }
    if (conn.turnFrames !== turns * perTurn) {
      state.errors.push(
        `${turns} turns brought ${conn.turnFrames} frames, not ${turns * perTurn}`,
      );
    }
  }
  const others = otherFrames(active);
  await closeMany([...active, ...idle]);
  return {
    value: round(count / window.wall_s, 1),
    unit: frames ? "frames/s" : "round trips/s",
    count,
    round_trips_total: done,
    errors: state.errors.slice(0, 10),
    error_count: state.errors.length,
    other_frames: others,
    ...window,
  };
}

async function scenarioFanout(args, meter) {
  const conns = await openMany(args.url, args.clients);
  const sender = conns[0];
  const chatId = sender.ready.chat_id;
  const attach = JSON.stringify({ type: "attach", chat_id: chatId });
  for (const c of conns.slice(1)) c.send(attach);
  await Promise.all(conns.slice(1).map((c) => c.waitEvent("attached", 1)));
  const text = `stream:${args.deltas}`;
  const perTurn = args.deltas + 4; // goal_status, deltas, stream_end, turn_end, goal_status
  let totalFrames = 0;
  let totalWall = 0;
  let turns = 0;
  let start = null;
  const startedAt = performance.now();
  for (let rep = 0; rep <= args.reps; rep++) {
    // rep 0 warms up
    if (performance.now() - startedAt > (args.duration * 1000 + OP_TIMEOUT_MS) * 2) break;
    const goal = conns.map((c) => c.count("goal_status") + 2);
    const before = conns.reduce((n, c) => n + c.turnFrames, 0);
    const snap = meter.snapshot();
    sender.send(text);
    await Promise.all(conns.map((c, i) => c.waitEvent("goal_status", goal[i])));
    const end = meter.snapshot();
    const delivered = conns.reduce((n, c) => n + c.turnFrames, 0) - before;
    if (delivered !== perTurn * conns.length) {
      throw new Error(`expected ${perTurn * conns.length} frames, got ${delivered}`);
    }
    if (rep === 0) continue;
    if (start === null) start = snap;
    totalFrames += delivered;
    totalWall += end.wall - snap.wall;
    turns += 1;
  }
  const window = Meter.report(start, meter.snapshot());
  const others = otherFrames(conns);
  await closeMany(conns);
  return {
    value: round(totalFrames / totalWall, 1),
    unit: "frames/s",
    count: totalFrames,
    turns,
    turn_wall_s: round(totalWall, 4),
    subscribers: conns.length,
    other_frames: others,
    ...window,
  };
}

async function scenarioConnect(args, meter) {
  const errors = [];
  let next = 0;

  async function worker(total) {
    while (next < total) {
      next += 1;
      try {
        const conn = await openConn(args.url);
        await conn.close();
      } catch (err) {
        errors.push(errorText(err));
      }
    }
  }

  const warm = Math.min(args.concurrency * 2, args.total);
  await Promise.all(Array.from({ length: args.concurrency }, () => worker(warm)));
  next = 0;
  errors.length = 0;
  const start = meter.snapshot();
  await Promise.all(Array.from({ length: args.concurrency }, () => worker(args.total)));
  const window = Meter.report(start, meter.snapshot());
  const ok = args.total - errors.length;
  return {
    value: round(ok / window.wall_s, 1),
    unit: "connects/s",
    count: ok,
    errors: errors.slice(0, 10),
    error_count: errors.length,
    ...window,
  };
}

// stdin lines, for the phases the parent drives
let stdinLines = null;

function readLine(withinS) {
  if (stdinLines === null) {
    stdinLines = { queue: [], waiters: [], ended: false };
    const rl = createInterface({ input: process.stdin });
    rl.on("line", (line) => {
      const w = stdinLines.waiters.shift();
      if (w) w(line);
      else stdinLines.queue.push(line);
    });
    rl.on("close", () => {
      stdinLines.ended = true;
      for (const w of stdinLines.waiters.splice(0)) w(null);
    });
  }
  if (stdinLines.queue.length) return Promise.resolve(stdinLines.queue.shift());
  if (stdinLines.ended) return Promise.resolve(null);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      const i = stdinLines.waiters.indexOf(resolver);
      if (i >= 0) stdinLines.waiters.splice(i, 1);
      resolve(null);
    }, withinS * 1000);
    const resolver = (line) => {
      clearTimeout(timer);
      resolve(line);
    };
    stdinLines.waiters.push(resolver);
  });
}

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

async function scenarioIdle(args) {
  // Warm the server up (lazy imports, first allocations) before the baseline.
  await closeMany(await openMany(args.url, Math.min(20, args.total)));
  emit({ phase: "baseline" });
  await readLine(args.hold);
  const t0 = performance.now();
  const conns = await openMany(args.url, args.total);
  const opened = (performance.now() - t0) / 1000;
  emit({ phase: "holding", connections: conns.length });
  await readLine(args.hold);
  const alive = conns.filter((c) => !c.closed).length;
  await closeMany(conns);
  return {
    value: conns.length,
    unit: "connections",
    alive_at_end: alive,
    open_s: round(opened, 3),
  };
}

async function scenarioChats(args, meter) {
  const respond = args.mode === "new_chat" ? "attached" : "turn_end";
  let made = 0; // chats asked for
  let acked = 0; // chats answered
  let serial = 0;
  const errors = [];
  const runId = Date.now().toString(36);

  function request() {
    if (args.mode === "new_chat") return '{"type":"new_chat"}';
    serial += 1;
    return JSON.stringify({
      type: "message",
      chat_id: `bench-${runId}-${serial}`,
      content: "hello",
    });
  }

  // One connection: `count` chats with at most `window` in flight, then close.
  async function batch(count) {
    const conn = await openConn(args.url);
    try {
      let sent = 0;
      let base = conn.count(respond);
      while (sent < count && sent < args.window) {
        conn.send(request());
        sent += 1;
      }
      let got = 0;
      while (got < count) {
        await conn.waitEvent(respond, base + got + 1);
        const now = conn.count(respond) - base;
        acked += now - got;
        got = now;
        while (sent < count && sent - got < args.window) {
          conn.send(request());
          sent += 1;
        }
      }
    } finally {
      await conn.close();
    }
  }

  async function worker(limit) {
    while (made < limit) {
      const n = Math.min(args.perConn, limit - made);
      made += n;
      try {
        await batch(n);
      } catch (err) {
        errors.push(errorText(err));
        if (errors.length > 20) throw err;
      }
    }
  }

  await closeMany(await openMany(args.url, Math.min(20, args.total)));
  const checkpoints = [];
  const first = meter.snapshot();
  emit({ phase: "checkpoint", chats: 0 });
  await readLine(args.hold);
  while (made < args.total) {
    const limit = Math.min(args.total, made + args.step);
    const t0 = meter.snapshot();
    await Promise.all(Array.from({ length: args.connections }, () => worker(limit)));
    const window = Meter.report(t0, meter.snapshot());
    const point = {
      phase: "checkpoint",
      chats: acked,
      asked: made,
      rate: round((limit - (checkpoints.at(-1)?.asked ?? 0)) / window.wall_s, 1),
      ...window,
    };
    checkpoints.push(point);
    emit(point);
    await readLine(args.hold);
  }
  return {
    value: acked,
    unit: "chats",
    mode: args.mode,
    errors: errors.slice(0, 10),
    error_count: errors.length,
    ...Meter.report(first, meter.snapshot()),
  };
}

async function run(args) {
  const meter = new Meter(args.serverPid);
  switch (args.scenario) {
    case "rtt":
      return scenarioTurns(args, meter, "hello", false);
    case "stream":
      return scenarioTurns(args, meter, `stream:${args.deltas}`, true);
    case "fanout":
      return scenarioFanout(args, meter);
    case "connect":
      return scenarioConnect(args, meter);
    case "idle":
      return scenarioIdle(args);
    default:
      return scenarioChats(args, meter);
  }
}

const args = parse(process.argv.slice(2));
CLIENT = args.client;
setTimeout(() => {
  process.stderr.write(`loadgen: gave up after ${args.maxSeconds} s\n`);
  process.exit(3);
}, args.maxSeconds * 1000).unref();
try {
  const result = await run(args);
  const client = args.client === "ws" ? `node ws ${wsVersion()}` : "node raw";
  emit({ scenario: args.scenario, client, ...result });
  process.exit(0);
} catch (err) {
  process.stderr.write(`loadgen: ${err?.stack ?? err}\n`);
  process.exit(1);
}

function wsVersion() {
  try {
    const url = new URL("./node_modules/ws/package.json", import.meta.url);
    return JSON.parse(readFileSync(url, "utf8")).version;
  } catch {
    return "?";
  }
}
