// The examples of the ferrocable crate (`cargo run --example NAME`), each started as built and
// driven in headless Chromium or with the real @rails/actioncable client.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { launch, withServer, connected, openPage } = require('./browser');

const EXAMPLES = process.env.FERROCABLE_EXAMPLES || path.resolve(__dirname, '../../target/debug/examples');
const example = (name) => ({ bin: path.join(EXAMPLES, name) });
let browser;

before(async () => { browser = await launch(); });
after(async () => { if (browser) await browser.close(); });

test('counter example: a click increments through a reflex and a page morph', async () => {
  await withServer(example('counter'), async (server) => {
    const { context, page } = await openPage(browser, `${server.url}/`);
    await connected(page);
    assert.equal((await page.textContent('#count')).trim(), '0');
    await page.click('#increment');
    await page.waitForFunction(() => document.querySelector('#count').textContent.trim() === '1');
    await page.click('#increment');
    await page.waitForFunction(() => document.querySelector('#count').textContent.trim() === '2');
    await page.reload();
    assert.equal((await page.textContent('#count')).trim(), '2', 'kept in the session');
    assert.deepEqual(page.errors, []);
    await context.close();
  });
});

test('chat example: a background task and a reflex in one browser reach every browser', async () => {
  const opts = { ...example('chat'), env: { FERROCABLE_APP_TICK_SECS: '1' } };
  await withServer(opts, async (server) => {
    const a = await openPage(browser, `${server.url}/`);
    const b = await openPage(browser, `${server.url}/`);
    await connected(a.page);
    await connected(b.page);
    // The clock posts from outside any request, through the signed stream.
    await a.page.waitForFunction(() => /clock: tick \d+/.test(document.querySelector('#messages').textContent), null, { timeout: 10000 });
    await b.page.fill('#name', 'ada');
    await b.page.fill('#text', 'hello <b>everyone</b>');
    await b.page.click('#send');
    await a.page.waitForFunction(() => document.querySelector('#messages').textContent.includes('ada: hello <b>everyone</b>'));
    assert.equal(await a.page.locator('#messages b:text("everyone")').count(), 0, 'user text is escaped');
    assert.deepEqual([...a.page.errors, ...b.page.errors], []);
    await a.context.close();
    await b.context.close();
  });
});

test('token channel example: users speak in a room as who their token says; a bad token is refused', async () => {
  await withServer(example('token_channel'), async (server) => {
    const alice = await openPage(browser, `${server.url}/?token=alice-token&room=lobby`);
    const bob = await openPage(browser, `${server.url}/?token=bob-token&room=lobby`);
    const other = await openPage(browser, `${server.url}/?token=bob-token&room=elsewhere`);
    for (const p of [alice, bob, other]) {
      await p.page.waitForFunction(() => document.querySelector('#status').textContent === 'connected');
    }
    await alice.page.fill('#text', 'hi bob');
    await alice.page.click('#send');
    await bob.page.waitForFunction(() => document.querySelector('#messages').textContent === 'alice: hi bob');
    await bob.page.fill('#text', 'hi alice');
    await bob.page.click('#send');
    await alice.page.waitForFunction(() => document.querySelector('#messages').textContent.includes('bob: hi alice'));
    assert.equal(await other.page.textContent('#messages'), '', 'another room hears nothing');

    const intruder = await openPage(browser, `${server.url}/?token=stolen&room=lobby`);
    await intruder.page.waitForFunction(() => document.querySelector('#status').textContent === 'refused');
    assert.equal(await server.metric('ferrocable_disconnects_total{reason="unauthorized"}'), 1);
    for (const p of [alice, bob, other, intruder]) await p.context.close();
  });
});

test('dashboard example: the node\'s own figures and chart update through CableReady', async () => {
  await withServer(example('dashboard'), async (server) => {
    const { context, page } = await openPage(browser, `${server.url}/`);
    await connected(page);
    // This page's own connection and its two subscriptions (reflexes and the stream).
    await page.waitForFunction(() => Number(document.querySelector('#connections')?.textContent) >= 1);
    await page.waitForFunction(() => Number(document.querySelector('#subscriptions')?.textContent) >= 2);
    assert.equal((await page.textContent('#latency')).trim(), '–', 'no reflex ran yet');
    const before = await page.getAttribute('#line', 'points');
    for (let i = 0; i < 3; i++) await page.click('#ping');
    await page.waitForFunction(() => /^\d+\.\d\d ms$/.test(document.querySelector('#latency').textContent.trim()), null, { timeout: 5000 });
    await page.waitForFunction((b) => document.querySelector('#line').getAttribute('points') !== b, before);
    const count = await server.metric('ferrocable_reflex_duration_seconds_count');
    assert.ok(count >= 3, `reflexes observed: ${count}`);
    assert.deepEqual(page.errors, []);
    await context.close();
  });
});

test('turbo example: <turbo-cable-stream-source> with a signed name; a post reaches every browser as <turbo-stream> actions', async () => {
  await withServer(example('turbo'), async (server) => {
    const a = await openPage(browser, `${server.url}/`);
    const b = await openPage(browser, `${server.url}/`);
    for (const p of [a, b]) {
      // turbo-rails marks the element once Turbo::StreamsChannel confirmed the subscription.
      await p.page.waitForSelector('turbo-cable-stream-source[connected]', { state: 'attached', timeout: 15000 });
    }
    await a.page.fill('#text', 'hello <i>turbo</i>');
    await a.page.click('#send');
    for (const p of [a, b]) {
      await p.page.waitForFunction(() => document.querySelector('#messages').textContent.includes('hello <i>turbo</i>'));
      await p.page.waitForFunction(() => document.querySelector('#count').textContent === '1');
    }
    assert.equal(await b.page.locator('#messages i').count(), 0, 'user text is escaped');
    // The poster's form came back empty from the POST's own turbo-stream response.
    await a.page.waitForFunction(() => document.querySelector('#text').value === '');
    await b.page.fill('#text', 'second');
    await b.page.click('#send');
    await a.page.waitForFunction(() => document.querySelectorAll('#messages li').length === 2);
    // A page opened later subscribes to the same stream and sees what was kept.
    const c = await openPage(browser, `${server.url}/`);
    assert.equal(await c.page.locator('#messages li').count(), 2);
    assert.deepEqual([...a.page.errors, ...b.page.errors, ...c.page.errors], []);
    for (const p of [a, b, c]) await p.context.close();
  });
});

test('turbo example over SSE: <turbo-stream-source> on another origin reads /events (EventSource, CORS)', async () => {
  const { freePort } = require('./server');
  const port = await freePort();
  const opts = {
    ...example('turbo'),
    port,
    env: { FERROCABLE_SSE: 'true', FERROCABLE_APP_EVENTS_URL: `http://127.0.0.1:${port}`, ANYCABLE_ALLOWED_ORIGINS: `http://localhost:${port}` },
  };
  await withServer(opts, async (server) => {
    // The page comes from localhost, its events from 127.0.0.1: a cross-origin EventSource.
    const reader = await openPage(browser, `http://localhost:${port}/sse`);
    const writer = await openPage(browser, `${server.url}/`);
    await writer.page.waitForSelector('turbo-cable-stream-source[connected]', { state: 'attached', timeout: 15000 });
    const deadline = Date.now() + 15000;
    while ((await server.metric('ferrocable_sse_clients')) !== 1) {
      assert.ok(Date.now() < deadline, 'the EventSource never connected');
      await new Promise((r) => setTimeout(r, 50));
    }
    await writer.page.fill('#text', 'over server-sent events');
    await writer.page.click('#send');
    await reader.page.waitForFunction(() => document.querySelector('#messages').textContent.includes('over server-sent events'), null, { timeout: 10000 });
    await reader.page.waitForFunction(() => document.querySelector('#count').textContent === '1');
    assert.deepEqual([...reader.page.errors, ...writer.page.errors], []);
    await reader.context.close();
    await writer.context.close();
  });
});
