// AnyCable's real-time surface through the real `@anycable/core` client: `cable.streamFrom`
// (public `$pubsub` streams), `cable.streamFromSigned` (names signed as Rails' MessageVerifier
// signs them, with ANYCABLE_STREAMS_SECRET), `channel.whisper` on one node and across two
// nodes sharing a Redis or NATS bus, and JWT identification with the client's `auth` option
// (every strategy, and `tokenRefresher` after `token_expired`). Every "nothing else arrived"
// check ends on a sentinel broadcast.

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { createHmac, randomUUID } from 'node:crypto';
import { createCable } from '@anycable/core';

const require = createRequire(import.meta.url);
const { Scope, WebSocket, waitUntil } = require('./harness.js');
const http = require('node:http');

const KEY = 'streams-test-broadcast-key';
const STREAMS_SECRET = 'streams-test-secret';

const scopes = new Set();
const cables = new Set();
afterEach(async () => {
  for (const c of [...cables]) { cables.delete(c); c.disconnect(); }
  for (const s of [...scopes]) { scopes.delete(s); await s.dispose(); }
});

/** Rails' MessageVerifier (SHA256, JSON) over a stream name, as AnyCable's signed streams want. */
function sign(name, secret = STREAMS_SECRET) {
  const data = Buffer.from(JSON.stringify(name)).toString('base64');
  return `${data}--${createHmac('sha256', secret).update(data).digest('hex')}`;
}

function post(server, body) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = http.request(`${server.httpUrl}/_broadcast`, {
      method: 'POST',
      agent: false,
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${KEY}`, 'Content-Length': Buffer.byteLength(data), Connection: 'close' },
    }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode)); });
    req.setTimeout(2000, () => req.destroy(new Error('broadcast timed out')));
    req.on('error', reject);
    req.end(data);
  });
}

function cableFor(server, options = {}) {
  class PageWebSocket extends WebSocket {
    constructor(url, protocols, opts = {}) {
      super(url, protocols, { ...opts, headers: { ...(opts.headers || {}), Origin: server.sameOrigin } });
    }
  }
  const cable = createCable(server.cableUrl, {
    protocol: 'actioncable-v1-ext-json',
    websocketImplementation: PageWebSocket,
    logLevel: 'error',
    ...options,
  });
  cables.add(cable);
  return cable;
}

/** Records every message a channel gets. */
function record(channel) {
  const got = [];
  channel.on('message', (m) => got.push(m));
  return got;
}

/** Broadcasts a sentinel to `stream` and waits for every recorder to have it. */
async function sentinel(server, stream, recorders) {
  const id = randomUUID();
  assert.equal(await post(server, { stream, data: JSON.stringify({ sentinel: id }) }), 201);
  for (const got of recorders) {
    await waitUntil(() => got.some((m) => m && m.sentinel === id), 5000, `sentinel on ${stream}`);
  }
}

async function startNodes(scope, count, env, args = []) {
  const nodes = [];
  for (let i = 0; i < count; i++) {
    nodes.push(await scope.startServer({
      args: ['--session-store', 'memory', ...args],
      env: { FERROCABLE_BROADCAST_KEY: KEY, ANYCABLE_STREAMS_SECRET: STREAMS_SECRET, ...env },
    }));
  }
  return nodes;
}

test('@anycable/core streamFromSigned: a signed stream delivers, a forged one is rejected', { timeout: 30000 }, async () => {
  const scope = new Scope(); scopes.add(scope);
  const [server] = await startNodes(scope, 1, {});
  const cable = cableFor(server);
  const channel = cable.streamFromSigned(sign('chat:1'));
  const got = record(channel);
  await channel.ensureSubscribed();
  assert.equal(await post(server, { stream: 'chat:1', data: JSON.stringify({ text: 'hello' }) }), 201);
  await waitUntil(() => got.some((m) => m.text === 'hello'), 5000, 'the broadcast');

  const forged = cable.streamFromSigned(sign('chat:1', 'another app'));
  await assert.rejects(forged.ensureSubscribed(), 'a name signed with another secret is rejected');
  const unsigned = cable.streamFrom('chat:1');
  await assert.rejects(unsigned.ensureSubscribed(), 'public streams are off by default');
});

test('@anycable/core whisper on a public stream: everyone else gets it, the sender does not', { timeout: 30000 }, async () => {
  const scope = new Scope(); scopes.add(scope);
  const [server] = await startNodes(scope, 1, { ANYCABLE_PUBLIC_STREAMS: 'true' });
  const [alice, bob, carol] = [cableFor(server), cableFor(server), cableFor(server)];
  const channels = [alice, bob, carol].map((c) => c.streamFrom('lobby'));
  const [fromAlice, atBob, atCarol] = channels.map(record);
  await Promise.all(channels.map((c) => c.ensureSubscribed()));

  await channels[0].whisper({ typing: 'alice' });
  await waitUntil(() => atBob.some((m) => m.typing === 'alice') && atCarol.some((m) => m.typing === 'alice'), 5000, 'the whisper at Bob and Carol');
  await sentinel(server, 'lobby', [fromAlice, atBob, atCarol]);
  assert.deepEqual(fromAlice.filter((m) => m.typing), [], 'the sender never gets its own whisper');
  assert.equal(atBob.filter((m) => m.typing).length, 1, 'delivered once');
  assert.equal(await server.metric('ferrocable_whispers_total'), 1);
});

for (const bus of ['redis', 'nats']) {
  test(`whisper and signed streams across two nodes on ${bus}`, { timeout: 30000 }, async () => {
    const scope = new Scope(); scopes.add(scope);
    const url = bus === 'redis' ? 'redis://127.0.0.1:6379/0' : 'nats://127.0.0.1:4222';
    const [a, b] = await startNodes(scope, 2, {
      ANYCABLE_STREAMS_WHISPER: 'true',
      FERROCABLE_PUBSUB_PREFIX: `streams-test-${randomUUID()}:`,
    }, ['--pubsub', url]);
    const signed = sign(`room:${randomUUID()}`);
    const onA = cableFor(a).streamFromSigned(signed);
    const onB = cableFor(b).streamFromSigned(signed);
    const [gotA, gotB] = [record(onA), record(onB)];
    await Promise.all([onA.ensureSubscribed(), onB.ensureSubscribed()]);
    const stream = JSON.parse(Buffer.from(signed.split('--')[0], 'base64').toString());

    // The bus subscription of a new stream is asynchronous: a broadcast from node A reaches
    // node B once B listens. Wait for that with sentinels before whispering.
    await waitUntil(async () => { await sentinel(a, stream, [gotA]); return gotB.some((m) => m.sentinel); }, 10000, `node B hears node A on ${bus}`);

    await onA.whisper({ cursor: [3, 4] });
    await waitUntil(() => gotB.some((m) => m.cursor), 5000, 'the whisper on the other node');
    await sentinel(a, stream, [gotA, gotB]);
    assert.deepEqual(gotA.filter((m) => m.cursor), [], 'not echoed to the sender');
    assert.deepEqual(gotB.filter((m) => m.cursor), [{ cursor: [3, 4] }]);
  });
}

/** An HS256 token as anycable-rb's AnyCable::JWT.encode writes it. */
function jwt(identifiers, secret, ttlSeconds) {
  const b64 = (s) => Buffer.from(s).toString('base64url');
  const head = b64(JSON.stringify({ alg: 'HS256' }));
  const body = b64(JSON.stringify({ ext: JSON.stringify(identifiers), exp: Math.floor(Date.now() / 1000) + ttlSeconds }));
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

test('@anycable/core auth option: a token identifies the connection with every strategy; none, bad or expired is refused', { timeout: 30000 }, async () => {
  const scope = new Scope(); scopes.add(scope);
  const [server] = await startNodes(scope, 1, { ANYCABLE_JWT_SECRET: 'jwt-secret', ANYCABLE_ENFORCE_JWT: 'true', ANYCABLE_PUBLIC_STREAMS: 'true' });
  for (const strategy of ['param', 'header', 'sub-protocol']) {
    const cable = cableFor(server, { auth: { token: jwt({ user_id: strategy }, 'jwt-secret', 60) }, websocketAuthStrategy: strategy });
    const channel = cable.streamFrom('lobby');
    await channel.ensureSubscribed();
    assert.equal(cable.state, 'connected', strategy);
  }
  assert.equal(await server.metric('ferrocable_jwt_total', { reason: 'accepted' }), 3);
  for (const [what, token] of [['no token', null], ['a forged token', jwt({ user_id: 'x' }, 'guess', 60)], ['alg none', `${Buffer.from('{"alg":"none"}').toString('base64url')}.${jwt({ user_id: 'x' }, 'jwt-secret', 60).split('.')[1]}.`]]) {
    const cable = cableFor(server, token ? { auth: { token }, reconnectStrategy: () => false } : { reconnectStrategy: () => false });
    // The server's `disconnect` (reconnect: false) closes the cable with its reason.
    const closed = new Promise((resolve) => cable.on('close', resolve));
    cable.connect().catch(() => {});
    const ev = await closed;
    assert.equal(ev && ev.reason, 'unauthorized', what);
  }
});

test('@anycable/core tokenRefresher: token_expired gets a fresh token and the client connects', { timeout: 30000 }, async () => {
  const scope = new Scope(); scopes.add(scope);
  const [server] = await startNodes(scope, 1, { ANYCABLE_JWT_SECRET: 'jwt-secret', ANYCABLE_PUBLIC_STREAMS: 'true' });
  let refreshed = 0;
  const cable = cableFor(server, {
    auth: { token: jwt({ user_id: 'ada' }, 'jwt-secret', -10) },
    tokenRefresher: async (transport) => { refreshed++; transport.setToken(jwt({ user_id: 'ada' }, 'jwt-secret', 60), 'jid'); },
  });
  const channel = cable.streamFrom('lobby');
  await channel.ensureSubscribed();
  assert.equal(refreshed, 1, 'refreshed once, after token_expired');
  assert.equal(await server.metric('ferrocable_jwt_total', { reason: 'expired' }), 1);
  assert.equal(await server.metric('ferrocable_jwt_total', { reason: 'accepted' }), 1);
});

for (const bus of ['redis', 'nats']) {
  test(`@anycable/core presence across two nodes on ${bus}: join, info, one record for two tabs, leave`, { timeout: 40000 }, async () => {
    const scope = new Scope(); scopes.add(scope);
    const url = bus === 'redis' ? 'redis://127.0.0.1:6379/0' : 'nats://127.0.0.1:4222';
    const [a, b] = await startNodes(scope, 2, {
      ANYCABLE_PUBLIC_STREAMS: 'true',
      FERROCABLE_PUBSUB_PREFIX: `presence-test-${randomUUID()}:`,
    }, ['--pubsub', url]);
    const room = `room-${randomUUID()}`;
    const adaTab1 = cableFor(a).streamFrom(room);
    const adaTab2 = cableFor(b).streamFrom(room);
    const bob = cableFor(b).streamFrom(room);
    const events = [];
    bob.on('presence', (ev) => events.push(ev));
    await Promise.all([adaTab1, adaTab2, bob].map((c) => c.ensureSubscribed()));

    // Ada joins on node A; Bob, on node B, sees the event and then the record.
    await adaTab1.presence.join('ada', { name: 'Ada' });
    await waitUntil(() => events.some((e) => e.type === 'join' && e.id === 'ada'), 10000, `Ada's join on node B over ${bus}`);
    assert.deepEqual(await bob.presence.info(), { ada: { name: 'Ada' } });
    // Her second tab, on node B: still one record, no second join.
    await adaTab2.presence.join('ada', { name: 'Ada' });
    await bob.presence.join('bob', { name: 'Bob' });
    await waitUntil(() => events.some((e) => e.type === 'join' && e.id === 'bob'), 5000, "Bob's own join");
    assert.deepEqual(await bob.presence.info(), { ada: { name: 'Ada' }, bob: { name: 'Bob' } });
    // The first tab leaves: she is still present through the second; then the second leaves.
    await adaTab1.presence.leave();
    await adaTab2.presence.leave();
    await waitUntil(() => events.some((e) => e.type === 'leave' && e.id === 'ada'), 10000, "Ada's leave");
    assert.equal(events.filter((e) => e.id === 'ada' && e.type === 'join').length, 1, 'one join for two tabs');
    assert.equal(events.filter((e) => e.id === 'ada' && e.type === 'leave').length, 1, 'one leave, after the last tab');
    assert.deepEqual(await bob.presence.info(), { bob: { name: 'Bob' } });
  });
}
