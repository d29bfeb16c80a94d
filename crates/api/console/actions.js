// What a user may do to a module, offered only with the control role (the
// server refuses it anyway), and what a destructive action will do, said
// before it is done with the figures the replication status gives.
import { el, bytes, idOf } from './dom.js';
import { primaryOf } from './grid.js';

export const mayCommand = (role) => role === 'control' || role === 'admin';

/** The commands offered on a node in `state`. */
function commandsFor(state) {
  switch (state) {
    case 'STOP': return ['start', 'prim', 'second'];
    case 'WAIT': return ['stop', 'prim', 'second', 'second-discard'];
    case 'ALONE': return ['stop', 'restart', 'second-discard'];
    case 'PRIM': case 'UP': return ['stop', 'restart'];
    case 'SECOND': return ['stop', 'restart', 'second-discard'];
    default: return ['stop'];
  }
}

const LABEL = {
  start: 'start', stop: 'stop', restart: 'restart', prim: 'prim',
  second: 'second', 'second-discard': 'second, discarding data', swap: 'swap',
};

/** What the tracked changes of the primary say will be sent (or unknown). */
function toSend(primary) {
  const dirs = (primary && primary.summary.replication) || [];
  const tracked = dirs.map((d) => d.tracked).filter(Boolean);
  if (tracked.length === 0) return null;
  if (tracked.some((t) => t.everything)) return 'every file compared by checksum (what differs is unknown until compared)';
  const sum = tracked.reduce((a, t) => a + t.bytes, 0);
  const compared = tracked.reduce((a, t) => a + t.bytes_compared, 0);
  const eta = tracked.map((t) => t.eta_seconds).filter((s) => s !== undefined && s !== null);
  let text = `${bytes(sum)} differ`;
  if (compared > 0) text += ` and ${bytes(compared)} to compare by checksum`;
  if (eta.length > 0) text += `, about ${Math.ceil(eta.reduce((a, s) => a + s, 0))} s`;
  return text;
}

/** What `command` on `node` will do, or null when it harms nothing. */
export function preview(view, module, node, command) {
  const here = view.at(module, node);
  const other = view.nodes.find((n) => n !== node && view.at(module, n));
  const there = other ? view.at(module, other) : null;
  const primary = primaryOf(view, module);
  switch (command) {
    case 'stop':
      if (here && (here.state === 'PRIM' || here.state === 'ALONE')) {
        return there && there.state === 'SECOND'
          ? `The application stops on ${node}; ${other} takes over as ALONE and the virtual IP moves to ${other}.`
          : `The application stops on ${node} and nothing else runs it: the service is down until a start.`;
      }
      return null;
    case 'restart':
      return `The application restarts on ${node} (its scripts stop and start it again).`;
    case 'swap': {
      if (!primary) return 'Swap needs a PRIM and a SECOND.';
      const target = view.nodes.find((n) => n !== primary.node && view.at(module, n));
      return `The application stops on ${primary.node} and starts on ${target}; the virtual IP moves to ${target}.`;
    }
    case 'prim':
      return `${node} starts as primary with its own data, even if it is not up to date: changes only the other node has are lost when it becomes SECOND.`;
    case 'second-discard': {
      const from = primary && primary.node !== node ? primary.node : other;
      const send = toSend(primary);
      return `${node}'s copy will be overwritten by ${from}'s${send ? `: ${send}` : ''}.`;
    }
    default:
      return null;
  }
}

/** The buttons of one cell. */
export function cellActions(ctx, module, node, summary) {
  if (!mayCommand(ctx.role)) return null;
  return el('span', { class: 'actions' }, commandsFor(summary.state).map((command) => el('button', {
    type: 'button',
    id: idOf('action', module, node, command),
    onclick: () => ctx.run(module, node, command),
  }, LABEL[command])));
}

/** The buttons of a module's row (the whole module). */
export function moduleActions(ctx, module) {
  if (!mayCommand(ctx.role)) return null;
  const primary = primaryOf(ctx.view, module);
  const canSwap = primary && primary.summary.state === 'PRIM'
    && ctx.view.nodes.some((n) => ctx.view.at(module, n) && ctx.view.at(module, n).state === 'SECOND');
  return el('span', { class: 'actions' },
    el('button', { type: 'button', id: idOf('action', module, 'start-all'), onclick: () => ctx.runAll(module, 'start') }, 'start all'),
    el('button', { type: 'button', id: idOf('action', module, 'stop-all'), onclick: () => ctx.runAll(module, 'stop') }, 'stop all'),
    canSwap ? el('button', { type: 'button', id: idOf('action', module, 'swap'), onclick: () => ctx.run(module, primary.node, 'swap') }, 'swap') : null);
}
