// Starts the real ferrocable binary (or an app built on the ferrocable crate: an example, the
// README quick start) for browser tests: a free port, a scratch data dir (so the SQLite
// session store and the generated secret survive a restart within one test).
'use strict';
const { spawn } = require('node:child_process');
const net = require('node:net');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const BIN = process.env.FERROCABLE_BIN || path.resolve(__dirname, '../../target/debug/ferrocable');

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class Server {
  /**
   * @param {object} [opts]
   * @param {string} [opts.bin] the program (default: the ferrocable binary, run as `serve`)
   * @param {boolean} [opts.bindByEnv] give the address as FERROCABLE_BIND instead of --bind
   * @param {string} [opts.cwd] working directory
   * @param {object} [opts.env] extra environment variables
   * @param {number} [opts.port] a fixed port (default: a free one)
   */
  constructor(opts = {}) {
    this.dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferrocable-e2e-'));
    this.child = null;
    this.log = '';
    this.bin = opts.bin || BIN;
    this.prefix = opts.bin ? [] : ['serve'];
    this.bindByEnv = !!opts.bindByEnv;
    this.cwd = opts.cwd;
    this.env = opts.env || {};
    this.port = opts.port;
  }

  get url() { return `http://127.0.0.1:${this.port}`; }

  async start() {
    if (!this.port) this.port = await freePort();
    const bind = `127.0.0.1:${this.port}`;
    const args = [...this.prefix, ...(this.bindByEnv ? [] : ['--bind', bind]), '--data-dir', this.dataDir];
    const env = { ...process.env, NO_COLOR: '1', RUST_LOG: process.env.RUST_LOG || 'info', ...this.env };
    if (this.bindByEnv) env.FERROCABLE_BIND = bind;
    const child = spawn(this.bin, args, { stdio: ['ignore', 'ignore', 'pipe'], env, cwd: this.cwd });
    child.stderr.on('data', (d) => { this.log = (this.log + d.toString()).slice(-20000); });
    this.child = child;
    const deadline = Date.now() + 15000;
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`${this.bin} exited early:\n${this.log}`);
      try {
        const r = await fetch(`${this.url}/health`);
        if (r.ok) return this;
      } catch { /* not yet */ }
      await sleep(100);
    }
    throw new Error(`ferrocable did not become healthy:\n${this.log}`);
  }

  async stop() {
    const child = this.child;
    if (!child || child.exitCode !== null) return child ? child.exitCode : null;
    const exited = new Promise((r) => child.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    const code = await Promise.race([exited, sleep(15000).then(() => { child.kill('SIGKILL'); return 'killed'; })]);
    this.child = null;
    return code;
  }

  async metric(name) {
    const text = await (await fetch(`${this.url}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith(name + ' '));
    return line ? Number(line.split(' ')[1]) : null;
  }

  async dispose() {
    if (this.child && this.child.exitCode === null) this.child.kill('SIGKILL');
    fs.rmSync(this.dataDir, { recursive: true, force: true });
  }
}

module.exports = { Server, sleep, BIN, freePort };
