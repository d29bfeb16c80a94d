// Drives Debian's chromium (headless) through the web console, for
// crates/cli/tests/console_lab.rs, which starts the daemons and runs this
// on the lab's client host. It asks the test for faults with a line
// "@ask <what>" on stdout and waits for "ok" on stdin; each step it passes
// is printed as "@step <name>". Any failure exits non-zero with the reason
// and a screenshot of the page (failure-*.png).
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const urls = { node1: env('HF_URL_NODE1'), node2: env('HF_URL_NODE2') };
const adminPassword = env('HF_ADMIN_PASSWORD');
const shots = env('HF_SCREENSHOTS');
const profiles = env('HF_PROFILES');
const WAIT = 45_000;

const lines = createInterface({ input: process.stdin });
const answers = [];
let waiting = null;
lines.on('line', (line) => (waiting ? (waiting(line), (waiting = null)) : answers.push(line)));
function ask(what) {
  console.log(`@ask ${what}`);
  return new Promise((resolve, reject) => {
    const take = (line) => (line === 'ok' ? resolve() : reject(new Error(`${what}: ${line}`)));
    if (answers.length) take(answers.shift()); else waiting = take;
  });
}
const step = (name) => console.log(`@step ${name}`);

function expect(condition, message) {
  if (!condition) throw new Error(message);
}

// Each user its own browser, with a fresh profile (no cookie, no cache).
const opened = [];
async function openBrowser() {
  const context = await chromium.launchPersistentContext(mkdtempSync(join(profiles, 'chromium-')), {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic'],
    // The cluster's CA is not in the browser's store: trusted here (the
    // TLS is real; the API's own tests check the certificates).
    ignoreHTTPSErrors: true,
    viewport: { width: 1280, height: 900 },
  });
  opened.push(context);
  return context;
}
let page;
try {
  const admin = await openBrowser();
  page = admin.pages()[0] || await admin.newPage();
  const violations = [];
  page.on('console', (m) => { if (/Content.Security.Policy/i.test(m.text())) violations.push(m.text()); });

  // Served by the daemon with a strict policy.
  const response = await page.goto(`${urls.node1}/`);
  const csp = response.headers()['content-security-policy'] || '';
  expect(csp.includes("script-src 'self'") && csp.includes("default-src 'none'"), `CSP: ${csp}`);
  step('served');

  // Log in as admin.
  await page.fill('#login-user', 'admin');
  await page.fill('#login-password', 'not the password');
  await page.click('#login-submit');
  await page.waitForFunction(() => document.querySelector('#login-error').textContent.includes('wrong'), null, { timeout: WAIT });
  await page.fill('#login-password', adminPassword);
  await page.press('#login-password', 'Enter');
  await page.waitForSelector('#grid #cell-demo-node1', { timeout: WAIT });
  expect((await page.textContent('#whoami')).includes('admin'), 'whoami says admin');
  step('logged-in');

  // A page that is never reloaded: this mark would be lost.
  await page.evaluate(() => { window.neverReloaded = true; });
  const stateOf = (node) => page.getAttribute(`#cell-demo-${node}`, 'data-state');
  const waitStates = async (wanted, what) => {
    await page.waitForFunction((w) => Object.entries(w).every(([node, state]) => {
      const cell = document.querySelector(`#cell-demo-${node}`);
      return cell && cell.dataset.state === state && cell.dataset.transient === 'no';
    }), wanted, { timeout: WAIT }).catch(async (e) => {
      throw new Error(`${what}: wanted ${JSON.stringify(wanted)}, grid shows node1 ${await stateOf('node1')}, node2 ${await stateOf('node2')} (${e.message})`);
    });
  };
  await waitStates({ node1: 'STOP', node2: 'STOP' }, 'both stopped at first');

  // Start the module on both nodes: PRIM and SECOND, green, without a reload.
  await page.click('#action-demo-start-all');
  await page.waitForFunction(() => {
    const states = ['node1', 'node2'].map((n) => document.querySelector(`#cell-demo-${n}`)?.dataset.state).sort();
    return states[0] === 'PRIM' && states[1] === 'SECOND'
      && document.querySelectorAll('#grid .cell.ok').length === 2;
  }, null, { timeout: WAIT });
  const primary = (await stateOf('node1')) === 'PRIM' ? 'node1' : 'node2';
  const secondary = primary === 'node1' ? 'node2' : 'node1';
  await page.waitForSelector(`#cell-demo-${secondary} .badge.uptodate`, { timeout: WAIT });
  expect(await page.evaluate(() => window.neverReloaded === true), 'the page was reloaded');
  const green = await page.$eval(`#cell-demo-${primary}`, (c) => getComputedStyle(c).backgroundColor);
  expect(green === 'rgb(223, 243, 228)', `PRIM's cell is green, not ${green}`);
  await page.screenshot({ path: join(shots, 'console-grid.png'), fullPage: true });
  step(`started: ${primary} PRIM`);

  // Swap: the console says what it will do, then the roles change.
  await page.click('#action-demo-swap');
  await page.waitForSelector('#confirm[open]');
  const said = await page.textContent('#confirm-text');
  expect(said.includes(`starts on ${secondary}`) && said.includes('virtual IP moves'), `swap preview: ${said}`);
  await page.click('#confirm-ok');
  await waitStates({ [secondary]: 'PRIM', [primary]: 'SECOND' }, 'after swap');
  step('swapped');

  // The module log.
  await page.click('#open-log-demo');
  await page.waitForFunction(() => document.querySelector('#log-lines').textContent.length > 0, null, { timeout: WAIT });
  const log = await page.textContent('#log-lines');
  expect(/swap|PRIM|SECOND/.test(log), `module log: ${log.slice(0, 300)}`);
  await page.selectOption('#log-level', 'E');
  step('log');

  // The primary's host dies: node1's console shows ALONE and why.
  const survivor = 'node1';
  const dead = 'node2';
  expect(secondary === dead, `after the swap ${dead} is primary`);
  // Not before the new SECOND knows its copy is whole: killed earlier, it
  // rightly waits (WAIT) instead of going on ALONE.
  await page.waitForSelector(`#cell-demo-${survivor} .badge.uptodate`, { timeout: WAIT });
  await ask(`uptodate ${survivor}`);
  await ask(`kill ${dead}`);
  await waitStates({ [survivor]: 'ALONE' }, 'survivor alone');
  await page.waitForFunction((d) => document.querySelector(`#cell-demo-${d}`)?.dataset.state === 'UNREACHABLE', dead, { timeout: WAIT });
  const orange = await page.$eval(`#cell-demo-${survivor}`, (c) => getComputedStyle(c).backgroundColor);
  expect(orange === 'rgb(255, 232, 204)', `ALONE's cell is orange, not ${orange}`);
  const entry = await page.waitForSelector(`#timeline-list .event[data-node="${survivor}"]`, { timeout: WAIT });
  const entryText = await entry.textContent();
  expect(entryText.includes('ALONE') && entryText.includes('because'), `timeline: ${entryText}`);
  await page.screenshot({ path: join(shots, 'console-timeline.png'), fullPage: true });
  step('alone');

  // It comes back (its daemon starts the module by itself: boot policy)
  // after the survivor wrote what it must resynchronise: SECOND with
  // resync progress, then mirroring.
  await ask(`write ${survivor} 400`);
  await ask(`revive ${dead}`);
  const cameBack = await page.waitForFunction((d) => {
    const state = document.querySelector(`#cell-demo-${d}`)?.dataset.state;
    return ['STOP', 'WAIT', 'SECOND'].includes(state) && state;
  }, dead, { timeout: WAIT });
  if ((await cameBack.jsonValue()) === 'STOP') await page.click(`#action-demo-${dead}-start`);
  await page.waitForSelector(`#resync-demo-${survivor} progress, #resync-demo-${dead} progress`, { timeout: WAIT });
  await page.screenshot({ path: join(shots, 'console-replication.png'), fullPage: true });
  step('resync-shown');
  await waitStates({ [survivor]: 'PRIM', [dead]: 'SECOND' }, 'back');
  await page.waitForSelector(`#cell-demo-${dead} .badge.uptodate`, { timeout: WAIT });
  step('back');

  // A monitor: nothing offered; the same command forged is refused (403).
  const made = await page.evaluate(async () => {
    const r = await fetch('/v1/users', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-csrf-token': sessionStorage.getItem('holdfast.csrf') },
      body: JSON.stringify({ name: 'watcher', role: 'monitor', password: 'watching-all-day' }),
    });
    return r.status;
  });
  expect(made === 201, `monitor user created: ${made}`);
  const monitor = await openBrowser();
  const watch = monitor.pages()[0] || await monitor.newPage();
  await watch.goto(`${urls.node1}/`);
  await watch.fill('#login-user', 'watcher');
  await watch.fill('#login-password', 'watching-all-day');
  await watch.click('#login-submit');
  await watch.waitForSelector('#grid #cell-demo-node1[data-state="PRIM"]', { timeout: WAIT });
  const offered = await watch.$$eval('button[id^="action-"]', (b) => b.map((x) => x.id));
  expect(offered.length === 0, `a monitor is offered ${offered.join(', ')}`);
  const forged = await watch.evaluate(async () => {
    const r = await fetch('/v1/modules/demo/command', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-csrf-token': sessionStorage.getItem('holdfast.csrf') },
      body: JSON.stringify({ command: 'Stop' }),
    });
    return [r.status, await r.text()];
  });
  expect(forged[0] === 403 && forged[1].includes('control'), `forged stop: ${forged}`);
  step('monitor-refused');

  // The node the admin's console talks to dies: it goes on through the
  // other one by itself, still logged in.
  const before = Date.now();
  await ask('kill node1');
  await page.waitForFunction(() => document.querySelector('#connection').textContent === 'connected to node2', null, { timeout: WAIT });
  const took = (Date.now() - before) / 1000;
  await page.waitForFunction(() => document.querySelector('#cell-demo-node1')?.dataset.state === 'UNREACHABLE', null, { timeout: WAIT });
  await waitStates({ node2: 'ALONE' }, 'node2 alone after node1 died');
  expect(await page.isHidden('#login'), 'the login form is not shown again');
  expect(await page.evaluate(() => window.neverReloaded === true), 'the page was reloaded');
  expect(took < 15, `the console went on through node2 after ${took} s`);
  await page.click('#open-log-demo');
  await page.waitForFunction(() => document.querySelector('#log-title').textContent.includes('node2'), null, { timeout: WAIT });
  step(`through node2 after ${took.toFixed(1)} s`);

  expect(violations.length === 0, `policy violations: ${violations.join('; ')}`);
  step('done');
} catch (e) {
  if (page) await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true }).catch(() => {});
  console.error(`FAILED: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  for (const context of opened) await context.close();
  lines.close();
}
