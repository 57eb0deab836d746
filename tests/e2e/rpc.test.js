// StimulusReflex with the reflex on the far side of AnyCable RPC, in headless Chromium: the
// page comes from the "Rails app" (the fake app of the RPC tests, run as a process, written
// from the wire document: no Rails app runs here), the cable is ferrocable's on another origin.
// A click sends the reflex as a `message` command over RPC; the app broadcasts its CableReady
// envelope on `StimulusReflex::Channel:<session>` through ferrocable's `/_broadcast`; the tab
// morphs.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const fs = require('node:fs');
const { spawn } = require('node:child_process');
const net = require('node:net');
const { launch, withServer, connected, openPage } = require('./browser');

const FAKE_APP = process.env.FAKE_RAILS_BIN || path.resolve(__dirname, '../../target/debug/examples/fake_rails');
const NODE_MODULES = path.resolve(__dirname, '../../apps/demo/node_modules');
const ARTIFACTS = path.join(__dirname, 'artifacts');
const KEY = 'e2e-rpc-broadcast-key';
let browser;

before(async () => { browser = await launch(); });
after(async () => { if (browser) await browser.close(); });

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

async function startFakeApp(ferrocablePort) {
  const child = spawn(FAKE_APP, ['0', `http://127.0.0.1:${ferrocablePort}/_broadcast`, KEY], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, FAKE_RAILS_NODE_MODULES: NODE_MODULES },
  });
  const url = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error('the fake app did not start')), 10000);
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening on (\S+)/);
      if (m) { clearTimeout(timer); resolve(`http://${m[1]}`); }
    });
    child.once('exit', (code) => reject(new Error(`fake app exited with ${code}`)));
  });
  return { child, url };
}

test('a StimulusReflex click morphs the tab with the reflex behind RPC', async () => {
  const port = await freePort();
  const app = await startFakeApp(port);
  try {
    const server = { port, env: {
      ANYCABLE_RPC_HOST: `${app.url}/_anycable`,
      ANYCABLE_HTTP_RPC_SECRET: 'fake-rails-rpc-secret',
      ANYCABLE_BROADCAST_KEY: KEY,
      ANYCABLE_ALLOWED_ORIGINS: app.url,
    } };
    await withServer(server, async () => {
      const { context, page } = await openPage(browser, `${app.url}/`);
      await connected(page);
      assert.equal((await page.textContent('#count')).trim(), '0');
      await page.click('#increment');
      await page.waitForFunction(() => document.querySelector('#count').textContent.trim() === '1');
      await page.click('#increment');
      await page.waitForFunction(() => document.querySelector('#count').textContent.trim() === '2');
      fs.mkdirSync(ARTIFACTS, { recursive: true });
      await page.screenshot({ path: path.join(ARTIFACTS, 'reflex-over-rpc.png') });
      assert.deepEqual(page.errors, []);

      const calls = await (await fetch(`${app.url}/_calls`)).json();
      const reflexes = calls.filter((c) => c.path === 'command' && c.body.command === 'message');
      assert.equal(reflexes.length, 2, 'each click is one message command to the app');
      const data = JSON.parse(reflexes[0].body.data);
      assert.equal(data.target, 'Counter#increment');
      assert.match(reflexes[0].body.env.headers.cookie, /user=sr/, 'the page cookie travels with the reflex');
      assert.equal(JSON.parse(reflexes[0].body.identifier).channel, 'StimulusReflex::Channel');
      await context.close();
    });
  } finally {
    app.child.kill('SIGKILL');
  }
});
