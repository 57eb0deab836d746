'use strict';
// Test harness for the end-to-end suite: runs the real `ferrocable` binary, talks to it with
// the real `@rails/actioncable` client (over `ws`) and with a raw `ws` client for frame-level
// checks. Every wait is bounded by a timeout, and every process, consumer and socket a test
// creates is tracked by a Scope so that it is torn down even when the test fails.

const { spawn } = require('node:child_process');
const http = require('node:http');
const net = require('node:net');
const path = require('node:path');

const WebSocket = require('ws');
const ActionCable = require('@rails/actioncable');

const BIN = process.env.FERROCABLE_BIN || path.resolve(__dirname, '..', '..', 'target', 'debug', 'ferrocable');
const PROTOCOL = 'actioncable-v1-json';
const RAILS_PROTOCOLS = ActionCable.INTERNAL.protocols; // ['actioncable-v1-json', 'actioncable-unsupported']

// ---------------------------------------------------------------------------------------------
// Small utilities

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves or rejects like `promise`, or rejects after `ms` with a message naming `what`. */
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `fn` until it returns a truthy value (returned) or `ms` pass (throws, naming `what`). */
async function waitUntil(fn, ms, what, interval = 50) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    }
    await sleep(interval);
  }
}

/** A free TCP port on 127.0.0.1: listen on port 0, read the port, close. */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** GET over a fresh connection (no keep-alive agent, so no handle outlives the request). */
function httpGet(url, { timeout = 2000, headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false, headers: { Connection: 'close', ...headers } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.setTimeout(timeout, () => req.destroy(new Error(`GET ${url} timed out after ${timeout} ms`)));
    req.on('error', reject);
  });
}

/**
 * An append-only log of events with bounded waits: `waitFor(pred)` resolves with the first
 * entry (at index >= `from`) that matches, already present or still to come.
 */
class EventLog {
  constructor(name) {
    this.name = name;
    this.items = [];
    this.waiters = new Set();
  }

  push(item) {
    this.items.push(item);
    for (const w of [...this.waiters]) {
      if (this.items.length - 1 >= w.from && w.pred(item)) {
        this.waiters.delete(w);
        w.resolve(item);
      }
    }
  }

  find(pred, from = 0) {
    return this.items.slice(from).find(pred);
  }

  filter(pred, from = 0) {
    return this.items.slice(from).filter(pred);
  }

  get length() {
    return this.items.length;
  }

  waitFor(pred, { timeout = 5000, from = 0, what = 'a matching event' } = {}) {
    const found = this.find(pred, from);
    if (found !== undefined) return Promise.resolve(found);
    let waiter;
    const p = new Promise((resolve) => {
      waiter = { pred, from, resolve };
      this.waiters.add(waiter);
    });
    return withTimeout(p, timeout, `${what} on ${this.name}; seen: ${JSON.stringify(this.items)}`)
      .finally(() => this.waiters.delete(waiter));
  }
}

// ---------------------------------------------------------------------------------------------
// The server process

// Children run in their own process group (detached), so that a SIGKILL at cleanup also
// reaches anything they started (e.g. when FERROCABLE_BIN is a wrapper script).
const running = new Set(); // every live child, killed on process exit as a last resort
function killGroup(child, signal) {
  if (child.pid === undefined) return;
  try { process.kill(-child.pid, signal); } catch { /* group gone */ }
  try { child.kill(signal); } catch { /* already gone */ }
}
process.on('exit', () => {
  for (const child of running) killGroup(child, 'SIGKILL');
});

class Server {
  /**
   * @param {object} opts
   * @param {string[]} [opts.args] extra flags for `ferrocable serve`
   * @param {boolean} [opts.bench] pass --bench-channel (default true)
   * @param {number} [opts.port] fixed port (default: a free one)
   * @param {object} [opts.env] extra environment variables
   */
  constructor({ args = [], bench = true, port, env = {} } = {}) {
    this.args = [...(bench ? ['--bench-channel'] : []), ...args];
    this.env = env;
    this.port = port;
    this.child = null;
    this.stderr = ''; // all runs, in order
    this.exited = null; // promise of {code, signal} for the current child
  }

  get httpUrl() { return `http://127.0.0.1:${this.port}`; }
  get cableUrl() { return `ws://127.0.0.1:${this.port}/cable`; }
  /** The Origin a page served by this server would send (same origin as the Host). */
  get sameOrigin() { return `http://127.0.0.1:${this.port}`; }
  get isRunning() {
    return this.child !== null && this.child.pid !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Starts the binary and waits for GET /health to answer 200. Retries on a port clash. */
  async start({ timeout = 10000 } = {}) {
    if (this.isRunning) throw new Error('server already running');
    const fixedPort = this.port !== undefined;
    const deadline = Date.now() + timeout;
    let lastError;
    for (let attempt = 0; attempt < 5 && Date.now() < deadline; attempt++) {
      if (!fixedPort || this.port === undefined) this.port = await freePort();
      try {
        await this._spawnAndWait(deadline);
        return this;
      } catch (e) {
        lastError = e;
        await this.kill();
        if (e.fatal) break;
        if (!fixedPort) this.port = undefined;
        await sleep(100);
      }
    }
    throw new Error(`ferrocable did not start: ${lastError && lastError.message}\n--- stderr ---\n${this.stderrTail()}`);
  }

  /** Starts the server again on the same port (after stop). */
  restart(opts) {
    return this.start(opts);
  }

  async _spawnAndWait(deadline) {
    const child = spawn(BIN, ['serve', '--bind', `127.0.0.1:${this.port}`, ...this.args], {
      stdio: ['ignore', 'ignore', 'pipe'],
      detached: true,
      env: {
        ...process.env,
        NO_COLOR: '1',
        RUST_LOG: process.env.RUST_LOG || 'info',
        // Embedded state (the SQLite session store) goes to a scratch folder, not the repo.
        FERROCABLE_DATA_DIR: process.env.FERROCABLE_DATA_DIR || require('node:path').join(require('node:os').tmpdir(), 'ferrocable-js-data'),
        ...this.env,
      },
    });
    this.child = child;
    running.add(child);
    this.stderr += `--- start pid ${child.pid} on port ${this.port} ---\n`;
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d) => { this.stderr += d; });
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        running.delete(child);
        resolve({ code, signal });
      });
    });
    let exit = null;
    this.exited.then((e) => { exit = e; });
    let spawnError = null;
    child.once('error', (e) => { spawnError = e; });
    let last = 'no answer yet';
    for (;;) {
      if (spawnError) throw Object.assign(new Error(`cannot run ${BIN}: ${spawnError.message}`), { fatal: true });
      if (exit) throw new Error(`exited early (code ${exit.code}, signal ${exit.signal})`);
      try {
        const r = await httpGet(`${this.httpUrl}/health`, { timeout: 500 });
        if (r.status === 200 && r.body.trim() === 'ok') return;
        last = `HTTP ${r.status} ${r.body.trim()}`;
      } catch (e) {
        last = e.message;
      }
      if (Date.now() >= deadline) throw new Error(`GET ${this.httpUrl}/health never answered 200 ok (last: ${last})`);
      await sleep(50);
    }
  }

  /** Sends SIGTERM and waits for the process to exit; returns its exit code. */
  async stop({ timeout = 15000 } = {}) {
    if (!this.child) throw new Error('server never started');
    const exited = this.exited;
    if (this.isRunning) this.child.kill('SIGTERM');
    try {
      const { code, signal } = await withTimeout(exited, timeout, 'ferrocable to exit after SIGTERM');
      return code === null ? `signal ${signal}` : code;
    } catch (e) {
      await this.kill();
      throw e;
    }
  }

  /** Cleanup: SIGKILL if still running, and wait (bounded) for the exit. */
  async kill() {
    if (!this.child || this.child.pid === undefined) return;
    // The whole group, even if the leader already exited (a wrapper may leave children).
    killGroup(this.child, 'SIGKILL');
    await withTimeout(this.exited, 5000, 'ferrocable to die after SIGKILL').catch(() => {});
  }

  stderrTail(lines = 40) {
    return this.stderr.split('\n').slice(-lines).join('\n');
  }

  /** The whole /metrics text. */
  async metricsText() {
    const r = await httpGet(`${this.httpUrl}/metrics`);
    if (r.status !== 200) throw new Error(`GET /metrics answered ${r.status}`);
    return r.body;
  }

  /** See {@link metric}. */
  metric(name, labels) {
    return metric(this.httpUrl, name, labels);
  }
}

/**
 * Reads one sample from Prometheus text: `name` with exactly `labels` (an object, or none).
 * Returns the number, or null when the sample is absent (a labelled counter appears only
 * once counted).
 */
function parseMetric(text, name, labels = {}) {
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = {};
    if (m[3]) {
      for (const pair of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) got[pair[1]] = pair[2];
    }
    const want = Object.entries(labels);
    if (want.length !== Object.keys(got).length) continue;
    if (want.every(([k, v]) => got[k] === String(v))) return Number(m[4]);
  }
  return null;
}

/** Reads a metric from the server at `httpUrl` (e.g. `http://127.0.0.1:PORT`). */
async function metric(httpUrl, name, labels) {
  const r = await httpGet(`${httpUrl}/metrics`);
  if (r.status !== 200) throw new Error(`GET /metrics answered ${r.status}`);
  return parseMetric(r.body, name, labels);
}

/** Polls a metric until it equals `value`; returns it, or throws with the last value seen. */
async function waitForMetric(server, name, labels, value, timeout = 3000) {
  let last;
  try {
    await waitUntil(async () => {
      last = await server.metric(name, labels);
      return last === value;
    }, timeout, `${name}${JSON.stringify(labels || {})} == ${value}`);
  } catch (e) {
    throw new Error(`${name}${JSON.stringify(labels || {})} expected ${value}, last read ${last}`);
  }
  return last;
}

// ---------------------------------------------------------------------------------------------
// The Rails client in Node

// Browser globals the client touches: ConnectionMonitor calls the global
// add/removeEventListener('visibilitychange'); visibilityDidChange reads document; the
// URL helpers read document only for relative URLs (we always pass ws:// URLs).
if (typeof globalThis.addEventListener !== 'function') globalThis.addEventListener = () => {};
if (typeof globalThis.removeEventListener !== 'function') globalThis.removeEventListener = () => {};
if (typeof globalThis.document === 'undefined') {
  globalThis.document = {
    visibilityState: 'visible',
    addEventListener() {},
    removeEventListener() {},
    head: { querySelector: () => null },
  };
}
if (process.env.ACTIONCABLE_DEBUG) ActionCable.logger.enabled = true;

// The adapter is global to the client, so the Origin is looked up per URL: each consumer
// gets a unique URL (a `consumer` query parameter, ignored by the server).
const consumerOrigins = new Map();
let consumerSeq = 0;

class OriginWebSocket extends WebSocket {
  constructor(url, protocols) {
    const origin = consumerOrigins.has(url) ? consumerOrigins.get(url) : `http://${new URL(url).host}`;
    super(url, protocols, origin ? { origin } : {});
  }
}
ActionCable.adapters.WebSocket = OriginWebSocket;

/**
 * A Rails consumer for `cableUrl`. `origin` defaults to the same origin as the URL's host;
 * pass null to send no Origin.
 */
function createConsumer(cableUrl, { origin } = {}) {
  const url = new URL(cableUrl);
  url.searchParams.set('consumer', String(++consumerSeq));
  const href = url.toString();
  if (origin !== undefined) consumerOrigins.set(href, origin);
  return ActionCable.createConsumer(href);
}

/**
 * Subscribes with every callback recorded into an EventLog:
 * {type:'initialized'|'connected'|'disconnected'|'rejected'|'received', data|message}.
 */
function subscribe(consumer, params) {
  const events = new EventLog(`subscription ${JSON.stringify(params)}`);
  const subscription = consumer.subscriptions.create(params, {
    initialized() { events.push({ type: 'initialized' }); },
    connected(data) { events.push({ type: 'connected', data }); },
    disconnected(data) { events.push({ type: 'disconnected', data }); },
    rejected() { events.push({ type: 'rejected' }); },
    received(message) { events.push({ type: 'received', message }); },
  });
  return { subscription, events };
}

/** Tears a consumer down for good: no monitor, no pending reopen, socket gone. */
function disposeConsumer(consumer) {
  const conn = consumer.connection;
  try { conn.monitor.stop(); } catch { /* ignore */ }
  try { consumer.subscriptions.guarantor.stopGuaranteeing(); } catch { /* ignore */ }
  // A reopen scheduled with setTimeout(this.open) must find the connection "active" and do nothing.
  conn.isActive = () => true;
  const ws = conn.webSocket;
  if (ws) {
    conn.uninstallEventHandlers();
    ws.on('error', () => {});
    try { ws.terminate(); } catch { /* ignore */ }
  }
}

// ---------------------------------------------------------------------------------------------
// The raw ws client

class RawClient {
  constructor(url, { origin, protocols = RAILS_PROTOCOLS, headers } = {}) {
    this.url = url;
    this.frames = new EventLog(`raw client ${url}`);
    this.texts = [];
    const options = {};
    if (origin) options.origin = origin;
    if (headers) options.headers = headers;
    this.ws = new WebSocket(url, protocols, options);
    this.ws.on('message', (data, isBinary) => {
      const text = isBinary ? data : data.toString('utf8');
      this.texts.push(text);
      let parsed;
      try { parsed = JSON.parse(text); } catch { parsed = { unparsable: String(text) }; }
      this.frames.push(parsed);
    });
    this.closed = new Promise((resolve) => {
      this.ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
    });
    this.errors = [];
    this.ws.on('error', (e) => this.errors.push(e));
  }

  /** Resolves once open; rejects on refusal (with `status`/`body` for an HTTP answer). */
  opened(timeout = 5000) {
    if (this.ws.readyState === WebSocket.OPEN) return Promise.resolve(this);
    const p = new Promise((resolve, reject) => {
      this.ws.once('open', () => resolve(this));
      this.ws.once('unexpected-response', (req, res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c) => { body += c; });
        res.on('end', () => {
          const err = new Error(`upgrade refused with HTTP ${res.statusCode}: ${body}`);
          err.status = res.statusCode;
          err.body = body;
          reject(err);
          req.destroy();
        });
      });
      this.ws.once('error', reject);
      this.closed.then((c) => reject(new Error(`closed before open: ${JSON.stringify(c)}`)));
    });
    return withTimeout(p, timeout, `raw client ${this.url} to open`);
  }

  send(frame) {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
  }

  waitFrame(pred, opts) {
    return this.frames.waitFor(pred, opts);
  }

  subscribeCommand(params) {
    const identifier = JSON.stringify(params);
    this.send({ command: 'subscribe', identifier });
    return identifier;
  }

  perform(identifier, action, data = {}) {
    this.send({ command: 'message', identifier, data: JSON.stringify({ ...data, action }) });
  }

  get isOpen() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  dispose() {
    try { this.ws.terminate(); } catch { /* ignore */ }
  }
}

/** Opens a raw client and waits for it to open. */
async function rawClient(url, opts) {
  const c = new RawClient(url, opts);
  await c.opened(opts && opts.timeout);
  return c;
}

/**
 * Attempts an upgrade that is expected to be refused; resolves {status, body}. Rejects if
 * the socket opens instead.
 */
async function expectRefused(url, opts = {}) {
  const c = new RawClient(url, opts);
  try {
    await c.opened(opts.timeout);
  } catch (e) {
    if (e.status !== undefined) return { status: e.status, body: e.body };
    throw e;
  } finally {
    c.dispose();
  }
  throw new Error(`upgrade to ${url} with Origin ${opts.origin} was accepted, expected a refusal`);
}

// ---------------------------------------------------------------------------------------------
// Scope: everything one test creates, torn down at the end whatever happened

class Scope {
  constructor() {
    this.servers = [];
    this.consumers = [];
    this.raws = [];
  }

  async startServer(opts) {
    const s = new Server(opts);
    this.servers.push(s);
    await s.start();
    return s;
  }

  consumer(cableUrl, opts) {
    const c = createConsumer(cableUrl, opts);
    this.consumers.push(c);
    return c;
  }

  async raw(url, opts) {
    const c = new RawClient(url, opts);
    this.raws.push(c);
    await c.opened(opts && opts.timeout);
    return c;
  }

  serverLogs() {
    return this.servers.map((s) => s.stderrTail()).join('\n');
  }

  async dispose() {
    for (const c of this.consumers.splice(0)) disposeConsumer(c);
    for (const r of this.raws.splice(0)) r.dispose();
    await Promise.all(this.servers.splice(0).map((s) => s.kill()));
  }
}

module.exports = {
  BIN,
  PROTOCOL,
  ActionCable,
  WebSocket,
  EventLog,
  Server,
  Scope,
  RawClient,
  createConsumer,
  subscribe,
  disposeConsumer,
  rawClient,
  expectRefused,
  freePort,
  httpGet,
  metric,
  parseMetric,
  waitForMetric,
  waitUntil,
  withTimeout,
  sleep,
};
