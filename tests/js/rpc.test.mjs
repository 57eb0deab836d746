// ferrocable in front of a Rails app over AnyCable HTTP RPC, configured with anycable-go's own
// environment variables, driven by the real `@rails/actioncable` and `@anycable/core` clients.
// The Rails side is the fake app of the Rust tests run as a process
// (`target/debug/examples/fake_rails`, written from the wire document: no Rails app runs here).

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { createCable } from '@anycable/core';

const require = createRequire(import.meta.url);
const { Scope, WebSocket, freePort, httpGet, subscribe, waitUntil, withTimeout } = require('./harness.js');

const FAKE_APP = process.env.FAKE_RAILS_BIN
  || path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../target/debug/examples/fake_rails');
const RPC_SECRET = 'fake-rails-rpc-secret';
const BROADCAST_KEY = 'rpc-test-broadcast-key';

const cleanups = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Starts the fake app; resolves its base URL once it listens. */
/** Starts the fake app; resolves its HTTP base URL and its gRPC address once it listens. */
async function startFakeApp(ferrocablePort) {
  const child = spawn(FAKE_APP, ['0', `http://127.0.0.1:${ferrocablePort}/_broadcast`, BROADCAST_KEY], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, FAKE_RAILS_REDIS: '127.0.0.1:6379' },
  });
  cleanups.push(async () => { child.kill('SIGKILL'); });
  const [grpc, addr] = await withTimeout(new Promise((resolve, reject) => {
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d) => {
      out += d;
      const g = out.match(/grpc on (\S+)/);
      const m = out.match(/listening on (\S+)/);
      if (g && m) resolve([g[1], m[1]]);
    });
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`fake app exited with ${code}`)));
  }), 10000, 'the fake app to listen');
  return { appUrl: `http://${addr}`, grpc };
}

async function calls(appUrl) {
  const r = await httpGet(`${appUrl}/_calls`);
  return JSON.parse(r.body);
}

/**
 * The fake app, then ferrocable pointed at it with anycable-go's settings, over HTTP RPC or
 * gRPC, with the Redis and NATS broadcast adapters on.
 */
async function setup(transport) {
  const scope = new Scope();
  cleanups.push(() => scope.dispose());
  const port = await freePort();
  const { appUrl, grpc } = await startFakeApp(port);
  const server = await scope.startServer({
    port,
    bench: false,
    env: {
      ANYCABLE_RPC_HOST: transport === 'grpc' ? grpc : `${appUrl}/_anycable`,
      ANYCABLE_HTTP_RPC_SECRET: RPC_SECRET,
      ANYCABLE_BROADCAST_KEY: BROADCAST_KEY,
      ANYCABLE_BROADCAST_ADAPTER: 'http,redis,nats',
      ANYCABLE_REDIS_URL: 'redis://127.0.0.1:6379',
      ANYCABLE_NATS_SERVERS: 'nats://127.0.0.1:4222',
    },
  });
  return { scope, server, appUrl };
}

for (const transport of ['http', 'grpc']) {

test(`${transport}: @rails/actioncable: connect, subscribe, perform, app broadcasts (HTTP, Redis, NATS) and rejections go through the app`, async () => {
  const { scope, server, appUrl } = await setup(transport);
  const consumer = scope.consumer(`${server.cableUrl}?user=alice`);
  const room = `js-${transport}-${process.pid}`;
  const { subscription, events } = subscribe(consumer, { channel: 'ChatChannel', room });
  await events.waitFor((e) => e.type === 'connected', { what: 'confirmed subscription' });

  subscription.perform('speak', { text: 'hello' });
  const spoken = await events.waitFor((e) => e.type === 'received' && e.message.text === 'hello');
  assert.deepEqual(spoken.message, { text: 'hello', user: 'alice', room, count: 0 });
  subscription.perform('speak', { text: 'again' });
  const again = await events.waitFor((e) => e.type === 'received' && e.message.text === 'again');
  assert.equal(again.message.count, 1, 'connection state kept between commands');

  // The app broadcasts through POST /_broadcast, as anycable-rails' HTTP adapter does.
  const other = scope.consumer(`${server.cableUrl}?user=bob`);
  const bob = subscribe(other, { channel: 'ChatChannel', room });
  await bob.events.waitFor((e) => e.type === 'connected');
  subscription.perform('broadcast', { text: 'to all' });
  const got = await bob.events.waitFor((e) => e.type === 'received' && e.message.text === 'to all');
  assert.deepEqual(got.message, { text: 'to all', from: 'alice' });
  // The same through anycable-rails' Redis and NATS adapters (the ingresses subscribe
  // asynchronously after start: publish until one arrives).
  for (const [action, via] of [['publish_redis', 'redis'], ['publish_nats', 'nats']]) {
    await waitUntil(() => {
      subscription.perform(action, { text: via });
      return bob.events.items.some((e) => e.type === 'received' && e.message.via === via);
    }, 10000, `a broadcast over ${via}`, 300);
  }

  // stop_streams: after the app's reply, a broadcast to the room no longer reaches alice;
  // a broadcast on her second room afterwards is the sentinel that it would have by now.
  const room2 = `${room}-2`;
  const second = subscribe(consumer, { channel: 'ChatChannel', room: room2 });
  await second.events.waitFor((e) => e.type === 'connected');
  subscription.perform('stop', {});
  await waitUntil(async () => (await calls(appUrl)).some((c) => c.body.data === JSON.stringify({ action: 'stop' })), 5000, 'the stop command');
  second.subscription.perform('speak', { text: 'ordered' });
  await second.events.waitFor((e) => e.type === 'received' && e.message.text === 'ordered');
  bob.subscription.perform('broadcast', { text: 'after stop' });
  await bob.events.waitFor((e) => e.type === 'received' && e.message.text === 'after stop');
  second.subscription.perform('broadcast', { text: 'sentinel' });
  await second.events.waitFor((e) => e.type === 'received' && e.message.text === 'sentinel');
  assert.equal(events.items.filter((e) => e.type === 'received' && e.message.text === 'after stop').length, 0,
    'the stopped room delivered nothing');

  // An app build that sends statuses as integers works the same.
  const ints = scope.consumer(`${server.cableUrl}?user=int`);
  const int = subscribe(ints, { channel: 'ChatChannel', room });
  await int.events.waitFor((e) => e.type === 'connected');
  int.subscription.perform('speak', { text: 'int' });
  const intReply = await int.events.waitFor((e) => e.type === 'received' && e.message.text === 'int');
  assert.equal(intReply.message.user, 'int');

  const secret = subscribe(consumer, { channel: 'ChatChannel', room: 'secret' });
  await secret.events.waitFor((e) => e.type === 'rejected', { what: 'rejected subscription' });

  // In front of a Rails app, ferrocable serves no pages of its own: the app has them.
  assert.equal((await httpGet(`${server.httpUrl}/`)).status, 404);
  assert.equal((await httpGet(`${server.httpUrl}/health`)).status, 200);

  const sub = (await calls(appUrl)).find((c) => c.path === 'command' && c.body.command === 'subscribe');
  assert.equal(sub.protov, 'v1');
  assert.match(sub.body.env.url, new RegExp(`^http://127\\.0\\.0\\.1:${server.port}/cable\\?`));
  assert.equal(sub.body.env.headers.REMOTE_ADDR, '127.0.0.1');
});

test(`${transport}: @rails/actioncable: a connection the app rejects is told unauthorized and does not reconnect`, async () => {
  const { scope, server } = await setup(transport);
  const consumer = scope.consumer(server.cableUrl);
  const { events } = subscribe(consumer, { channel: 'ChatChannel', room: '1' });
  consumer.connect();
  await waitUntil(() => consumer.connection.isActive() === false && consumer.connection.monitor.isRunning() === false, 5000, 'the consumer to give up');
  assert.equal(events.items.filter((e) => e.type === 'connected').length, 0);
});

test(`${transport}: @anycable/core (extended protocol): session id, perform round trip, disconnect call at SIGTERM`, async () => {
  const { server, appUrl } = await setup(transport);
  class PageSocket extends WebSocket {
    constructor(url, protocols, options = {}) {
      super(url, protocols, { ...options, headers: { Origin: server.sameOrigin } });
    }
  }
  const cable = createCable(`${server.cableUrl}?user=carol`, {
    protocol: 'actioncable-v1-ext-json',
    websocketImplementation: PageSocket,
    reconnectStrategy: () => 100,
  });
  const channel = cable.subscribeTo('ChatChannel', { room: '7' });
  const received = [];
  channel.on('message', (m) => received.push(m));
  await channel.ensureSubscribed();
  assert.ok(cable.sessionId, 'the welcome carried a sid for the extended protocol');
  await channel.perform('speak', { text: 'ext' });
  await waitUntil(() => received.some((m) => m.text === 'ext'), 5000, 'the transmission');
  assert.deepEqual(received.find((m) => m.text === 'ext'), { text: 'ext', user: 'carol', room: '7', count: 0 });
  const connect = (await calls(appUrl)).find((c) => c.path === 'connect');
  assert.equal(connect.sid, cable.sessionId, 'the app saw the same session id');

  // SIGTERM: ferrocable closes the socket and makes the disconnect call before it exits.
  assert.equal(await server.stop(), 0);
  const disconnects = (await calls(appUrl)).filter((c) => c.path === 'disconnect');
  assert.equal(disconnects.length, 1, JSON.stringify(disconnects));
  assert.deepEqual(disconnects[0].body.subscriptions, [JSON.stringify({ channel: 'ChatChannel', room: '7' })]);
  assert.equal(disconnects[0].body.env.cstate.count, '1');
  cable.disconnect();
});

}
