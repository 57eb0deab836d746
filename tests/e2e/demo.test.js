// The demo app in real headless Chromium (Debian's), against the running binary.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { Server, sleep } = require('./server');
const { launch, withServer: withServerOpts, connected, openPage } = require('./browser');
// The cuttable TCP proxy the protocol tests use too (Node built-ins only).
const { startProxy } = require('../js/proxy');

const ARTIFACTS = path.join(__dirname, 'artifacts');
fs.mkdirSync(ARTIFACTS, { recursive: true });
let browser;

before(async () => { browser = await launch(); });
after(async () => { if (browser) await browser.close(); });

const withServer = (fn) => withServerOpts({}, fn);

/** Waits until the server holds exactly `connections` connections with `subscriptions`
 * subscriptions between them (what the pages' clients have subscribed, and nothing left of
 * the pages they navigated away from). */
async function live(server, connections, subscriptions, timeout = 10000) {
  const deadline = Date.now() + timeout;
  let seen;
  for (;;) {
    seen = [await server.metric('ferrocable_connections'), await server.metric('ferrocable_subscriptions')];
    if (seen[0] === connections && seen[1] === subscriptions) return;
    if (Date.now() > deadline) throw new Error(`expected ${connections} connections / ${subscriptions} subscriptions, have ${seen}`);
    await sleep(50);
  }
}

async function text(page, selector) {
  return (await page.textContent(selector)).trim();
}

async function newPage(server) {
  const { context, page } = await openPage(browser, `${server.url}/`);
  await connected(page);
  return { context, page };
}

test('counter: page morph, survives a reload; reset: selector morph', async () => {
  await withServer(async (server) => {
    const { context, page } = await newPage(server);
    assert.equal(await text(page, '#counter'), '0');
    await page.click('#increment');
    await page.waitForFunction(() => document.querySelector('#counter').textContent.trim() === '1');
    await page.click('#increment');
    await page.waitForFunction(() => document.querySelector('#counter').textContent.trim() === '2');
    await page.reload();
    await connected(page);
    assert.equal(await text(page, '#counter'), '2', 'the count lives in the session');
    await page.screenshot({ path: path.join(ARTIFACTS, 'counter.png') });
    await page.click('#reset');
    await page.waitForFunction(() => document.querySelector('#counter').textContent.trim() === '0');
    await page.reload();
    assert.equal(await text(page, '#counter'), '0');
    assert.deepEqual(page.errors, []);
    await context.close();
  });
});

test('halted, forbidden and error reflexes fire their events and settle the promise', async () => {
  await withServer(async (server) => {
    const { context, page } = await newPage(server);
    const outcome = (id) => page.evaluate(async (id) => {
      const el = document.getElementById(id);
      const seen = [];
      for (const stage of ['halted', 'forbidden', 'error', 'success']) {
        document.addEventListener(`stimulus-reflex:${stage}`, () => seen.push(stage), { once: true });
      }
      const controller = window.ferrocable.application.getControllerForElementAndIdentifier(el, 'stimulus-reflex');
      const target = el.dataset.reflex.split('->')[1];
      let settled;
      try {
        await controller.stimulate(target, el);
        settled = 'resolved';
      } catch (e) {
        settled = `rejected: ${e.error}`;
      }
      await new Promise((r) => setTimeout(r, 50));
      return { settled, seen };
    }, id);
    await page.click('summary');
    const halted = await outcome('halted');
    assert.equal(halted.settled, 'resolved');
    assert.ok(halted.seen.includes('halted'), JSON.stringify(halted));
    const forbidden = await outcome('forbidden');
    assert.equal(forbidden.settled, 'resolved');
    assert.ok(forbidden.seen.includes('forbidden'), JSON.stringify(forbidden));
    const failed = await outcome('failing');
    assert.match(failed.settled, /^rejected: the error button always fails/);
    assert.ok(failed.seen.includes('error'), JSON.stringify(failed));
    assert.equal(await text(page, '#counter'), '0', 'none of them changed the count');
    await context.close();
  });
});

test('todos: add, toggle and delete with a form', async () => {
  await withServer(async (server) => {
    const { context, page } = await newPage(server);
    await page.click('#nav-todos');
    await page.waitForURL(/\/todos$/);
    await connected(page);
    await page.fill('#todo-title', 'Write <tests> & ship');
    await page.click('#todo-add');
    await page.waitForSelector('#todos li.todo');
    assert.equal(await text(page, '#todos li.todo .title'), 'Write <tests> & ship', 'escaped and shown');
    await page.fill('#todo-title', 'Second');
    await page.press('#todo-title', 'Enter');
    await page.waitForFunction(() => document.querySelectorAll('#todos li.todo').length === 2);
    await page.click('#todos li.todo:first-child button.toggle');
    await page.waitForSelector('#todos li.todo.done');
    await page.screenshot({ path: path.join(ARTIFACTS, 'todos.png') });
    await page.click('#todos li.todo:first-child button.delete');
    await page.waitForFunction(() => document.querySelectorAll('#todos li.todo').length === 1);
    assert.equal(await text(page, '#todos li.todo .title'), 'Second');
    await page.reload();
    await connected(page);
    assert.equal(await page.locator('#todos li.todo').count(), 1, 'kept in the session');
    await context.close();
  });
});

test('chat: a message typed in one browser appears in another', async () => {
  await withServer(async (server) => {
    const a = await newPage(server);
    const b = await newPage(server);
    for (const { page } of [a, b]) {
      await page.goto(`${server.url}/chat`);
      await connected(page);
    }
    // Both pages' reflex and CableReady stream subscriptions are in place before the message.
    await live(server, 2, 6);
    await a.page.fill('#chat-name', 'Ada');
    await a.page.fill('#chat-text', 'Hello from A');
    await a.page.click('#chat-send');
    await b.page.waitForFunction(() => document.querySelector('#messages').textContent.includes('Hello from A'), null, { timeout: 10000 });
    assert.match(await text(b.page, '#messages'), /Ada\s+Hello from A/);
    await a.page.waitForFunction(() => document.querySelector('#messages').textContent.includes('Hello from A'));
    await b.page.screenshot({ path: path.join(ARTIFACTS, 'chat.png') });
    await a.context.close();
    await b.context.close();
  });
});

test('chat: typing shows "… is typing" to everyone else (a whisper), never to the typist', async () => {
  await withServer(async (server) => {
    const a = await newPage(server);
    const b = await newPage(server);
    for (const { page } of [a, b]) {
      await page.goto(`${server.url}/chat`);
      await connected(page);
    }
    await live(server, 2, 6);
    await a.page.fill('#chat-name', 'Ada');
    await a.page.type('#chat-text', 'hel');
    await b.page.waitForFunction(() => document.querySelector('#chat-typing').textContent === 'Ada is typing…', null, { timeout: 10000 });
    await b.page.screenshot({ path: path.join(ARTIFACTS, 'chat-typing.png') });
    // Bob types after Ada: whispers on one stream arrive in order, so once Ada's page shows
    // Bob, an echo of her own whisper would already have arrived before it.
    await b.page.fill('#chat-name', 'Bob');
    await b.page.type('#chat-text', 'yo');
    await a.page.waitForFunction(() => document.querySelector('#chat-typing').textContent === 'Bob is typing…', null, { timeout: 10000 });
    assert.deepEqual(await a.page.evaluate(() => window.typingSeen), ['Bob']);
    assert.deepEqual(await b.page.evaluate(() => window.typingSeen), ['Ada']);
    assert.equal(await server.metric('ferrocable_whispers_total'), 2);
    assert.deepEqual([...a.page.errors, ...b.page.errors], []);
    await a.context.close();
    await b.context.close();
  });
});

test('chat: "here now" lists one entry per session, across tabs, and drops a visitor after the presence TTL', async () => {
  const env = { FERROCABLE_PRESENCE_TTL: '1', FERROCABLE_PING_INTERVAL_MS: '250' };
  await withServerOpts({ env }, async (server) => {
    const names = (page) => page.evaluate(() => document.querySelector('#chat-present').textContent.split(', ').filter(Boolean).length);
    // Two tabs of one browser (one session) and another browser.
    const ada = await openPage(browser, `${server.url}/chat`);
    const adaTab2 = await ada.context.newPage();
    adaTab2.errors = [];
    await adaTab2.goto(`${server.url}/chat`);
    const bob = await openPage(browser, `${server.url}/chat`);
    for (const page of [ada.page, adaTab2, bob.page]) await connected(page);
    await live(server, 3, 9);
    for (const page of [ada.page, adaTab2, bob.page]) {
      await page.waitForFunction(() => document.querySelector('#chat-present').textContent.split(', ').filter(Boolean).length === 2, null, { timeout: 10000 });
    }
    await bob.page.screenshot({ path: path.join(ARTIFACTS, 'chat-presence.png') });
    // Ada's browser goes away: after the TTL, Bob sees only himself.
    await ada.context.close();
    await bob.page.waitForFunction(() => document.querySelector('#chat-present').textContent.split(', ').filter(Boolean).length === 1, null, { timeout: 10000 });
    assert.equal(await names(bob.page), 1);
    assert.deepEqual(bob.page.errors, []);
    await bob.context.close();
  });
});

test('Turbo navigation keeps exactly one WebSocket', async () => {
  await withServer(async (server) => {
    const { context, page } = await newPage(server);
    for (const [link, url] of [['#nav-todos', /\/todos$/], ['#nav-chat', /\/chat$/], ['#nav-counter', /\/$/]]) {
      await page.click(link);
      await page.waitForURL(url);
      await connected(page);
    }
    await page.click('#increment');
    await page.waitForFunction(() => document.querySelector('#counter').textContent.trim() === '1');
    assert.equal(await server.metric('ferrocable_connections_opened_total'), 1, 'one socket for the whole visit');
    assert.equal(await server.metric('ferrocable_connections'), 1);
    await context.close();
  });
});

test('stopping the server disables the page; restarting reconnects and the next click works', async () => {
  await withServer(async (server) => {
    const { context, page } = await newPage(server);
    await page.click('#increment');
    await page.waitForFunction(() => document.querySelector('#counter').textContent.trim() === '1');
    assert.equal(await server.stop(), 0, 'clean exit on SIGTERM');
    await page.waitForSelector('body.stimulus-reflex-disconnected', { timeout: 10000 });
    assert.equal(await page.$eval('#increment', (b) => getComputedStyle(b).pointerEvents), 'none', 'buttons disabled');
    await page.screenshot({ path: path.join(ARTIFACTS, 'disconnected.png') });
    await server.start();
    await connected(page, 45000);
    await page.click('#increment');
    await page.waitForFunction(() => document.querySelector('#counter').textContent.trim() === '2');
    await context.close();
  });
});


for (const client of ['anycable', 'actioncable']) {
  test(`chat over a cut network with ${client === 'anycable' ? '@anycable/web: the message sent while offline arrives on restore' : '@rails/actioncable: the message sent while offline is lost'}`, { timeout: 90000 }, async () => {
    await withServer(async (server) => {
      const proxy = await startProxy(server.port);
      try {
        const reader = await browser.newContext();
        const page = await reader.newPage();
        page.errors = [];
        page.on('pageerror', (e) => page.errors.push(String(e)));
        await page.goto(`http://127.0.0.1:${proxy.port}/chat?cable=${client}`);
        await connected(page);
        assert.equal(await page.evaluate(() => window.ferrocable.client), client === 'anycable' ? '@anycable/web' : '@rails/actioncable');
        const writer = await newPage(server);
        await writer.page.goto(`${server.url}/chat`);
        await connected(writer.page);
        await live(server, 2, 6);
        const say = async (words) => {
          await writer.page.fill('#chat-name', 'Bob');
          await writer.page.fill('#chat-text', words);
          await writer.page.click('#chat-send');
          await writer.page.waitForFunction((w) => document.querySelector('#messages').textContent.includes(w), words, { timeout: 10000 });
        };
        const seen = (words) => page.evaluate((w) => document.querySelector('#messages').textContent.includes(w), words);

        await say('before the cut');
        await page.waitForFunction(() => document.querySelector('#messages').textContent.includes('before the cut'), null, { timeout: 10000 });

        proxy.cut();
        // The server has seen the reader's connection go: only the writer's is left.
        await live(server, 1, 3);
        await say('sent while offline');
        assert.equal(await seen('sent while offline'), false, 'not delivered while the network is down');
        proxy.resume();
        await connected(page, 45000);
        await say('after the restore');
        await page.waitForFunction(() => document.querySelector('#messages').textContent.includes('after the restore'), null, { timeout: 30000 });
        const text = await page.evaluate(() => document.querySelector('#messages').textContent);
        if (client === 'anycable') {
          assert.ok(text.includes('sent while offline'), `replayed on restore: ${text}`);
          assert.ok(text.indexOf('sent while offline') < text.indexOf('after the restore'), 'in order');
          assert.equal(text.split('sent while offline').length, 2, 'once');
          // StimulusReflex itself runs over the @anycable/web consumer: a reflex from this page.
          await page.fill('#chat-name', 'Ann');
          await page.fill('#chat-text', 'reflex over anycable');
          await page.click('#chat-send');
          await writer.page.waitForFunction(() => document.querySelector('#messages').textContent.includes('reflex over anycable'), null, { timeout: 10000 });
          await page.screenshot({ path: path.join(ARTIFACTS, 'chat-restored.png') });
        } else {
          assert.equal(text.includes('sent while offline'), false, 'a plain Action Cable client misses it (at-most-once)');
        }
        assert.deepEqual(page.errors, []);
        await reader.close();
        await writer.context.close();
      } finally {
        await proxy.close();
      }
    });
  });
}
