// The README's quick start, as a new user would take it: the three blocks of its "Quick start"
// section copied into a new crate outside the workspace (the ferrocable path pointed at this
// checkout), `npm install`, `cargo build`, then the page clicked in Chromium.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { launch, withServer, connected, openPage } = require('./browser');

const ROOT = path.resolve(__dirname, '../..');
let browser;
let crate;

/** The fenced blocks of `lang` in the README's "Quick start" section, in order. */
function blocks(lang) {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const start = readme.indexOf('\n## Quick start\n');
  assert.ok(start >= 0, 'README has a Quick start section');
  const end = readme.indexOf('\n## ', start + 1);
  const section = readme.slice(start, end < 0 ? undefined : end);
  const re = new RegExp('```' + lang + '\\n([\\s\\S]*?)```', 'g');
  return [...section.matchAll(re)].map((m) => m[1]);
}

before(async () => {
  const [deps] = blocks('toml');
  const [main] = blocks('rust');
  const [pkg] = blocks('json');
  assert.ok(deps && main && pkg, 'a toml, a rust and a json block');
  assert.match(deps, /^\[dependencies\]/m);
  crate = fs.mkdtempSync(path.join(os.tmpdir(), 'ferrocable-quickstart-'));
  const local = deps.replace(/(ferrocable\s*=\s*\{[^}]*path\s*=\s*)"[^"]*"/, `$1${JSON.stringify(path.join(ROOT, 'crates/ferrocable'))}`);
  assert.notEqual(local, deps, 'the ferrocable dependency is a path dependency the test can point here');
  fs.writeFileSync(path.join(crate, 'Cargo.toml'), `[package]\nname = "quickstart"\nversion = "0.1.0"\nedition = "2024"\n\n${local}`);
  fs.mkdirSync(path.join(crate, 'src'));
  fs.writeFileSync(path.join(crate, 'src/main.rs'), main);
  fs.writeFileSync(path.join(crate, 'package.json'), pkg);
  // The workspace's lock file, so the new crate resolves the versions CI already built.
  fs.copyFileSync(path.join(ROOT, 'Cargo.lock'), path.join(crate, 'Cargo.lock'));
  execFileSync('npm', ['install', '--no-audit', '--no-fund'], { cwd: crate, stdio: 'inherit' });
  execFileSync('cargo', ['build', '--quiet'], {
    cwd: crate,
    stdio: 'inherit',
    env: { ...process.env, CARGO_TARGET_DIR: path.join(ROOT, 'target/quickstart') },
  });
  browser = await launch();
});

after(async () => {
  if (browser) await browser.close();
  if (crate) fs.rmSync(crate, { recursive: true, force: true });
});

test('README quick start: builds outside the workspace, serves its packages, a click morphs the count', async () => {
  const opts = { bin: path.join(ROOT, 'target/quickstart/debug/quickstart'), cwd: crate, bindByEnv: true };
  await withServer(opts, async (server) => {
    const { context, page } = await openPage(browser, `${server.url}/`);
    await connected(page);
    assert.equal((await page.textContent('#count')).trim(), '0');
    await page.click('#increment');
    await page.waitForFunction(() => document.querySelector('#count').textContent.trim() === '1');
    await page.reload();
    await connected(page);
    assert.equal((await page.textContent('#count')).trim(), '1', 'the count is in the session');
    await page.click('#increment');
    await page.waitForFunction(() => document.querySelector('#count').textContent.trim() === '2');
    await page.screenshot({ path: path.join(__dirname, 'artifacts', 'quickstart.png') });
    assert.deepEqual(page.errors, []);
    await context.close();
    assert.equal(await server.stop(), 0, 'SIGTERM ends the app cleanly');
  });
});
