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

export class Client {
  /** `base`: the API's URL prefix (this page's base path). */
  constructor(base) {
    this.base = base;
    this.csrf = sessionStorage.getItem('holdfast.csrf') || '';
    this.node = null;
  }

  async call(method, path, body) {
    const headers = {};
    if (method !== 'GET') headers['x-csrf-token'] = this.csrf;
    let payload;
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(this.base + path, {
        method, headers, body: payload, credentials: 'same-origin', cache: 'no-store',
      });
    } catch (e) {
      throw new ApiError(0, `no answer from ${location.host}: ${e.message}`);
    }
    const text = await response.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch { json = null; }
    if (!response.ok) {
      throw new ApiError(response.status, (json && json.error) || text || response.statusText);
    }
    return json;
  }

  async login(user, password) {
    const answer = await this.call('POST', '/v1/session', { user, password });
    this.csrf = answer.csrf_token;
    sessionStorage.setItem('holdfast.csrf', this.csrf);
    return answer;
  }

  async logout() {
    try { await this.call('DELETE', '/v1/session'); } finally {
      sessionStorage.removeItem('holdfast.csrf');
      this.csrf = '';
    }
  }

  whoami() { return this.call('GET', '/v1/session'); }

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
    const source = new EventSource(`${this.base}/v1/events`, { withCredentials: true });
    source.onmessage = (message) => changed(message);
    source.addEventListener('error', () => lost(source));
    for (const kind of ['state', 'transition', 'log', 'replication', 'node']) {
      source.addEventListener(kind, (message) => changed(message));
    }
    return source;
  }
}
