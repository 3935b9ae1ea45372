// livepix.js: the browser client of livepix. A plain ES module: no dependencies, no build.
//
//   import { LivepixClient } from "http://127.0.0.1:8000/static/livepix.js";
//   const client = new LivepixClient();               // talks to the server it came from
//   const final = await client.run({ task_type: "background_removal", image }, {
//     onProgress: (event) => console.log(event.progress, event.message),
//   });
//
// Transport. One multiplexed WebSocket (`/api/v1/ws`) per client carries every watched
// task. When it drops it is reopened with exponential backoff, and every watched task is
// subscribed again with `since` = the last seq it got, so no event is lost or delivered
// twice. With `transport: "auto"` (the default), a WebSocket that cannot open twice in a row
// while HTTP works (a proxy without WebSocket support, say) makes each watch use an
// EventSource on `/tasks/{id}/events` instead, until the WebSocket opens again. The
// EventSource resumes by itself with `Last-Event-ID`; a new one starts at `?since=`.
//
// Auth. With an `apiKey`, HTTP calls send `Authorization: Bearer <key>` and the WebSocket
// gets `?token=<key>` (browsers cannot set headers on it). Without one, a task's
// `stream_token` (answered by submit when the server has keys; read-only, one task) is
// used as `?token=` for that task, which then gets a stream of its own: an EventSource,
// or the task's WebSocket with `transport: "ws"`.

/** @typedef {'PENDING'|'PROCESSING'|'SUCCESS'|'FAILURE'|'REVOKED'} TaskStatus */
/** @typedef {'image_generation'|'face_swap'|'style_transfer'|'background_removal'|'object_removal'} TaskType */

/**
 * A task to submit (README, "Submit"). Images are base64 PNG, JPEG or WebP; a `data:` URL
 * is accepted.
 * @typedef {object} Task
 * @property {TaskType} task_type
 * @property {string} [prompt]
 * @property {string} [image]
 * @property {string} [target_image]
 * @property {string} [mask]
 * @property {Record<string, unknown>} [parameters]
 */

/**
 * The answer to a submit.
 * @typedef {object} Submitted
 * @property {string} task_id
 * @property {'PENDING'} status
 * @property {number} [position] place in its queue
 * @property {string} [stream_token] read-only `?token=` for this task (servers with keys)
 * @property {string} [message]
 * @property {Record<string, string>} [links] paths of the task's endpoints (HTTP submits)
 */

/**
 * Fields of every event.
 * @typedef {object} EventBase
 * @property {string} task_id
 * @property {number} seq 1, 2, 3... per task
 * @property {TaskStatus} status
 * @property {number} progress 0-100
 * @property {string} message
 * @property {number} ts Unix time, seconds
 */
/** @typedef {EventBase & {type: 'queued', status: 'PENDING', position?: number, eta_s?: number}} QueuedEvent */
/** @typedef {EventBase & {type: 'started', status: 'PROCESSING', worker?: string, queue?: string}} StartedEvent */
/**
 * `preview` (base64 JPEG) comes only sometimes. `replaces`: the seqs of earlier progress
 * events this one replaced for a slow client; they will never come, and are not a gap.
 * @typedef {EventBase & {type: 'progress', status: 'PROCESSING', step?: number, total?: number,
 *   eta_s?: number, preview?: string, replaces?: number[]}} ProgressEvent
 */
/**
 * `image_data` (base64 PNG), or `image_url` with `inline: false`.
 * @typedef {object} TaskResult
 * @property {string} status
 * @property {string} [image_data]
 * @property {string} [image_url]
 * @property {string} [prompt_used]
 * @property {Record<string, unknown>} metadata
 */
/** @typedef {EventBase & {type: 'succeeded', status: 'SUCCESS', result: TaskResult}} SucceededEvent */
/** @typedef {{code: string, message: string}} TaskFailure */
/** @typedef {EventBase & {type: 'failed', status: 'FAILURE', error: TaskFailure}} FailedEvent */
/** @typedef {EventBase & {type: 'cancelled', status: 'REVOKED'}} CancelledEvent */
/** @typedef {QueuedEvent|StartedEvent|ProgressEvent|SucceededEvent|FailedEvent|CancelledEvent} TaskEvent */
/** @typedef {SucceededEvent|FailedEvent|CancelledEvent} FinalEvent */

/**
 * The JSON body of every error answer: a stable `code`, a message, and for invalid input
 * `details` ({field: [messages]}).
 * @typedef {object} ErrorBody
 * @property {string} error
 * @property {string} code
 * @property {Record<string, string[]>} [details]
 */

/**
 * Callbacks of a watch. Each event goes to its typed callback, then to `onEvent`. The
 * second argument is the watch itself. A callback that throws is reported (as an uncaught
 * error) without stopping the watch.
 * @typedef {object} WatchCallbacks
 * @property {(event: QueuedEvent, watch: TaskWatch) => void} [onQueued]
 * @property {(event: StartedEvent, watch: TaskWatch) => void} [onStarted]
 * @property {(event: ProgressEvent, watch: TaskWatch) => void} [onProgress]
 * @property {(event: SucceededEvent, watch: TaskWatch) => void} [onSucceeded]
 * @property {(event: FailedEvent, watch: TaskWatch) => void} [onFailed]
 * @property {(event: CancelledEvent, watch: TaskWatch) => void} [onCancelled]
 * @property {(event: TaskEvent, watch: TaskWatch) => void} [onEvent]
 * @property {(error: LivepixError, watch: TaskWatch) => void} [onError] the watch ended
 *   without a final event: `not_found` (unknown or expired), `unauthorized`, `invalid_input`
 * @property {(missing: number[], event: TaskEvent, watch: TaskWatch) => void} [onGap] seqs
 *   skipped without a `replaces` naming them (never expected; the watch goes on)
 */

/**
 * @typedef {object} WatchOptions
 * @property {number} [since] the last seq already seen: only later events are delivered
 * @property {string} [token] the task's `stream_token`, when the page has no API key
 */

/**
 * What the client's connection is doing, for a status indicator.
 * `idle`: no WebSocket needed yet; `connecting`; `live`; `reconnecting` (`retryInMs`, and
 * the close `code`); `fallback`: the WebSocket cannot open, watches use EventSource;
 * `unauthorized`: the server refused the API key (set another with `setApiKey`);
 * `closed`: `client.close()` was called.
 * @typedef {object} ConnectionState
 * @property {'idle'|'connecting'|'live'|'reconnecting'|'fallback'|'unauthorized'|'closed'} state
 * @property {number} [code] the WebSocket close code that caused it
 * @property {number} [retryInMs]
 */

/**
 * @typedef {object} ClientOptions
 * @property {string} [baseUrl] where livepix runs; default: the server this module came from
 * @property {string} [apiKey] for servers with `LIVEPIX_API_KEYS`
 * @property {'auto'|'ws'|'sse'} [transport] `ws`: WebSocket only; `sse`: EventSource only
 * @property {boolean} [inline] false: final events carry `result.image_url`, not the image
 * @property {number} [maxBackoffMs] the longest wait between reconnects (10 s)
 * @property {(state: ConnectionState) => void} [onConnection]
 */

export const EVENT_TYPES = Object.freeze(['queued', 'started', 'progress', 'succeeded', 'failed', 'cancelled']);
const FINAL = new Set(['succeeded', 'failed', 'cancelled']);
const TERMINAL_STATUSES = new Set(['SUCCESS', 'FAILURE', 'REVOKED']);
const CALLBACK = {
  queued: 'onQueued', started: 'onStarted', progress: 'onProgress',
  succeeded: 'onSucceeded', failed: 'onFailed', cancelled: 'onCancelled',
};
const FIRST_BACKOFF_MS = 500;
const OVERLOADED_BACKOFF_MS = 5000; // close 1013: the server asks clients to back off
const PING_INTERVAL_MS = 25000; // a socket silent for a whole interval after a ping is dead
const FRAME_LIMIT = 60 * 1024; // the server closes frames over 64 KiB with 1009
const SUBMIT_ATTEMPTS = 4;
const UNCLAIMED_MS = 30000; // events of a task submitted over the socket, kept for its watch
const UNCLAIMED_MAX = 256;

/** Raised when livepix answers with an error, or cannot be reached. */
export class LivepixError extends Error {
  /**
   * @param {string} code the server's stable code (`invalid_input`, `not_found`,
   *   `unauthorized`, `too_many_tasks`, `unavailable`...) or one of the client's:
   *   `network_error` (livepix could not be reached), `bad_response` (not livepix's JSON),
   *   `closed` (the watch or the client was closed first)
   * @param {string} message
   * @param {{status?: number, details?: Record<string, string[]>, retryAfterS?: number,
   *   cause?: unknown}} [extra]
   */
  constructor(code, message, { status, details, retryAfterS, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'LivepixError';
    /** @type {string} */ this.code = code;
    /** @type {number|undefined} HTTP status, when there was one */ this.status = status;
    /** @type {Record<string, string[]>|undefined} */ this.details = details;
    /** @type {number|undefined} */ this.retryAfterS = retryAfterS;
  }

  /** @returns {ErrorBody} */
  toJSON() {
    return { error: this.message, code: this.code, ...(this.details ? { details: this.details } : {}) };
  }
}

const FATAL_STREAM_CODES = new Set(['not_found', 'unauthorized', 'invalid_input']);
const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });
const jitter = (ms) => ms + Math.random() * 300;
const newKey = () => (globalThis.crypto?.randomUUID
  ? crypto.randomUUID() : `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`);

/** Calls a user's callback; an exception in it is reported but does not stop us. */
function safely(fn, ...args) {
  if (typeof fn !== 'function') return;
  try { fn(...args); } catch (err) { setTimeout(() => { throw err; }); }
}

/** Whether `text` fits in one WebSocket frame the server accepts. */
function fits(text, limit) {
  return text.length <= limit && new TextEncoder().encode(text).length <= limit;
}

function errorFrom(response, body) {
  const after = Number(response.headers.get('Retry-After'));
  const extra = { status: response.status, retryAfterS: after > 0 ? after : undefined };
  if (body && typeof body === 'object' && typeof body.code === 'string') {
    return new LivepixError(body.code, body.error || body.code, { ...extra, details: body.details });
  }
  return new LivepixError('bad_response', `livepix answered HTTP ${response.status}`, extra);
}

/** A watched task, as `client.watch()` returns it. */
export class TaskWatch {
  #feed;

  /** @param {Feed} feed @hideconstructor */
  constructor(feed) { this.#feed = feed; }

  /** @type {string} */
  get taskId() { return this.#feed.taskId; }

  /** The last seq delivered (or replaced): resume from it with `watch(id, {since})`. */
  get lastSeq() { return this.#feed.lastSeq; }

  /** @type {TaskStatus|null} the status of the last event, null before the first */
  get status() { return this.#feed.status; }

  /** The final event; rejects with a LivepixError when the watch ends without one.
   * @type {Promise<FinalEvent>} */
  get done() { return this.#feed.done; }

  /** Stops watching (the task goes on). */
  close() { this.#feed.close(); }

  /** Asks the server to cancel the task; the `cancelled` event ends the watch. */
  cancel() { return this.#feed.client.cancel(this.#feed.taskId); }
}

/** One watch's state and its stream, on the shared socket or of its own. @internal */
class Feed {
  constructor(client, wiring, taskId, options) {
    this.client = client;
    this.wiring = wiring;
    this.taskId = taskId;
    this.callbacks = options;
    this.token = options.token || '';
    this.lastSeq = Math.max(0, Math.floor(Number(options.since) || 0));
    this.quietThrough = 0; // events up to here only settle `done` (see `start`)
    this.status = null;
    this.route = null; // 'mux' | 'sse' | 'task-ws'
    this.es = null;
    this.socket = null;
    this.timer = 0;
    this.retryMs = FIRST_BACKOFF_MS;
    this.finished = false;
    this.handle = new TaskWatch(this);
    this.done = new Promise((resolve, reject) => { this.resolve = resolve; this.reject = reject; });
    this.done.catch(() => {}); // a watch whose `done` nobody awaits must not log an error
  }

  /** Delivers an event once, in order; skipped seqs must be named by its `replaces`. */
  deliver(event) {
    if (this.finished || !(event.seq > this.lastSeq)) return;
    if (event.seq > this.lastSeq + 1) {
      const replaced = new Set(Array.isArray(event.replaces) ? event.replaces : []);
      const missing = [];
      for (let seq = this.lastSeq + 1; seq < event.seq && missing.length < 1000; seq++) {
        if (!replaced.has(seq)) missing.push(seq);
      }
      if (missing.length) safely(this.callbacks.onGap, missing, event, this.handle);
    }
    this.lastSeq = event.seq;
    this.status = event.status || this.status;
    this.retryMs = FIRST_BACKOFF_MS;
    if (event.seq > this.quietThrough) {
      safely(this.callbacks[CALLBACK[event.type]], event, this.handle);
      safely(this.callbacks.onEvent, event, this.handle);
    }
    if (FINAL.has(event.type)) this.end(() => this.resolve(event));
  }

  /** The watch ends without a final event. */
  fail(error) {
    if (this.finished) return;
    this.end(() => { safely(this.callbacks.onError, error, this.handle); this.reject(error); });
  }

  close() {
    this.end(() => this.reject(new LivepixError('closed', 'the watch was closed')));
  }

  end(settle) {
    if (this.finished) return;
    this.finished = true;
    this.detach();
    this.wiring.forget(this);
    settle();
  }

  /** Starts streaming. A `since` at or past a finished task's end re-reads only its
   * final event, so that `done` still settles and no callback repeats an event. */
  async start() {
    if (this.lastSeq > 0) {
      try {
        const state = await this.client.status(this.taskId, { token: this.token });
        if (TERMINAL_STATUSES.has(state.status) && this.lastSeq >= state.seq) {
          this.quietThrough = this.lastSeq;
          this.lastSeq = state.seq - 1;
        }
      } catch (err) {
        if (err instanceof LivepixError && FATAL_STREAM_CODES.has(err.code)) { this.fail(err); return; }
      }
    }
    if (!this.finished) this.wiring.route(this);
  }

  /** Moves this watch to `route`, picking up from its last seq. */
  attach(route) {
    if (this.finished || route === this.route) return;
    this.detach();
    this.route = route;
    if (route === 'mux') this.wiring.mux.add(this);
    else if (route === 'sse') this.openSse();
    else this.openTaskSocket();
  }

  detach() {
    clearTimeout(this.timer);
    if (this.route === 'mux') this.wiring.mux.remove(this);
    if (this.es) { this.es.close(); this.es = null; }
    if (this.socket) { const s = this.socket; this.socket = null; s.close(1000); }
    this.route = null;
  }

  streamQuery() {
    return { since: this.lastSeq, token: this.token || this.wiring.apiKey(), inline: this.wiring.inline ? '' : '0' };
  }

  openSse() {
    const es = new EventSource(this.wiring.url(`tasks/${encodeURIComponent(this.taskId)}/events`, this.streamQuery()));
    this.es = es;
    const onMessage = (e) => {
      if (this.es !== es) return;
      let event;
      try { event = JSON.parse(e.data); } catch { return; }
      this.deliver(event);
    };
    for (const type of EVENT_TYPES) es.addEventListener(type, onMessage);
    // While CONNECTING, the browser reconnects by itself, sending Last-Event-ID. CLOSED means
    // it gave up (a non-200 answer): find out why, then maybe start again from `since`.
    es.onerror = () => {
      if (this.es !== es || es.readyState !== EventSource.CLOSED) return;
      es.close();
      this.es = null;
      this.recover();
    };
  }

  openTaskSocket() {
    const url = this.wiring.url(`tasks/${encodeURIComponent(this.taskId)}/ws`, this.streamQuery(), true);
    const socket = new WebSocket(url);
    let opened = false;
    this.socket = socket;
    socket.onopen = () => { opened = true; };
    socket.onmessage = (e) => {
      let event;
      try { event = JSON.parse(e.data); } catch { return; }
      if (this.socket === socket && event && event.seq) this.deliver(event);
    };
    socket.onclose = (e) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (e.code === 1008) this.fail(new LivepixError('unauthorized', 'the server refused the credentials'));
      else if (!opened) this.recover(); // refused (404, 401...) or unreachable
      else this.retry(e.code === 1013 ? OVERLOADED_BACKOFF_MS : 0);
    };
  }

  /** After a refused stream: end the watch if the task is gone or forbidden, else retry. */
  async recover() {
    const route = this.route;
    let state = null;
    try {
      state = await this.client.status(this.taskId, { token: this.token });
    } catch (err) {
      if (err instanceof LivepixError && FATAL_STREAM_CODES.has(err.code)) { this.fail(err); return; }
    }
    if (state && this.lastSeq > state.seq) {
      this.fail(new LivepixError('invalid_input', `since ${this.lastSeq} is past the task's last event (${state.seq})`));
    } else if (this.route === route) {
      this.retry(0);
    }
  }

  retry(minMs) {
    const route = this.route;
    const delay = Math.max(minMs, this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, this.wiring.maxBackoffMs);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      if (this.finished || this.route !== route) return;
      this.route = null;
      this.attach(route);
    }, jitter(delay));
  }
}

/** The one multiplexed WebSocket of a client, and the tasks it carries. @internal */
class Mux {
  constructor(wiring) {
    this.wiring = wiring;
    this.socket = null;
    this.open = false; // the socket is open
    this.wanted = false; // keep a socket open (a watch or `connect()` asked for one)
    this.stopped = false; // unauthorized or closed: no reconnect until asked again
    this.fallback = false;
    this.probing = false;
    this.failedOpens = 0;
    this.backoffMs = FIRST_BACKOFF_MS;
    this.timer = 0;
    this.pinger = 0;
    this.heard = true;
    this.frameLimit = FRAME_LIMIT;
    this.requests = 0;
    /** @type {Map<string, Set<Feed>>} */ this.feeds = new Map();
    /** @type {Map<string, number>} the last seq this socket sent per task */ this.sent = new Map();
    /** @type {Map<string, {task: Task, key: string, resolve: (answer: Submitted) => void,
      reject: (error: LivepixError) => void}>} WebSocket submits waiting for their answer */ this.pending = new Map();
    /** @type {Map<string, {events: object[], timer: number}>} */ this.unclaimed = new Map();
    this.onOnline = () => { if (this.timer && !this.open) this.reconnectNow(); };
  }

  ensure() {
    this.wanted = true;
    this.stopped = false; // after `unauthorized`, a new watch tries again
    if (!this.socket && !this.timer) this.connect();
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = 0;
    if (!this.fallback) this.wiring.setState({ state: 'connecting' });
    const key = this.wiring.apiKey();
    const socket = new WebSocket(this.wiring.url('ws', { token: key, inline: this.wiring.inline ? '' : '0' }, true));
    let opened = false;
    this.socket = socket;
    socket.onopen = () => {
      if (this.socket !== socket) return;
      opened = true;
      this.open = true;
      this.failedOpens = 0;
      this.backoffMs = FIRST_BACKOFF_MS;
      this.heard = true;
      this.pinger = setInterval(() => this.ping(socket), PING_INTERVAL_MS);
      this.wiring.setState({ state: 'live' });
      for (const [taskId, feeds] of this.feeds) this.subscribe(taskId, minSeq(feeds));
      if (this.fallback) { this.fallback = false; this.wiring.reroute(); } // back from EventSource
    };
    socket.onmessage = (e) => {
      if (this.socket !== socket) return;
      this.heard = true;
      let message;
      try { message = JSON.parse(e.data); } catch { return; }
      if (message && message.op) this.onReply(message);
      else if (message && message.task_id && message.seq) this.onEvent(message);
    };
    socket.onclose = (e) => { if (this.socket === socket) this.lost(e.code, opened); };
    addEventListener('online', this.onOnline);
  }

  /** The socket is gone (closed by the server, the network, or our ping check). */
  lost(code, opened) {
    const socket = this.socket;
    this.socket = null;
    this.open = false;
    clearInterval(this.pinger);
    this.sent.clear();
    for (const held of this.unclaimed.values()) clearTimeout(held.timer);
    this.unclaimed.clear(); // a new socket is not subscribed to them: a watch subscribes
    if (socket && socket.readyState !== WebSocket.CLOSED) socket.close(1000);
    if (code === 1009) this.frameLimit = Math.min(this.frameLimit, 32 * 1024);
    for (const [requestId, submit] of this.pending) { // nothing answered: submit again, same key
      this.pending.delete(requestId);
      this.wiring.submitHttp(submit.task, submit.key).then(submit.resolve, submit.reject);
    }
    if (code === 1008) { this.unauthorized(); return; }
    if (!this.wanted || this.stopped) return;
    if (!opened && ++this.failedOpens >= 2) this.probe();
    const delay = code === 1013 ? Math.max(this.backoffMs, OVERLOADED_BACKOFF_MS) : this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, this.wiring.maxBackoffMs);
    if (!this.fallback) this.wiring.setState({ state: 'reconnecting', code, retryInMs: delay });
    this.timer = setTimeout(() => this.connect(), jitter(delay));
  }

  /** A WebSocket that cannot open says nothing of why: ask over HTTP. */
  async probe() {
    if (this.probing || this.fallback) return;
    this.probing = true;
    try {
      await this.wiring.client.queues();
      if (!this.open && this.wiring.transport === 'auto') { // HTTP works, WebSockets do not
        this.fallback = true;
        this.wiring.setState({ state: 'fallback' });
        this.wiring.reroute();
      }
    } catch (err) {
      if (err instanceof LivepixError && err.code === 'unauthorized' && !this.open) this.unauthorized();
      // otherwise the server is down: keep trying the WebSocket
    } finally {
      this.probing = false;
    }
  }

  unauthorized() {
    this.stop();
    this.wiring.setState({ state: 'unauthorized' });
    const error = new LivepixError('unauthorized', 'the server refused the API key');
    for (const feeds of [...this.feeds.values()]) for (const feed of [...feeds]) feed.fail(error);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = 0;
    removeEventListener('online', this.onOnline);
    if (this.socket) this.lost(1000, this.open);
  }

  /** Reconnects at once (a new API key): the socket's credentials are in its URL. */
  reconnectNow() {
    const wanted = this.wanted;
    this.stop();
    this.stopped = false;
    this.fallback = false;
    this.failedOpens = 0;
    this.backoffMs = FIRST_BACKOFF_MS;
    if (wanted) this.ensure();
  }

  ping(socket) {
    if (this.socket !== socket) return;
    if (!this.heard) { this.lost(1006, true); return; } // nothing, not even a pong: dead
    this.heard = false;
    this.send({ op: 'ping' });
  }

  send(message) {
    if (this.open) this.socket.send(JSON.stringify(message));
    return this.open;
  }

  add(feed) {
    let feeds = this.feeds.get(feed.taskId);
    if (!feeds) this.feeds.set(feed.taskId, (feeds = new Set()));
    feeds.add(feed);
    const held = this.unclaimed.get(feed.taskId);
    if (held) { // a task submitted over this socket, which is subscribed to it already
      this.unclaimed.delete(feed.taskId);
      clearTimeout(held.timer);
      // its events so far, after `watch()` has returned, before any later one
      queueMicrotask(() => held.events.forEach((event) => feed.deliver(event)));
    } else if (this.open) {
      this.subscribe(feed.taskId, feed.lastSeq);
    }
    this.ensure();
  }

  remove(feed) {
    const feeds = this.feeds.get(feed.taskId);
    if (!feeds || !feeds.delete(feed) || feeds.size) return;
    this.feeds.delete(feed.taskId);
    // After the final event the server has let go. Otherwise, unsubscribe: the server then
    // forgets what it sent, and a later watch's `since` counts again.
    if (!TERMINAL_STATUSES.has(feed.status) && this.send({ op: 'unsubscribe', task_id: feed.taskId })) {
      this.sent.delete(feed.taskId);
    }
  }

  /** The server never sends one socket an event twice; to re-read events it sent already
   * (a second watch from an earlier seq), unsubscribe first. */
  subscribe(taskId, since) {
    if ((this.sent.get(taskId) || 0) > since) {
      this.send({ op: 'unsubscribe', task_id: taskId });
      this.sent.delete(taskId);
    }
    this.send({ op: 'subscribe', task_id: taskId, since });
  }

  onEvent(event) {
    const taskId = event.task_id;
    this.sent.set(taskId, Math.max(this.sent.get(taskId) || 0, event.seq));
    const feeds = this.feeds.get(taskId);
    if (feeds) { [...feeds].forEach((feed) => feed.deliver(event)); return; }
    const held = this.unclaimed.get(taskId);
    if (!held) return;
    held.events.push(event);
    if (held.events.length > UNCLAIMED_MAX || FINAL.has(event.type)) this.unclaim(taskId, !FINAL.has(event.type));
  }

  /** Keeps the events of a task submitted over this socket until it is watched. */
  hold(taskId) {
    if (this.feeds.has(taskId) || this.unclaimed.has(taskId)) return;
    const timer = setTimeout(() => this.unclaim(taskId, true), UNCLAIMED_MS);
    this.unclaimed.set(taskId, { events: [], timer });
  }

  unclaim(taskId, unsubscribe) {
    const held = this.unclaimed.get(taskId);
    if (!held) return;
    clearTimeout(held.timer);
    if (!unsubscribe) { held.timer = setTimeout(() => this.unclaimed.delete(taskId), UNCLAIMED_MS); return; }
    this.unclaimed.delete(taskId);
    if (this.send({ op: 'unsubscribe', task_id: taskId })) this.sent.delete(taskId); // a watch re-reads
  }

  onReply(message) {
    const submit = message.request_id != null ? this.pending.get(message.request_id) : undefined;
    if (submit && (message.op === 'submitted' || message.op === 'error')) {
      this.pending.delete(message.request_id);
      if (message.op === 'error') {
        submit.reject(new LivepixError(message.code, message.error || message.code, { details: message.details }));
        return;
      }
      const answer = { ...message };
      delete answer.op;
      delete answer.request_id;
      this.hold(answer.task_id);
      submit.resolve(answer);
    } else if (message.op === 'error' && message.task_id && this.feeds.has(message.task_id)) {
      const taskId = message.task_id;
      if (message.code === 'unavailable') { // storage hiccup: subscribe again shortly
        setTimeout(() => { const feeds = this.feeds.get(taskId); if (feeds) this.subscribe(taskId, minSeq(feeds)); }, 2000);
        return;
      }
      const error = new LivepixError(message.code, message.error || message.code, { details: message.details });
      [...this.feeds.get(taskId)].forEach((feed) => feed.fail(error));
    }
  }

  /** Submits over the socket, if it is open and the task fits in a frame; else null. */
  submit(task, key) {
    if (!this.open) return null;
    const requestId = `r${++this.requests}`;
    const text = JSON.stringify({ op: 'submit', request_id: requestId, idempotency_key: key, task });
    if (!fits(text, this.frameLimit)) return null;
    return new Promise((resolve, reject) => {
      this.pending.set(requestId, { task, key, resolve, reject });
      this.socket.send(text);
    });
  }

  close() {
    this.wanted = false;
    const closed = new LivepixError('closed', 'the client was closed');
    for (const submit of this.pending.values()) submit.reject(closed);
    this.pending.clear();
    this.stop();
  }
}

function minSeq(feeds) {
  return Math.min(...[...feeds].map((feed) => feed.lastSeq));
}

/** A livepix client: submit tasks, watch their events, fetch status and results. */
export class LivepixClient {
  #base;
  #apiKey;
  #transport;
  #onConnection;
  /** @type {ConnectionState} */ #connection = { state: 'idle' };
  #tokens = new Map(); // task id -> stream token
  #feeds = new Set();
  #closed = false;
  #wiring;
  #mux;

  /** @param {ClientOptions} [options] */
  constructor({ baseUrl, apiKey = '', transport = 'auto', inline = true, maxBackoffMs = 10000, onConnection } = {}) {
    if (!['auto', 'ws', 'sse'].includes(transport)) throw new TypeError(`transport must be auto, ws or sse, not ${transport}`);
    const base = new URL(baseUrl ?? new URL('..', import.meta.url).href, globalThis.location?.href);
    if (!base.pathname.endsWith('/')) base.pathname += '/';
    this.#base = new URL('api/v1/', base);
    this.#apiKey = apiKey || '';
    this.#transport = transport;
    this.#onConnection = onConnection;
    const client = this;
    // What the internal parts (the socket, the watches) need of the client.
    this.#wiring = {
      client,
      inline: inline !== false,
      maxBackoffMs,
      transport,
      apiKey: () => this.#apiKey,
      url: (path, query, ws) => this.#url(path, query, ws),
      setState: (state) => this.#setState(state),
      submitHttp: (task, key) => this.#submitHttp(task, key),
      route: (feed) => feed.attach(this.#routeOf(feed)),
      reroute: () => this.#feeds.forEach((feed) => feed.attach(this.#routeOf(feed))),
      forget: (feed) => this.#feeds.delete(feed),
      get mux() { return client.#mux; },
    };
    this.#mux = new Mux(this.#wiring);
  }

  /** The API's base URL, e.g. `http://127.0.0.1:8000/api/v1/`. */
  get apiUrl() { return this.#base.href; }

  /** @type {ConnectionState} */
  get connection() { return { ...this.#connection }; }

  /** Opens the shared WebSocket now rather than at the first watch (for a live indicator). */
  connect() {
    if (this.#transport !== 'sse' && !this.#closed) this.#mux.ensure();
  }

  /** Uses another API key (or none) from now on: the WebSocket reconnects with it. */
  setApiKey(key) {
    this.#apiKey = key || '';
    this.#mux.reconnectNow();
    this.#wiring.reroute();
  }

  /**
   * Submits a task. Over the WebSocket when it is open and the task fits in a frame, else
   * over HTTP, retried on network errors and 503 with the same `Idempotency-Key`, so that
   * a retry never makes a second task.
   * @param {Task} task
   * @param {{idempotencyKey?: string}} [options]
   * @returns {Promise<Submitted>} rejects with a LivepixError (`invalid_input` and its
   *   `details`, `unauthorized`, `too_many_tasks` with `retryAfterS`, `network_error`...)
   */
  async submit(task, { idempotencyKey = newKey() } = {}) {
    this.#check();
    const answer = await (this.#mux.submit(task, idempotencyKey) ?? this.#submitHttp(task, idempotencyKey));
    if (answer.stream_token) this.#tokens.set(answer.task_id, answer.stream_token);
    return answer;
  }

  /**
   * Watches a task's events from `since` on, resuming by seq across reconnects.
   * @param {string} taskId
   * @param {WatchOptions & WatchCallbacks} [options]
   * @returns {TaskWatch}
   */
  watch(taskId, options = {}) {
    this.#check();
    const feed = new Feed(this, this.#wiring, taskId, { ...options, token: options.token || this.#tokens.get(taskId) });
    if (feed.token) this.#tokens.set(taskId, feed.token);
    this.#feeds.add(feed);
    feed.start();
    return feed.handle;
  }

  /**
   * Submits a task and watches it to its end.
   * @param {Task} task
   * @param {WatchCallbacks & {onSubmitted?: (answer: Submitted) => void}} [callbacks]
   * @param {{idempotencyKey?: string}} [options]
   * @returns {Promise<FinalEvent>} the `succeeded`, `failed` or `cancelled` event
   */
  async run(task, callbacks = {}, options = {}) {
    const answer = await this.submit(task, options);
    const watch = this.watch(answer.task_id, callbacks);
    safely(callbacks.onSubmitted, answer);
    return watch.done;
  }

  /** GET status: `{task_id, status, progress, message, result_available, seq, position?, eta_s?}`.
   * @param {string} taskId @param {{token?: string}} [options] */
  status(taskId, { token } = {}) {
    return this.#request('GET', `tasks/${encodeURIComponent(taskId)}/status/`, { token: token || this.#tokens.get(taskId) });
  }

  /** GET result: `{task_id, status, result?: TaskResult, error?: TaskFailure}`; a task not
   * finished yet rejects with `not_ready`.
   * @param {string} taskId @param {{token?: string}} [options] */
  result(taskId, { token } = {}) {
    return this.#request('GET', `tasks/${encodeURIComponent(taskId)}/result/`, { token: token || this.#tokens.get(taskId) });
  }

  /** The URL of the result as a PNG, for an `<img src>` (with `?token=` when needed). */
  resultPngUrl(taskId) {
    const token = this.#tokens.get(taskId) || this.#apiKey;
    return this.#url(`tasks/${encodeURIComponent(taskId)}/result.png`, { token });
  }

  /** POST cancel: `{task_id, status, cancelled}`. Needs the API key (stream tokens are
   * read-only). A queued task is cancelled at once, a running one at its next step. */
  cancel(taskId) {
    return this.#request('POST', `tasks/${encodeURIComponent(taskId)}/cancel/`, { token: this.#tokens.get(taskId) });
  }

  /** GET queues: `{queues: {name: {pending, running}}, workers, ...}`. */
  queues() {
    return this.#request('GET', 'queues');
  }

  /** Closes the WebSocket and ends every watch (their `done` rejects with `closed`). */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    [...this.#feeds].forEach((feed) => feed.close());
    this.#mux.close();
    this.#setState({ state: 'closed' });
  }

  #check() {
    if (this.#closed) throw new LivepixError('closed', 'the client was closed');
  }

  #routeOf(feed) {
    if (this.#transport === 'sse') return 'sse';
    if (feed.token && !this.#apiKey) return this.#transport === 'ws' ? 'task-ws' : 'sse';
    return this.#mux.fallback && this.#transport === 'auto' ? 'sse' : 'mux';
  }

  #setState(state) {
    if (this.#closed && state.state !== 'closed') return;
    this.#connection = state;
    safely(this.#onConnection, { ...state });
  }

  #url(path, query = {}, ws = false) {
    const url = new URL(path, this.#base);
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined && value !== null && value !== '') url.searchParams.set(name, String(value));
    }
    if (ws) url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    return url.href;
  }

  /**
   * @param {string} method @param {string} path
   * @param {{body?: string, token?: string, headers?: Record<string, string>}} [options]
   */
  async #request(method, path, { body, token, headers = {} } = {}) {
    /** @type {Record<string, string>} */
    const sent = { ...headers };
    const query = {};
    if (this.#apiKey) sent.Authorization = `Bearer ${this.#apiKey}`;
    else if (token) query.token = token;
    if (body !== undefined) sent['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(this.#url(path, query), { method, headers: sent, body });
    } catch (err) {
      throw new LivepixError('network_error', `could not reach livepix at ${this.#base.origin}`, { cause: err });
    }
    let data = null;
    try { data = await response.json(); } catch { /* not JSON: said below */ }
    if (!response.ok) throw errorFrom(response, data);
    if (!data || typeof data !== 'object') throw errorFrom(response, null);
    return data;
  }

  async #submitHttp(task, key) {
    const body = JSON.stringify(task);
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#request('POST', 'tasks/submit/', { body, headers: { 'Idempotency-Key': key } });
      } catch (err) {
        const again = err.code === 'network_error' || err.status === 503;
        if (!again || attempt >= SUBMIT_ATTEMPTS || this.#closed) throw err;
        await sleep(Math.min(err.retryAfterS ? err.retryAfterS * 1000 : FIRST_BACKOFF_MS * 2 ** (attempt - 1), 10000));
      }
    }
  }
}
