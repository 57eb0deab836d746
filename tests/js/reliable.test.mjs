// Reliable delivery over a flaky network, with the real `@anycable/core` client speaking
// `actioncable-v1-ext-json`: 1,000 messages are broadcast while the client's TCP connection is
// destroyed every ~2 s; the client must end with all 1,000, in order, without duplicates
// (session restore + history replay). The same run with the plain `@rails/actioncable`
// client reports what it lost, to show what the extended protocol adds.

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { createCable } from '@anycable/core';

const require = createRequire(import.meta.url);
const { Scope, WebSocket, waitUntil, sleep } = require('./harness.js');
const http = require('node:http');
const { startProxy } = require('./proxy.js');
const { randomUUID } = require('node:crypto');

const MESSAGES = 1000;
const KEY = 'reliable-test-broadcast-key';
const KILL_EVERY_MS = 2000;

const scopes = new Set();
afterEach(async () => {
  for (const s of [...scopes]) {
    scopes.delete(s);
    await s.dispose();
  }
});

function post(url, body) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = http.request(url, {
      method: 'POST',
      agent: false,
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${KEY}`, 'Content-Length': Buffer.byteLength(data), Connection: 'close' },
    }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.setTimeout(2000, () => req.destroy(new Error('broadcast timed out')));
    req.on('error', reject);
    req.end(data);
  });
}

/** Broadcasts seq 1..MESSAGES on stream `all` through the HTTP ingress, ~100 per second. */
async function broadcastAll(server) {
  for (let seq = 1; seq <= MESSAGES; seq++) {
    const status = await post(`${server.httpUrl}/_broadcast`, { stream: 'all', data: JSON.stringify({ seq }) });
    assert.equal(status, 201, `broadcast ${seq} accepted`);
    await sleep(10);
  }
}

/** Destroys the TCP connection under `socketOf()` every KILL_EVERY_MS until `done()`. */
async function cutRepeatedly(socketOf, done) {
  let cuts = 0;
  while (!done()) {
    await sleep(KILL_EVERY_MS);
    const ws = socketOf();
    if (!done() && ws && ws._socket) {
      ws._socket.destroy(); // no close frame: the network just goes away
      cuts++;
    }
  }
  return cuts;
}

async function startServer(scope, env = {}) {
  return scope.startServer({ env: { FERROCABLE_BROADCAST_KEY: KEY, ...env } });
}


test('@anycable/core over a flaky network: 1,000 broadcasts arrive complete, in order, once', { timeout: 90000 }, async (t) => {
  const scope = new Scope();
  scopes.add(scope);
  const server = await startServer(scope);

  const sockets = [];
  // Records every socket (to cut it) and sends the page's Origin, as a browser would.
  class TrackedWebSocket extends WebSocket {
    constructor(url, protocols, options = {}) {
      super(url, protocols, { ...options, headers: { Origin: server.sameOrigin } });
      sockets.push(this);
    }
  }
  const cable = createCable(server.cableUrl, {
    protocol: 'actioncable-v1-ext-json',
    websocketImplementation: TrackedWebSocket,
    protocolOptions: { pongs: true },
    reconnectStrategy: () => 100,
    performFailures: 'warn',
  });
  try {
    const received = [];
    const channel = cable.subscribeTo('BenchmarkChannel');
    channel.on('message', (msg) => { if (msg && msg.seq) received.push(msg.seq); });
    await channel.ensureSubscribed();

    let sending = true;
    const cuts = cutRepeatedly(() => sockets[sockets.length - 1], () => !sending);
    await broadcastAll(server);
    sending = false;
    const cutCount = await cuts;
    await waitUntil(() => received.length >= MESSAGES, 20000, `all ${MESSAGES} messages (have ${received.length})`);
    // The sentinel: one more message, after which nothing else may have arrived (a duplicate
    // would come before it, on the same stream).
    assert.equal(await post(`${server.httpUrl}/_broadcast`, { stream: 'all', data: JSON.stringify({ seq: MESSAGES + 1 }) }), 201);
    await waitUntil(() => received.includes(MESSAGES + 1), 10000, 'the sentinel');

    const restored = await server.metric('ferrocable_sessions_restored_total');
    t.diagnostic(`@anycable/core: ${received.length - 1} received of ${MESSAGES}, ${cutCount} connection cuts, ${sockets.length} sockets, ${restored} sessions restored`);
    assert.ok(cutCount >= 3, `the connection was cut (${cutCount} times)`);
    assert.ok(restored >= cutCount - 1, `sessions were restored (${restored})`);
    assert.equal(received.length, MESSAGES + 1, 'no duplicates');
    assert.deepEqual(received, Array.from({ length: MESSAGES + 1 }, (_, i) => i + 1), 'all, in order, then the sentinel');
  } finally {
    cable.disconnect();
  }
});

test('@rails/actioncable over the same flaky network: what at-most-once delivery loses', { timeout: 90000 }, async (t) => {
  const scope = new Scope();
  scopes.add(scope);
  const server = await startServer(scope);
  const consumer = scope.consumer(server.cableUrl);
  const received = [];
  let confirmed;
  const ready = new Promise((resolve) => { confirmed = resolve; });
  consumer.subscriptions.create({ channel: 'BenchmarkChannel' }, {
    connected: () => confirmed(),
    received: (msg) => { if (msg && msg.seq) received.push(msg.seq); },
  });
  await ready;

  let sending = true;
  const cuts = cutRepeatedly(() => consumer.connection.webSocket, () => !sending);
  await broadcastAll(server);
  sending = false;
  const cutCount = await cuts;
  // The sentinel: once the client is back, a fresh message reaches it; what came before it is
  // all it will ever get of the run (nothing is replayed to a plain client).
  let attempt = 0;
  await waitUntil(async () => {
    attempt++;
    await post(`${server.httpUrl}/_broadcast`, { stream: 'all', data: JSON.stringify({ seq: MESSAGES + attempt }) });
    await sleep(100);
    return received.some((s) => s > MESSAGES);
  }, 30000, 'a message after the cuts (the client reconnected)');
  const run = received.filter((s) => s <= MESSAGES);

  const unique = new Set(run).size;
  const inOrder = run.every((v, i) => i === 0 || v > run[i - 1]);
  t.diagnostic(`@rails/actioncable: ${unique} of ${MESSAGES} received (${MESSAGES - unique} lost), ${run.length - unique} duplicates, in order: ${inOrder}, ${cutCount} connection cuts`);
  assert.ok(cutCount >= 3, `the connection was cut (${cutCount} times)`);
  assert.ok(unique > 0, 'messages were delivered between the cuts');
  // Nothing is replayed to a plain client: it only ever sees each message at most once.
  assert.equal(run.length, unique, 'at most once');
});

test('two ferrocable processes on Redis pub/sub + Redis Streams: a client of a stopped node restores on the other with every message', { timeout: 60000 }, async (t) => {
  const scope = new Scope();
  scopes.add(scope);
  const tag = randomUUID();
  const redis = process.env.REDIS_URL || 'redis://127.0.0.1:6379/0';
  const shared = {
    FERROCABLE_PUBSUB: redis,
    FERROCABLE_PUBSUB_PREFIX: `fc-js:${tag}:stream:`,
    FERROCABLE_BROKER: redis,
    FERROCABLE_BROKER_PREFIX: `fc-js:${tag}:broker:`,
  };
  const a = await startServer(scope, shared);
  const b = await startServer(scope, shared);
  const proxy = await startProxy(a.port);
  const origin = `http://127.0.0.1:${proxy.port}`;
  class OriginWebSocket extends WebSocket {
    constructor(url, protocols, options = {}) {
      super(url, protocols, { ...options, headers: { Origin: origin } });
    }
  }
  const cable = createCable(`ws://127.0.0.1:${proxy.port}/cable`, {
    protocol: 'actioncable-v1-ext-json',
    websocketImplementation: OriginWebSocket,
    reconnectStrategy: () => 100,
    performFailures: 'warn',
  });
  try {
    const received = [];
    const channel = cable.subscribeTo('BenchmarkChannel');
    channel.on('message', (msg) => { if (msg && msg.seq) received.push(msg.seq); });
    await channel.ensureSubscribed();

    // Through node B to a client of node A (Redis pub/sub; the bus subscription is
    // asynchronous, so the first message is retried until it crosses).
    await waitUntil(async () => {
      await post(`${b.httpUrl}/_broadcast`, { stream: 'all', data: JSON.stringify({ seq: 1 }) });
      await sleep(100);
      return received.includes(1);
    }, 10000, 'a broadcast through node B to reach the client of node A');
    received.length = 0;
    received.push(1);

    // Node A stops; the balancer sends the reconnect to node B; messages keep coming.
    proxy.retarget(b.port);
    const stopped = a.stop();
    for (let seq = 2; seq <= 50; seq++) {
      assert.equal(await post(`${b.httpUrl}/_broadcast`, { stream: 'all', data: JSON.stringify({ seq }) }), 201);
      await sleep(10);
    }
    assert.equal(await stopped, 0, 'node A exits cleanly');
    await waitUntil(() => received.length >= 50, 20000, `all 50 messages (have ${received.length})`);
    // The sentinel: a duplicate would arrive before it.
    assert.equal(await post(`${b.httpUrl}/_broadcast`, { stream: 'all', data: JSON.stringify({ seq: 51 }) }), 201);
    await waitUntil(() => received.includes(51), 10000, 'the sentinel');
    const restored = await b.metric('ferrocable_sessions_restored_total');
    t.diagnostic(`restored on node B: ${restored}; received ${received.length - 1}`);
    assert.ok(restored >= 1, 'the session was restored on node B, not started fresh');
    assert.deepEqual(received, Array.from({ length: 51 }, (_, i) => i + 1), 'every message, in order, once, then the sentinel');
  } finally {
    cable.disconnect();
    await proxy.close();
  }
});
