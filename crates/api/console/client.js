// The API client of one cluster: calls with the session's CSRF token, the
// cluster-wide view, commands relayed to the node they are for, and the
// event stream that tells the console when to look again.

/** An answer that is not 2xx: the API's message (`{"error": ...}`). */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** How long a call may take before the node counts as not answering. */
const CALL_TIMEOUT_MS = 8000;

export class Client {
  /** `base`: the API's URL prefix (this page's base path). */
  constructor(base) {
    this.base = base;
    this.origin = location.origin;
    this.csrf = sessionStorage.getItem('holdfast.csrf') || '';
    // Accepted by every member: the console goes on through another node.
    this.token = sessionStorage.getItem('holdfast.token') || '';
    this.members = JSON.parse(sessionStorage.getItem('holdfast.members') || '[]');
    this.node = null;
    this.switched = () => {};
  }

  /** A call to the node in use; when it does not answer, to another member. */
  async call(method, path, body) {
    const tried = new Set();
    for (;;) {
      try {
        return await this.callOn(this.origin, method, path, body);
      } catch (e) {
        if (e.status !== 0) throw e;
        tried.add(this.origin);
        if (!(await this.failover(tried, e.message))) throw e;
      }
    }
  }

  async callOn(origin, method, path, body, timeout = CALL_TIMEOUT_MS) {
    const headers = {};
    if (method !== 'GET' && this.csrf && origin === location.origin) headers['x-csrf-token'] = this.csrf;
    if (this.token) headers['x-holdfast-session'] = this.token;
    let payload;
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(origin + this.base + path, {
        method,
        headers,
        body: payload,
        // Cookies only to the page's own node; other members get the token.
        credentials: origin === location.origin ? 'same-origin' : 'omit',
        cache: 'no-store',
        signal: AbortSignal.timeout(timeout),
      });
    } catch (e) {
      throw new ApiError(0, `no answer from ${new URL(origin).host}: ${e.message}`);
    }
    const text = await response.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch { json = null; }
    if (!response.ok) {
      throw new ApiError(response.status, (json && json.error) || text || response.statusText);
    }
    return json;
  }

  /** Moves to the first other member that answers; false if none does. */
  async failover(tried, why) {
    for (const member of this.members) {
      const origin = `https://${member.address}`;
      if (tried.has(origin)) continue;
      tried.add(origin);
      try {
        const answer = await this.callOn(origin, 'GET', '/v1/node', undefined, 4000);
        const from = this.node;
        this.origin = origin;
        this.node = answer.node;
        this.switched(from, this.node, why);
        return true;
      } catch {
        // Not this one either.
      }
    }
    return false;
  }

  async login(user, password) {
    const answer = await this.call('POST', '/v1/session', { user, password });
    this.csrf = answer.csrf_token;
    sessionStorage.setItem('holdfast.csrf', this.csrf);
    this.keep(answer);
    return answer;
  }

  /** Keeps the session token an answer brings. */
  keep(answer) {
    if (answer && answer.session_token) {
      this.token = answer.session_token;
      sessionStorage.setItem('holdfast.token', this.token);
    }
  }

  /** The members' API addresses, to go on through one of them later. */
  async learnMembers() {
    const cluster = await this.call('GET', '/v1/cluster');
    this.members = cluster.nodes || [];
    sessionStorage.setItem('holdfast.members', JSON.stringify(this.members));
  }

  async logout() {
    try { await this.call('DELETE', '/v1/session'); } finally {
      for (const key of ['holdfast.csrf', 'holdfast.token', 'holdfast.members']) sessionStorage.removeItem(key);
      this.csrf = '';
      this.token = '';
    }
  }

  async whoami() {
    const answer = await this.call('GET', '/v1/session');
    this.keep(answer);
    return answer;
  }

  async thisNode() {
    this.node = (await this.call('GET', '/v1/node')).node;
    return this.node;
  }

  clusterState() { return this.call('GET', '/v1/cluster/state'); }

  /** `path` on `node`: directly on the node answering, else relayed. */
  onNode(node, method, path, body) {
    const target = node === this.node ? path : `/v1/nodes/${encodeURIComponent(node)}${path}`;
    return this.call(method, target, body);
  }

  command(node, module, command, discardData = false) {
    // The API's command names are capitalised (`Start`, `Swap`, ...).
    const body = { command: command[0].toUpperCase() + command.slice(1) };
    if (discardData) body.discard_data = true;
    return this.onNode(node, 'POST', `/v1/modules/${encodeURIComponent(module)}/command`, body);
  }

  log(node, module, count = 300) {
    return this.onNode(node, 'GET', `/v1/modules/${encodeURIComponent(module)}/log?count=${count}`);
  }

  /**
   * Calls `changed(event)` for each event of the cluster's stream
   * (`GET /v1/events`, server-sent events); `lost()` when the stream
   * breaks, after which the console looks on its own until it is back.
   */
  events(changed, lost) {
    const source = new EventSource(`${this.origin}${this.base}/v1/events`, { withCredentials: true });
    source.onmessage = (message) => changed(message);
    source.addEventListener('error', () => lost(source));
    for (const kind of ['state', 'transition', 'log', 'replication', 'node']) {
      source.addEventListener(kind, (message) => changed(message));
    }
    return source;
  }
}
