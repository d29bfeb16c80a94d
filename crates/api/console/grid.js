// The module × node grid: each cell says the state in SafeKit's word and
// colour (the word is always there: colour is never the only signal), a
// transition in progress, why a node is not shown, and badges (data up to
// date, resync progress with its ETA, farm share, running application).
import { el, bytes, idOf } from './dom.js';

/** Colour class per state: green ready, orange degraded, red down. */
const TONE = { PRIM: 'ok', SECOND: 'ok', UP: 'ok', ALONE: 'degraded', STOP: 'down', WAIT: 'down' };

/** The view's rows: module names, node names, the summary per (module, node). */
export function arrange(state) {
  const nodes = state.map((n) => n.node);
  const modules = [...new Set(state.flatMap((n) => n.modules.map((m) => m.module)))].sort();
  const cell = new Map();
  for (const n of state) for (const m of n.modules) cell.set(`${m.module}\u0000${n.node}`, m);
  return { nodes, modules, byNode: new Map(state.map((n) => [n.node, n])), at: (m, n) => cell.get(`${m}\u0000${n}`) };
}

/** The primary's directories of `module` (for the SECOND's badge and previews). */
export function primaryOf(view, module) {
  for (const node of view.nodes) {
    const m = view.at(module, node);
    if (m && (m.state === 'PRIM' || m.state === 'ALONE')) return { node, summary: m };
  }
  return null;
}

function eta(seconds) {
  if (seconds === null || seconds === undefined) return '';
  return seconds < 1 ? ', under 1 s left' : `, about ${Math.ceil(seconds)} s left`;
}

function badges(view, module, node, m) {
  const out = [];
  if (m.app_active) out.push(el('span', { class: 'badge app' }, 'application running'));
  if (m.farm) {
    const share = Math.round((m.farm.buckets * 100) / 256);
    out.push(el('span', { class: 'badge share' }, `farm share ${share}%`));
  }
  const dirs = m.replication || [];
  const resyncing = dirs.filter((d) => d.activity === 'resynchronising');
  for (const d of resyncing) {
    const p = d.progress;
    const done = p && p.bytes_total > 0 ? Math.round(((p.bytes_total - p.bytes_left) * 100) / p.bytes_total) : 0;
    out.push(el('span', { class: 'badge resync', id: idOf('resync', module, node) },
      el('progress', { max: 100, value: done, 'aria-label': `resync of ${d.dir}` }),
      ` resync ${done}%${p ? ` (${bytes(p.bytes_left)} left${eta(p.eta_seconds)})` : ''}`));
  }
  const primary = primaryOf(view, module);
  const mirroring = (p) => p && (p.summary.replication || []).length > 0
    && p.summary.replication.every((d) => d.activity === 'mirroring');
  if (dirs.length > 0 && resyncing.length === 0) {
    if ((m.state === 'PRIM' && mirroring({ summary: m })) || (m.state === 'SECOND' && mirroring(primary))) {
      out.push(el('span', { class: 'badge uptodate' }, 'data up to date'));
    } else if (m.state === 'ALONE') {
      const tracked = dirs.map((d) => d.tracked).filter(Boolean);
      const sum = tracked.reduce((a, t) => a + t.bytes, 0);
      out.push(el('span', { class: 'badge degraded' }, `not mirrored: ${bytes(sum)} to send`));
    }
  }
  if (m.state === 'SECOND' && primary && (primary.summary.replication || []).some((d) => d.activity === 'resynchronising')) {
    const p = primary.summary.replication.find((d) => d.activity === 'resynchronising').progress;
    const done = p && p.bytes_total > 0 ? Math.round(((p.bytes_total - p.bytes_left) * 100) / p.bytes_total) : 0;
    out.push(el('span', { class: 'badge resync', id: idOf('resync', module, node) },
      el('progress', { max: 100, value: done, 'aria-label': 'resync from the primary' }),
      ` receiving resync ${done}%${p ? eta(p.eta_seconds) : ''}`));
  }
  return out;
}

function cell(view, module, node, actions) {
  const reach = view.byNode.get(node);
  const id = idOf('cell', module, node);
  if (!reach.reachable) {
    return el('td', { id, class: 'cell unreachable', 'data-state': 'UNREACHABLE' },
      el('span', { class: 'state' }, 'UNREACHABLE'),
      el('span', { class: 'reason' }, reach.reason || 'no answer'));
  }
  const m = view.at(module, node);
  if (!m) {
    return el('td', { id, class: 'cell absent', 'data-state': 'NOT INSTALLED' },
      el('span', { class: 'state' }, 'not installed'));
  }
  const tone = TONE[m.state] || 'down';
  return el('td', {
    id,
    class: `cell ${tone}${m.transient ? ' transient' : ''}`,
    'data-state': m.state,
    'data-transient': m.transient ? 'yes' : 'no',
  },
  el('span', { class: 'state' }, m.state, m.transient ? el('span', { class: 'changing' }, ' (changing)') : null),
  m.running_script ? el('span', { class: 'script' }, `running ${m.running_script}`) : null,
  el('span', { class: 'reason', title: m.reason }, m.reason),
  el('span', { class: 'badges' }, badges(view, module, node, m)),
  actions(module, node, m));
}

/** The grid's table from the cluster view; `actions(module, node, summary)` gives a cell's buttons, `moduleActions(module)` a row's. */
export function render(table, view, { actions, moduleActions, openLog }) {
  const head = el('tr', {}, el('th', { scope: 'col' }, 'module'),
    view.nodes.map((n) => el('th', { scope: 'col', id: idOf('node', n) }, n)));
  const rows = view.modules.map((module) => el('tr', { id: idOf('row', module) },
    el('th', { scope: 'row' },
      el('span', { class: 'module-name' }, module),
      el('button', { type: 'button', id: idOf('open-log', module), class: 'link', onclick: () => openLog(module) }, 'log'),
      moduleActions(module)),
    view.nodes.map((node) => cell(view, module, node, actions))));
  const empty = view.modules.length === 0
    ? el('tr', {}, el('td', { colspan: view.nodes.length + 1, id: 'no-modules' }, 'No module installed yet.'))
    : null;
  table.replaceChildren(el('thead', {}, head), el('tbody', {}, rows, empty));
}

export function legend(node) {
  node.replaceChildren(
    el('span', { class: 'cell ok' }, 'PRIM / SECOND / UP: ready'), ' ',
    el('span', { class: 'cell degraded' }, 'ALONE: running without its peer'), ' ',
    el('span', { class: 'cell down' }, 'STOP / WAIT: not running'), ' ',
    el('span', { class: 'cell ok transient' }, '(changing): transition in progress'), ' ',
    el('span', { class: 'cell unreachable' }, 'UNREACHABLE: node not answering'),
  );
}
