// Shared by the browser tests: Debian's headless Chromium with the flags this machine needs,
// a server per test that is always stopped, and the wait for a live StimulusReflex page.
'use strict';
const { chromium } = require('playwright-core');
const { Server } = require('./server');

function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/** Runs `fn(server)` against a started server (options as `Server`); the log tail joins any failure. */
async function withServer(opts, fn) {
  const server = new Server(opts);
  try {
    await server.start();
    await fn(server);
  } catch (e) {
    e.message += `\n--- server log tail ---\n${server.log.slice(-3000)}`;
    throw e;
  } finally {
    await server.stop().catch(() => {});
    await server.dispose();
  }
}

/** Resolves once StimulusReflex is connected on the page (it marks the body). */
async function connected(page, timeout = 15000) {
  await page.waitForSelector('body.stimulus-reflex-connected', { timeout });
}

/** A new browser context with a page at `url` that records page errors. */
async function openPage(browser, url) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  await page.goto(url);
  return { context, page };
}

module.exports = { launch, withServer, connected, openPage };
