// The console's entry: log in, then watch the cluster (the grid, the
// replication view, the timeline) and act on it. The view is fetched again
// whenever the event stream says something changed; while the stream is
// down, every second.
import { $, el, bytes, idOf } from './dom.js';
import { Client } from './client.js';
import { arrange, render, legend } from './grid.js';
import { cellActions, moduleActions, preview } from './actions.js';

const base = new URL('..', import.meta.url).pathname.replace(/\/$/, '');
const client = new Client(base);
const ctx = { role: null, view: null, run, runAll };
const history = new Map(); // `${module}/${node}` -> [{t, fraction}] of the last minutes
const HISTORY_MS = 5 * 60 * 1000;
let previous = new Map(); // `${module}/${node}` -> state, for the timeline
let refreshing = null;
let again = false;
let logOpen = null;

function show(section, visible) { $(section).hidden = !visible; }

async function start() {
  legend($('legend'));
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('log-close').addEventListener('click', () => { logOpen = null; show('log', false); });
  $('log-level').addEventListener('change', () => logOpen && openLog(logOpen.module, logOpen.node));
  try {
    const me = await client.whoami();
    if (!client.csrf) throw new Error('no CSRF token in this tab: log in again');
    await enter(me);
  } catch {
    show('login', true);
    $('login-user').focus();
  }
}

async function login(event) {
  event.preventDefault();
  $('login-error').textContent = '';
  try {
    const me = await client.login($('login-user').value, $('login-password').value);
    $('login-password').value = '';
    await enter(me);
  } catch (e) {
    $('login-error').textContent = e.message;
  }
}

async function logout() {
  await client.logout().catch(() => {});
  location.reload();
}

async function enter(me) {
  ctx.role = me.role;
  $('whoami').textContent = `${me.who} (${me.role})`;
  $('whoami').dataset.role = me.role;
  $('logout').hidden = false;
  show('login', false);
  for (const s of ['monitor', 'replication', 'timeline']) show(s, true);
  await client.thisNode();
  await client.learnMembers();
  client.switched = (from, to, why) => {
    addEvent(Date.now(), '(console)', to, `now through ${to}`, `${from} did not answer (${why})`);
  };
  $('connection').textContent = `connected to ${client.node}`;
  // The session token lasts the idle time: renewed while the console is open.
  setInterval(() => client.whoami().catch(() => {}), 60_000);
  await refresh();
  watch();
  // A slow look as well: the stream says what changed, this catches what it cannot (a node that stopped answering).
  setInterval(refresh, 5000);
}

function watch() {
  let polling = null;
  const source = client.events(() => refresh(), (s) => {
    s.close();
    if (!polling) polling = setInterval(refresh, 1000);
    setTimeout(() => { clearInterval(polling); polling = null; watch(); }, 10000);
  });
  return source;
}

/** One look at the cluster at a time; a look asked meanwhile runs after it. */
async function refresh() {
  if (refreshing) { again = true; return refreshing; }
  refreshing = (async () => {
    try {
      const state = await client.clusterState();
      ctx.view = arrange(state);
      record(ctx.view);
      render($('grid'), ctx.view, {
        actions: (m, n, s) => cellActions(ctx, m, n, s),
        moduleActions: (m) => moduleActions(ctx, m),
        openLog: (m) => openLog(m, client.node),
      });
      renderReplication(ctx.view);
      $('connection').textContent = `connected to ${client.node}`;
      $('connection').className = '';
      if (logOpen) openLog(logOpen.module, logOpen.node);
    } catch (e) {
      if (e.status === 401) { location.reload(); return; }
      $('connection').textContent = `not connected: ${e.message}`;
      $('connection').className = 'error';
    }
  })();
  await refreshing;
  refreshing = null;
  if (again) { again = false; await refresh(); }
}

/** Notes each state change in the timeline and each resync reading in the history. */
function record(view) {
  const now = Date.now();
  const next = new Map();
  for (const module of view.modules) {
    for (const node of view.nodes) {
      const reach = view.byNode.get(node);
      const m = view.at(module, node);
      const key = `${module}/${node}`;
      const state = !reach.reachable ? 'UNREACHABLE' : (m ? m.state : 'not installed');
      next.set(key, state);
      const before = previous.get(key);
      if (before !== undefined && before !== state) {
        const cause = !reach.reachable ? (reach.reason || 'no answer') : (m && m.reason) || '';
        addEvent(now, module, node, `${before} → ${state}`, cause);
      }
      const dir = m && (m.replication || []).find((d) => d.activity === 'resynchronising' && d.progress);
      const series = history.get(key) || [];
      const fraction = dir && dir.progress.bytes_total > 0
        ? (dir.progress.bytes_total - dir.progress.bytes_left) / dir.progress.bytes_total : null;
      series.push({ t: now, fraction });
      while (series.length && series[0].t < now - HISTORY_MS) series.shift();
      history.set(key, series);
    }
  }
  previous = next;
}

function addEvent(time, module, node, change, cause) {
  const stamp = new Date(time).toLocaleTimeString();
  const item = el('li', { class: 'event', 'data-module': module, 'data-node': node },
    el('time', { datetime: new Date(time).toISOString() }, stamp), ' ',
    el('strong', {}, `${module} on ${node}: ${change}`),
    cause ? el('span', { class: 'cause' }, ` — because: ${cause}`) : null, ' ',
    el('button', { type: 'button', class: 'link', onclick: () => openLog(module, node) }, 'log at this moment'));
  $('timeline-list').prepend(item);
}

function renderReplication(view) {
  const body = [];
  for (const module of view.modules) {
    for (const node of view.nodes) {
      const m = view.at(module, node);
      if (!m || !(m.replication || []).length) continue;
      const rows = m.replication.map((d) => el('tr', {},
        el('td', {}, d.dir),
        el('td', { class: 'activity' }, d.activity),
        el('td', {}, d.progress ? `${bytes(d.progress.bytes_total - d.progress.bytes_left)} of ${bytes(d.progress.bytes_total)} at ${bytes(d.progress.rate)}/s` : ''),
        el('td', {}, d.tracked ? `${bytes(d.tracked.bytes)} not yet sent` : ''),
        el('td', {}, d.problem || '')));
      body.push(el('div', { class: 'replication', id: idOf('replication', module, node) },
        el('h3', {}, `${module} on ${node} (${m.state})`),
        el('table', {}, el('thead', {}, el('tr', {},
          ['directory', 'activity', 'resync', 'unacknowledged', 'problem'].map((h) => el('th', { scope: 'col' }, h)))),
        el('tbody', {}, rows)),
        graph(history.get(`${module}/${node}`) || [])));
    }
  }
  $('replication-body').replaceChildren(...(body.length ? body : [el('p', {}, 'No replicated directory.')]));
}

/** Resync progress over the last minutes, an SVG polyline (gaps where none ran). */
function graph(series) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  const [w, h] = [300, 60];
  svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
  svg.setAttribute('class', 'graph');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', 'resync progress over the last 5 minutes');
  const frame = document.createElementNS(ns, 'rect');
  for (const [k, v] of Object.entries({ x: 0, y: 0, width: w, height: h, class: 'frame' })) frame.setAttribute(k, v);
  svg.append(frame);
  const now = Date.now();
  let points = [];
  const flush = () => {
    if (points.length) {
      const line = document.createElementNS(ns, 'polyline');
      line.setAttribute('points', points.join(' '));
      line.setAttribute('class', 'progress-line');
      svg.append(line);
    }
    points = [];
  };
  for (const s of series) {
    if (s.fraction === null) { flush(); continue; }
    const x = (w - ((now - s.t) / HISTORY_MS) * w).toFixed(1);
    const y = (h - s.fraction * h).toFixed(1);
    points.push(`${x},${y}`);
    const dot = document.createElementNS(ns, 'circle');
    for (const [k, v] of Object.entries({ cx: x, cy: y, r: 2.5, class: 'progress-dot' })) dot.setAttribute(k, v);
    svg.append(dot);
  }
  flush();
  const caption = document.createElementNS(ns, 'text');
  for (const [k, v] of Object.entries({ x: 4, y: 12, class: 'caption' })) caption.setAttribute(k, v);
  caption.textContent = 'resync progress, last 5 minutes';
  svg.append(caption);
  return svg;
}

async function openLog(module, node) {
  logOpen = { module, node };
  show('log', true);
  $('log-title').textContent = `Module log: ${module} on ${node}`;
  try {
    const lines = await client.log(node, module);
    const level = $('log-level').value;
    const text = lines.filter((l) => !level || l.level === level)
      .map((l) => `${l.time} ${l.level} ${l.message}`).join('\n');
    $('log-lines').textContent = text || (level ? 'No line at this level.' : 'The log is empty.');
    const link = $('log-download');
    if (link.href.startsWith('blob:')) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([text + '\n'], { type: 'text/plain' }));
    link.download = `${module}-${node}.log`;
  } catch (e) {
    $('log-lines').textContent = `The log could not be read: ${e.message}`;
  }
}

function confirmFirst(text) {
  if (!text) return Promise.resolve(true);
  const dialog = $('confirm');
  $('confirm-text').textContent = text;
  dialog.returnValue = '';
  dialog.showModal();
  $('confirm-cancel').focus();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
  });
}

async function run(module, node, command) {
  const ok = await confirmFirst(preview(ctx.view, module, node, command));
  if (!ok) return;
  const discard = command === 'second-discard';
  const name = discard ? 'second' : command;
  $('action-result').textContent = `${command} ${module} on ${node}…`;
  try {
    await client.command(node, module, name, discard);
    $('action-result').textContent = `${command} ${module} on ${node}: done`;
  } catch (e) {
    $('action-result').textContent = `${command} ${module} on ${node}: refused: ${e.message}`;
  }
  refresh();
}

async function runAll(module, command) {
  const nodes = ctx.view.nodes.filter((n) => ctx.view.at(module, n));
  if (command === 'stop' && !(await confirmFirst(`The module ${module} stops on ${nodes.join(' and ')}: the application is down until a start.`))) return;
  const results = await Promise.allSettled(nodes.map((n) => client.command(n, module, command)));
  $('action-result').textContent = results.map((r, i) => `${command} on ${nodes[i]}: ${r.status === 'fulfilled' ? 'done' : `refused: ${r.reason.message}`}`).join('; ');
  refresh();
}

start();
