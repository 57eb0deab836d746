'use strict';
// End-to-end tests: the real `ferrocable` binary against the real `@rails/actioncable` client
// (and a raw `ws` client for frame-level checks). Run with `npm test` in this folder; the
// binary comes from $FERROCABLE_BIN or <repo>/target/debug/ferrocable.

const { test, describe, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');

const {
  PROTOCOL,
  Scope,
  subscribe,
  expectRefused,
  waitForMetric,
  waitUntil,
  sleep,
} = require('./harness');

const BENCH = { channel: 'BenchmarkChannel' };

// Every test runs in its own Scope; the scope is disposed in `finally` and, should a test
// time out before reaching it, again in afterEach (dispose is idempotent).
const scopes = new Set();
afterEach(async () => {
  for (const s of [...scopes]) {
    scopes.delete(s);
    await s.dispose();
  }
});

function cableTest(name, { timeout = 20000 } = {}, fn) {
  test(name, { timeout }, async (t) => {
    const scope = new Scope();
    scopes.add(scope);
    try {
      await fn(scope, t);
    } catch (e) {
      t.diagnostic('server stderr (tail):');
      for (const line of scope.serverLogs().split('\n')) if (line) t.diagnostic(line);
      throw e;
    } finally {
      scopes.delete(scope);
      await scope.dispose();
    }
  });
}

const isType = (type) => (f) => f.type === type;
const receivedWith = (pred) => (e) => e.type === 'received' && pred(e.message);

// 1 -------------------------------------------------------------------------------------------
cableTest('welcome: the Rails consumer connects and a raw client gets welcome first over actioncable-v1-json', {}, async (scope) => {
  const server = await scope.startServer();

  const consumer = scope.consumer(server.cableUrl);
  const { events } = subscribe(consumer, BENCH);
  const connected = await events.waitFor(isType('connected'), { what: 'connected callback' });
  assert.deepEqual(connected.data, { reconnected: false });
  assert.equal(consumer.connection.isOpen(), true);
  assert.equal(consumer.connection.getProtocol(), PROTOCOL);
  assert.equal(consumer.connection.isProtocolSupported(), true);

  const raw = await scope.raw(server.cableUrl, { origin: server.sameOrigin });
  assert.equal(raw.ws.protocol, PROTOCOL, 'negotiated subprotocol');
  await raw.waitFrame(() => true, { what: 'first frame' });
  assert.equal(raw.texts[0], '{"type":"welcome"}', 'first frame is the welcome');
  assert.deepEqual(raw.frames.items[0], { type: 'welcome' });
});

// 2 -------------------------------------------------------------------------------------------
cableTest('subscribe: confirm_subscription fires connected and metrics count the subscription', {}, async (scope) => {
  const server = await scope.startServer();
  assert.equal(await server.metric('ferrocable_subscriptions'), 0);

  const consumer = scope.consumer(server.cableUrl);
  const { subscription, events } = subscribe(consumer, BENCH);
  await events.waitFor(isType('connected'), { what: 'connected callback' });
  assert.equal(events.filter(isType('rejected')).length, 0);
  assert.equal(subscription.identifier, '{"channel":"BenchmarkChannel"}');

  await waitForMetric(server, 'ferrocable_subscriptions', undefined, 1);
  assert.equal(await server.metric('ferrocable_connections'), 1);

  // And the gauge goes back down when the subscription ends.
  subscription.unsubscribe();
  await waitForMetric(server, 'ferrocable_subscriptions', undefined, 0);
});

// 3 -------------------------------------------------------------------------------------------
cableTest('perform and receive: echo transmits the data back to the subscription', {}, async (scope) => {
  const server = await scope.startServer();
  const consumer = scope.consumer(server.cableUrl);
  const { subscription, events } = subscribe(consumer, BENCH);
  await events.waitFor(isType('connected'), { what: 'connected callback' });

  assert.equal(subscription.perform('echo', { n: 42 }), true, 'perform sent the command');
  const got = await events.waitFor(isType('received'), { what: 'echo reply' });
  assert.deepEqual(got.message, { action: 'echo', n: 42 });
});

// 4 -------------------------------------------------------------------------------------------
cableTest('broadcast to two clients: both subscribers receive it and the sender gets broadcastResult', {}, async (scope) => {
  const server = await scope.startServer();
  const a = subscribe(scope.consumer(server.cableUrl), BENCH);
  const b = subscribe(scope.consumer(server.cableUrl), BENCH);
  await a.events.waitFor(isType('connected'), { what: 'A connected' });
  await b.events.waitFor(isType('connected'), { what: 'B connected' });
  await waitForMetric(server, 'ferrocable_subscriptions', undefined, 2);

  const token = randomUUID();
  a.subscription.perform('broadcast', { token });

  const expected = { action: 'broadcast', token };
  const atA = await a.events.waitFor(receivedWith((m) => m.token === token && m.action === 'broadcast'), { what: 'broadcast at A' });
  const atB = await b.events.waitFor(receivedWith((m) => m.token === token && m.action === 'broadcast'), { what: 'broadcast at B' });
  assert.deepEqual(atA.message, expected);
  assert.deepEqual(atB.message, expected);
  const result = await a.events.waitFor(receivedWith((m) => m.action === 'broadcastResult'), { what: 'broadcastResult at A' });
  assert.deepEqual(result.message, { action: 'broadcastResult', token });

  // Only the sender gets the broadcastResult; each client gets the broadcast exactly once.
  await sleep(200);
  assert.equal(b.events.filter(receivedWith((m) => m.action === 'broadcastResult')).length, 0);
  assert.equal(a.events.filter(receivedWith((m) => m.action === 'broadcast')).length, 1);
  assert.equal(b.events.filter(receivedWith((m) => m.action === 'broadcast')).length, 1);
  assert.equal(await server.metric('ferrocable_broadcasts_total'), 1);
});

// 5 -------------------------------------------------------------------------------------------
cableTest('reject: a subscription to an unknown channel fires rejected', {}, async (scope) => {
  const server = await scope.startServer();
  const consumer = scope.consumer(server.cableUrl);
  const { subscription, events } = subscribe(consumer, { channel: 'NoSuchChannel' });
  await events.waitFor(isType('rejected'), { what: 'rejected callback' });
  assert.equal(events.filter(isType('connected')).length, 0, 'never connected');
  assert.equal(consumer.subscriptions.findAll(subscription.identifier).length, 0, 'client forgot it');
  assert.equal(await server.metric('ferrocable_subscriptions'), 0);
  assert.equal(await server.metric('ferrocable_rejected_subscriptions_total'), 1);

  // The wire frame is exactly the ActionCable rejection.
  const raw = await scope.raw(server.cableUrl, { origin: server.sameOrigin });
  const identifier = raw.subscribeCommand({ channel: 'NoSuchChannel' });
  const frame = await raw.waitFrame(isType('reject_subscription'), { what: 'reject_subscription' });
  assert.deepEqual(frame, { identifier, type: 'reject_subscription' });
});

// 6 -------------------------------------------------------------------------------------------
describe('origin check', () => {
  cableTest('a foreign Origin is refused with 403 and counted', {}, async (scope) => {
    const server = await scope.startServer();
    const refused = await expectRefused(server.cableUrl, { origin: 'http://evil.example' });
    assert.equal(refused.status, 403);
    assert.equal(refused.body.trim(), 'Request origin not allowed: http://evil.example');
    assert.equal(await server.metric('ferrocable_refused_upgrades_total', { reason: 'origin' }), 1);
    assert.equal(await server.metric('ferrocable_connections'), 0);

    // A request without any Origin is refused too (forgery protection is on).
    const none = await expectRefused(server.cableUrl, {});
    assert.equal(none.status, 403);
    assert.equal(await server.metric('ferrocable_refused_upgrades_total', { reason: 'origin' }), 2);

    // A Rails consumer with the foreign Origin never gets connected.
    const consumer = scope.consumer(server.cableUrl, { origin: 'http://evil.example' });
    const { events } = subscribe(consumer, BENCH);
    await waitUntil(async () => (await server.metric('ferrocable_refused_upgrades_total', { reason: 'origin' })) === 3,
      5000, 'the consumer upgrade to be refused');
    await sleep(300);
    assert.equal(events.filter(isType('connected')).length, 0);
    assert.equal(consumer.connection.isOpen(), false);
  });

  cableTest('--allowed-origin lets that Origin connect', {}, async (scope) => {
    const server = await scope.startServer({ args: ['--allowed-origin', 'http://app.example'] });
    const consumer = scope.consumer(server.cableUrl, { origin: 'http://app.example' });
    const { events } = subscribe(consumer, BENCH);
    await events.waitFor(isType('connected'), { what: 'connected callback with the allowed origin' });

    const raw = await scope.raw(server.cableUrl, { origin: 'http://app.example' });
    await raw.waitFrame(isType('welcome'), { what: 'welcome' });

    // The allow-list does not open the door to others.
    const refused = await expectRefused(server.cableUrl, { origin: 'http://evil.example' });
    assert.equal(refused.status, 403);
    assert.equal(await server.metric('ferrocable_refused_upgrades_total', { reason: 'origin' }), 1);
  });

  cableTest('the same origin as the Host connects without any flag', {}, async (scope) => {
    const server = await scope.startServer();
    const raw = await scope.raw(server.cableUrl, { origin: `http://127.0.0.1:${server.port}` });
    await raw.waitFrame(isType('welcome'), { what: 'welcome' });

    const consumer = scope.consumer(server.cableUrl, { origin: `http://127.0.0.1:${server.port}` });
    const { events } = subscribe(consumer, BENCH);
    await events.waitFor(isType('connected'), { what: 'connected callback' });
    assert.equal(await server.metric('ferrocable_refused_upgrades_total', { reason: 'origin' }), null);
  });
});

// 7 -------------------------------------------------------------------------------------------
cableTest('shutdown: SIGTERM sends disconnect server_restart, closes with 1001 and exits 0', {}, async (scope) => {
  const server = await scope.startServer();
  const raw = await scope.raw(server.cableUrl, { origin: server.sameOrigin });
  await raw.waitFrame(isType('welcome'), { what: 'welcome' });
  raw.subscribeCommand(BENCH);
  await raw.waitFrame(isType('confirm_subscription'), { what: 'confirm_subscription' });

  const exitCode = server.stop();
  exitCode.catch(() => {}); // awaited below; keep an early rejection from counting as unhandled
  const closed = await Promise.race([raw.closed, sleep(12000).then(() => null)]);
  assert.ok(closed, `socket closed after SIGTERM; frames: ${JSON.stringify(raw.frames.items)}`);
  const disconnect = raw.frames.find(isType('disconnect'));
  assert.deepEqual(disconnect, { type: 'disconnect', reason: 'server_restart', reconnect: true });
  const last = raw.frames.items[raw.frames.length - 1];
  assert.deepEqual(last, disconnect, 'disconnect is the last frame before the close');
  assert.equal(closed.code, 1001, `close code (frames: ${JSON.stringify(raw.frames.items)})`);
  assert.equal(await exitCode, 0, 'exit code');
});

// 8 -------------------------------------------------------------------------------------------
cableTest('reconnect: after a restart on the same port the consumer reconnects and resubscribes by itself', { timeout: 75000 }, async (scope) => {
  const server = await scope.startServer();
  const a = subscribe(scope.consumer(server.cableUrl), BENCH);
  await a.events.waitFor(isType('connected'), { what: 'first connected' });
  const firstConnected = a.events.length;

  assert.equal(await server.stop(), 0, 'exit code after SIGTERM');
  const disconnected = await a.events.waitFor(isType('disconnected'), { what: 'disconnected callback' });
  assert.deepEqual(disconnected.data, { willAttemptReconnect: true });

  await server.restart();
  const reconnected = await a.events.waitFor(isType('connected'),
    { from: firstConnected, timeout: 45000, what: 'connected again after the restart' });
  assert.deepEqual(reconnected.data, { reconnected: true });
  await waitForMetric(server, 'ferrocable_subscriptions', undefined, 1);

  // The resubscribed subscription is live on the new server: a broadcast from a fresh
  // consumer reaches it.
  const b = subscribe(scope.consumer(server.cableUrl), BENCH);
  await b.events.waitFor(isType('connected'), { what: 'fresh consumer connected' });
  const token = randomUUID();
  b.subscription.perform('broadcast', { token });
  const got = await a.events.waitFor(receivedWith((m) => m.token === token), { what: 'broadcast after restart' });
  assert.deepEqual(got.message, { action: 'broadcast', token });
});

// 9 -------------------------------------------------------------------------------------------
cableTest('bad input: error frames for the sender, the connection stays open, others are unaffected', {}, async (scope) => {
  const server = await scope.startServer();
  const good = subscribe(scope.consumer(server.cableUrl), BENCH);
  await good.events.waitFor(isType('connected'), { what: 'good consumer connected' });

  const bad = await scope.raw(server.cableUrl, { origin: server.sameOrigin });
  await bad.waitFrame(isType('welcome'), { what: 'welcome' });

  const cases = [
    ['garbage', 'malformed_json'],
    ['{"command":"dance","identifier":"{}"}', 'unknown_command'],
    [JSON.stringify({ command: 'message', identifier: JSON.stringify({ channel: 'BenchmarkChannel', never: 'subscribed' }), data: JSON.stringify({ action: 'echo' }) }), 'unknown_subscription'],
  ];
  for (const [frame, reason] of cases) {
    const from = bad.frames.length;
    bad.send(frame);
    const err = await bad.waitFrame(isType('error'), { from, what: `error frame for ${frame}` });
    assert.equal(err.reason, reason, `reason for ${frame}`);
    assert.equal(typeof err.message, 'string');
    assert.ok(err.message.length > 0);
    assert.equal(bad.isOpen, true, `still open after ${frame}`);
  }
  assert.equal(bad.frames.filter(isType('disconnect')).length, 0);

  // The bad client still works: it can subscribe and use the channel.
  const identifier = bad.subscribeCommand(BENCH);
  await bad.waitFrame(isType('confirm_subscription'), { what: 'confirm after bad frames' });
  bad.perform(identifier, 'echo', { ok: true });
  const echo = await bad.waitFrame((f) => f.identifier === identifier && f.message && f.message.action === 'echo', { what: 'echo' });
  assert.deepEqual(echo.message, { action: 'echo', ok: true });

  // Another client's broadcast round trip still works, and reaches the bad client too.
  const token = randomUUID();
  good.subscription.perform('broadcast', { token });
  await good.events.waitFor(receivedWith((m) => m.action === 'broadcast' && m.token === token), { what: 'broadcast at good' });
  await good.events.waitFor(receivedWith((m) => m.action === 'broadcastResult' && m.token === token), { what: 'broadcastResult at good' });
  await bad.waitFrame((f) => f.message && f.message.token === token, { what: 'broadcast at the bad client' });

  for (const [, reason] of cases) {
    assert.equal(await server.metric('ferrocable_bad_frames_total', { reason }), 1, `bad_frames{reason="${reason}"}`);
  }
  assert.equal(await server.metric('ferrocable_connections'), 2);
});

// 10 ------------------------------------------------------------------------------------------
cableTest('heartbeat: a ping with numeric unix seconds arrives within 4 s', {}, async (scope) => {
  const server = await scope.startServer();
  const raw = await scope.raw(server.cableUrl, { origin: server.sameOrigin });
  const started = Date.now();
  const ping = await raw.waitFrame(isType('ping'), { timeout: 4000, what: 'ping' });
  assert.ok(Date.now() - started <= 4000);
  assert.equal(typeof ping.message, 'number');
  assert.ok(Number.isInteger(ping.message), `integer seconds: ${ping.message}`);
  const now = Date.now() / 1000;
  assert.ok(Math.abs(ping.message - now) < 5, `ping time ${ping.message} is close to now ${now}`);
  assert.deepEqual(Object.keys(ping).sort(), ['message', 'type']);
});
