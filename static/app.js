// livepix browser UI: submit tasks and watch their live progress. Plain ES module, no build.
//
// All talk with the server goes through livepix.js, the public browser client: one
// multiplexed WebSocket per page, re-opened with backoff and resuming every task from its
// last seq, an EventSource per task when WebSockets do not get through, submits over the
// socket or (big images) over HTTP. This file is the page: the form, the task cards, and
// the task list kept in localStorage so that a reload picks up where it left off.

import { LivepixClient } from './livepix.js';

const TERMINAL = new Set(['SUCCESS', 'FAILURE', 'REVOKED']);
const TTL_MS = 60 * 60 * 1000; // the server keeps events and results for 1 hour
const STORE = 'livepix.tasks';
const KEY_STORE = 'livepix.apiKey';

const TYPE_LABELS = {
  image_generation: 'Image generation', face_swap: 'Face swap', style_transfer: 'Style transfer',
  background_removal: 'Background removal', object_removal: 'Object removal',
};
const STATUS_LABELS = {
  UNKNOWN: 'Loading…', PENDING: 'Queued', PROCESSING: 'Running',
  SUCCESS: 'Done', FAILURE: 'Failed', REVOKED: 'Cancelled',
};
const ERROR_HINTS = { // failed events' error codes in plain words
  model_unavailable: 'The model for this task is not available on this server.',
  engine_unavailable: 'This server cannot run this kind of task.',
  no_face_detected: 'No face was found in the image.', out_of_memory: 'The server ran out of memory.',
  timeout: 'The task took too long.', worker_lost: 'The worker running the task stopped.',
  invalid_image: 'The image could not be used.',
};
const FIELD_LABELS = {
  image: 'Image', target_image: 'Target picture', mask: 'Mask', prompt: 'Prompt',
  'parameters.style': 'Style', task_type: 'Task type', non_field_errors: '',
};
const CONNECTION = { // the client's connection states, as the header shows them
  idle: ['connecting', () => 'Connecting…'],
  connecting: ['connecting', () => 'Connecting…'],
  live: ['live', () => 'Live'],
  reconnecting: ['down', (s) => `Reconnecting in ${Math.round(s.retryInMs / 1000)} s…`],
  fallback: ['fallback', () => 'WebSocket unavailable: using HTTP streams'],
  unauthorized: ['down', () => 'Unauthorized: check the API key'],
  closed: ['down', () => 'Closed'],
};

const $ = (sel, root = document) => root.querySelector(sel);
const make = (tag, textContent = '') => Object.assign(document.createElement(tag), { textContent });
const form = $('#task-form');
const list = $('#task-list');
const tasks = new Map(); // task id -> task (newest card first in the list)

const apiKey = () => localStorage.getItem(KEY_STORE) || '';

function setConn(state) {
  const [look, text] = CONNECTION[state.state] || CONNECTION.connecting;
  Object.assign($('#conn'), { textContent: text(state) }).dataset.state = look;
}

const client = new LivepixClient({ apiKey: apiKey(), onConnection: setConn });

// --- Task list and local storage --------------------------------------------------------

const forgotten = new Set();

function stored() {
  try { return JSON.parse(localStorage.getItem(STORE) || '[]').filter((t) => t && t.id); } catch { return []; }
}

// Merges with what is stored, so that tasks another tab submitted are kept.
function save() {
  const byId = new Map(stored().map((t) => [t.id, t]));
  for (const { id, type, created, lastSeq, token } of tasks.values()) byId.set(id, { id, type, created, lastSeq, token });
  forgotten.forEach((id) => byId.delete(id));
  const kept = [...byId.values()].filter((t) => Date.now() - t.created < TTL_MS);
  localStorage.setItem(STORE, JSON.stringify(kept));
}

let saveTimer = 0;
function saveSoon() {
  if (!saveTimer) saveTimer = setTimeout(() => { saveTimer = 0; save(); }, 1000);
}

function restore() {
  const now = Date.now();
  stored().filter((t) => now - t.created < TTL_MS)
    .sort((a, b) => a.created - b.created)
    // lastSeq starts at 0: the card is rebuilt from the task's history, final result included.
    .forEach((t) => follow(addTask(t.id, t.type, t.created, 'UNKNOWN', t.token)));
  save();
}

function addTask(id, type, created = Date.now(), status = 'PENDING', token = undefined) {
  if (tasks.has(id)) return tasks.get(id);
  const el = $('#card-tpl').content.firstElementChild.cloneNode(true);
  const t = { id, type, created, status, token, lastSeq: 0, progress: 0, message: '', el, watch: null };
  tasks.set(id, t);
  list.prepend(el);
  $('.type', el).textContent = TYPE_LABELS[type] || type;
  Object.assign($('.id', el), { textContent: id.slice(0, 8), title: id });
  Object.assign($('.time', el), {
    dateTime: new Date(created).toISOString(),
    textContent: new Date(created).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }),
  });
  $('.cancel', el).addEventListener('click', () => cancelTask(t));
  $('.remove', el).addEventListener('click', () => forget(t));
  render(t);
  save();
  return t;
}

// Watches the task from the start: the card is built from its whole history.
function follow(t) {
  if (t.watch || TERMINAL.has(t.status)) return;
  t.watch = client.watch(t.id, {
    token: t.token,
    onEvent,
    onError: (error) => { t.watch = null; taskError(t, error); },
  });
}

function forget(t) {
  if (!tasks.has(t.id)) return;
  if (t.watch) t.watch.close();
  tasks.delete(t.id);
  forgotten.add(t.id);
  t.el.remove();
  $('#empty').hidden = tasks.size > 0;
  save();
}

function setSrc(img, url) {
  if (img.getAttribute('src') !== url) img.src = url;
  img.hidden = !url;
}
function render(t) {
  const el = t.el;
  const done = TERMINAL.has(t.status);
  el.dataset.status = t.status;
  $('.status', el).textContent = STATUS_LABELS[t.status] || t.status;
  let pos = '';
  if (t.status === 'PENDING' && t.position != null) {
    pos = `position ${t.position}` + (t.eta != null ? ` · about ${Math.max(1, Math.round(t.eta))} s` : '');
  }
  Object.assign($('.position', el), { textContent: pos, hidden: !pos });
  const bar = $('progress', el);
  bar.value = t.progress || 0;
  bar.hidden = done || t.status === 'UNKNOWN';
  const steps = t.total && !done && !String(t.message).includes(`${t.step}/${t.total}`) ? ` (${t.step}/${t.total})` : '';
  const message = t.status === 'FAILURE' && t.error ? '' : (t.message || '') + steps; // the error says it
  Object.assign($('.message', el), { textContent: message, hidden: !message });
  setSrc($('.preview', el), done ? '' : t.preview || '');
  const figure = $('.result', el);
  const data = t.result && t.result.image_data;
  figure.hidden = !data;
  if (data) {
    const url = `data:image/png;base64,${data}`;
    setSrc($('img', figure), url);
    Object.assign($('.download', figure), { href: url, download: `livepix-${t.id.slice(0, 8)}.png` });
    $('.prompt-used', figure).textContent = t.result.prompt_used ? `Prompt: ${t.result.prompt_used}` : '';
    // A batch (num_outputs): every output after the first, each with its own download.
    const more = $('.more-outputs', figure);
    const extra = (t.result.images || []).slice(1);
    if (more.childElementCount !== extra.length) {
      more.replaceChildren(...extra.map((b64, i) => {
        const src = `data:image/png;base64,${b64}`;
        const link = make('a', `Download ${i + 2}`);
        Object.assign(link, { href: src, download: `livepix-${t.id.slice(0, 8)}-${i + 1}.png`, className: 'download' });
        const img = Object.assign(document.createElement('img'), { src, alt: `Result ${i + 2}` });
        const cell = make('div');
        cell.append(img, link);
        return cell;
      }));
    }
  }
  const error = $('.error', el);
  error.hidden = !t.error && !t.note;
  error.replaceChildren();
  if (t.error) {
    const hint = ERROR_HINTS[t.error.code];
    if (hint) error.append(make('strong', hint), ' ');
    error.append(`${t.error.message || 'The task failed.'} `, make('code', t.error.code || ''));
  } else if (t.note) {
    error.textContent = t.note;
  }
  $('.cancel', el).hidden = !(t.status === 'PENDING' || t.status === 'PROCESSING');
  $('.remove', el).hidden = !done;
  $('#empty').hidden = tasks.size > 0;
}

// One event of a task, from its watch: delivered once each, in order.
function onEvent(ev) {
  const t = tasks.get(ev.task_id);
  if (!t) return;
  t.lastSeq = ev.seq;
  if (ev.status) t.status = ev.status;
  if (typeof ev.progress === 'number') t.progress = ev.progress;
  if (ev.message != null) t.message = ev.message;
  switch (ev.type) {
    case 'queued': t.position = ev.position; t.eta = ev.eta_s; t.message = ''; break; // the position says it
    case 'started': t.position = null; t.eta = null; break;
    case 'progress':
      t.step = ev.step; t.total = ev.total;
      if (ev.preview) t.preview = `data:image/jpeg;base64,${ev.preview}`;
      break;
    case 'succeeded': t.result = ev.result; break;
    case 'failed': t.error = ev.error || { code: 'engine_error', message: ev.message }; break;
    default: break;
  }
  if (TERMINAL.has(t.status)) { t.preview = null; t.note = ''; t.watch = null; } // the watch ended
  render(t);
  saveSoon();
}

function cancelAnswered(t, { cancelled, status }) {
  if (TERMINAL.has(t.status)) return;
  t.note = cancelled ? 'Cancelling: waiting for the worker to stop…' : `Could not cancel: the task is ${status}.`;
  render(t);
}

// A watch or a call about the task ended with an error (a LivepixError).
function taskError(t, error) {
  if (error.code === 'not_found') { forget(t); return; } // expired, or not ours
  if (error.code === 'unauthorized') t.note = 'Unauthorized: check the API key.'; // watched again when it changes
  else if (error.code === 'network_error') t.note = 'Could not reach the server.';
  else t.note = `${error.message || 'Error'} (${error.code})`;
  render(t);
}

async function cancelTask(t) {
  try {
    cancelAnswered(t, await client.cancel(t.id));
  } catch (error) {
    taskError(t, error);
  }
}

// --- The form ------------------------------------------------------------------------------

const images = { image: null, target_image: null }; // {url, type} of the chosen files

function currentType() { return form.elements.task_type.value; }

function showType() {
  const type = currentType();
  form.dataset.type = type;
  for (const group of form.querySelectorAll('.group')) {
    group.hidden = group.disabled = !group.dataset.for.split(' ').includes(type);
  }
  $('#prompt-label').textContent = type === 'image_generation' ? 'Prompt' : 'Prompt (optional, with or instead of a preset)';
  $('#image-label').textContent = type === 'face_swap' ? 'Face to use (source picture)' : 'Image';
  clearErrors();
}

function setupDropZone(zone) {
  const slot = zone.dataset.slot;
  const input = $('input', zone);
  const take = (file) => {
    if (!file) return;
    if (!['image/png', 'image/jpeg', 'image/webp'].includes(file.type)) {
      showErrors({ details: { [slot]: ['Use a PNG, JPEG or WebP image'] } });
      return;
    }
    const reader = new FileReader();
    reader.onload = () => {
      images[slot] = { url: reader.result, type: file.type };
      setSrc($('img', zone), reader.result);
      $('.drop-text', zone).textContent = `${file.name}: drop or choose another to replace`;
      if (slot === 'image') loadMaskImage(reader.result);
      clearErrors();
    };
    reader.readAsDataURL(file);
  };
  input.addEventListener('change', () => take(input.files[0]));
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => { e.preventDefault(); zone.classList.remove('over'); take(e.dataTransfer.files[0]); });
}

// The mask editor: strokes are drawn (shown in red) on a canvas at the image's natural
// resolution; `maskDataUrl` turns them into the white-on-black PNG the API expects.
const canvas = $('#mask-canvas');
const ctx = canvas.getContext('2d');
const maskImage = $('#mask-image');
let painted = false;
let lastPoint = null;

function loadMaskImage(url) {
  maskImage.onload = () => {
    Object.assign(canvas, { width: maskImage.naturalWidth, height: maskImage.naturalHeight });
    clearMask();
    $('#mask-editor').hidden = false;
    $('#mask-hint').textContent = 'Paint over the object to remove. Drag to paint; use Clear to start over.';
  };
  maskImage.src = url;
}

function clearMask() { ctx.clearRect(0, 0, canvas.width, canvas.height); painted = false; }

function pointOf(e) {
  const box = canvas.getBoundingClientRect();
  return [(e.clientX - box.left) * canvas.width / box.width, (e.clientY - box.top) * canvas.height / box.height];
}

function paint(from, to) {
  const scale = canvas.width / canvas.getBoundingClientRect().width; // brush size is in screen px
  const size = Number($('#brush').value) * scale;
  ctx.strokeStyle = ctx.fillStyle = '#ff2d2d';
  ctx.lineWidth = size;
  ctx.lineCap = ctx.lineJoin = 'round';
  ctx.beginPath();
  if (from) { ctx.moveTo(...from); ctx.lineTo(...to); ctx.stroke(); } else { ctx.arc(...to, size / 2, 0, 2 * Math.PI); ctx.fill(); }
  painted = true;
}

canvas.addEventListener('pointerdown', (e) => {
  if (e.button !== 0) return;
  canvas.setPointerCapture(e.pointerId);
  lastPoint = pointOf(e);
  paint(null, lastPoint);
});
canvas.addEventListener('pointermove', (e) => {
  if (lastPoint) { const from = lastPoint; paint(from, (lastPoint = pointOf(e))); }
});
for (const name of ['pointerup', 'pointercancel']) canvas.addEventListener(name, () => { lastPoint = null; });
$('#mask-clear').addEventListener('click', clearMask);

function copyOf(source) {
  const out = Object.assign(document.createElement('canvas'), { width: canvas.width, height: canvas.height });
  out.getContext('2d').drawImage(source, 0, 0);
  return out;
}

function maskDataUrl() {
  const out = copyOf(canvas);
  const c = out.getContext('2d');
  const fill = (operation, color) => {
    Object.assign(c, { globalCompositeOperation: operation, fillStyle: color });
    c.fillRect(0, 0, out.width, out.height);
  };
  fill('source-in', '#fff'); // painted pixels become white...
  fill('destination-over', '#000'); // ...on black
  return out.toDataURL('image/png');
}

// A JPEG may carry an EXIF rotation that the browser applies and the server does not: the
// mask would not match the image. For object removal, send the image as the browser shows it.
function imageAsShown() {
  return images.image.type === 'image/jpeg' ? copyOf(maskImage).toDataURL('image/jpeg', 0.95) : images.image.url;
}

function buildTask() {
  const f = form.elements;
  const type = currentType();
  const num = (name) => (f[name].value === '' ? undefined : Number(f[name].value));
  const text = (name) => f[name].value.trim() || undefined;
  const task = { task_type: type };
  let p = {};
  if (type === 'image_generation' || type === 'style_transfer') {
    task.prompt = text('prompt');
    p = { steps: num('steps'), guidance_scale: num('guidance_scale'), seed: num('seed'),
          num_outputs: num('num_outputs') };
  }
  if (type !== 'image_generation' && type !== 'object_removal') task.image = images.image?.url;
  if (type === 'image_generation') {
    Object.assign(p, { width: num('width'), height: num('height'), negative_prompt: text('negative_prompt') });
  } else if (type === 'style_transfer') {
    Object.assign(p, { style: f.style.value || undefined, strength: num('strength') });
  } else if (type === 'face_swap') {
    task.target_image = images.target_image?.url;
    p = { source_face_index: num('source_face_index'), target_face_index: num('target_face_index') };
  } else if (type === 'background_removal') {
    p = { only_mask: f.only_mask.checked, alpha_matting: f.alpha_matting.checked };
    if (f.use_bgcolor.checked) p.bgcolor = f.bgcolor.value;
  } else if (type === 'object_removal') {
    if (images.image) task.image = imageAsShown();
    if (images.image && painted) task.mask = maskDataUrl(); // no mask: the server says one is needed
    p = { method: f.method.value, dilate_px: num('dilate_px') };
  }
  task.parameters = p; // undefined values vanish in JSON: the server applies its defaults
  return task;
}

function clearErrors() {
  $('#form-errors').hidden = true;
  $('#form-errors').replaceChildren();
  form.querySelectorAll('[aria-invalid]').forEach((el) => el.removeAttribute('aria-invalid'));
}

function fieldLabel(field) {
  if (field in FIELD_LABELS) return FIELD_LABELS[field];
  const name = field.replace(/^parameters\./, '');
  const input = form.elements[name];
  const label = input && input.labels && input.labels[0];
  if (label) return [...label.childNodes].filter((n) => n.nodeType === Node.TEXT_NODE).map((n) => n.textContent).join('').trim();
  return name.replace(/_/g, ' ').replace(/^./, (c) => c.toUpperCase());
}

// Shows an API error next to the form: `details` ({field: [messages]}) as one line per field.
function showErrors(body) {
  clearErrors();
  const box = $('#form-errors');
  const ul = make('ul');
  const line = (text) => ul.append(make('li', text));
  if (body.details && typeof body.details === 'object') {
    box.append(make('p', 'Please fix the following:'));
    for (const [field, messages] of Object.entries(body.details)) {
      const label = fieldLabel(field);
      line(`${label ? `${label}: ` : ''}${[].concat(messages).join('; ')}`);
      const input = form.elements[field.replace(/^parameters\./, '')];
      if (input && input.setAttribute) input.setAttribute('aria-invalid', 'true');
    }
  } else {
    line(`${body.error || 'Something went wrong.'}${body.code ? ` (${body.code})` : ''}`);
  }
  box.append(ul);
  box.hidden = false;
}

function submitBusy(busy) { Object.assign($('#submit'), { disabled: busy, textContent: busy ? 'Submitting…' : 'Submit' }); }


function submitted(answer, type) {
  const t = addTask(answer.task_id, type, Date.now(), 'PENDING', answer.stream_token);
  if (answer.position != null) { t.position = answer.position; render(t); }
  follow(t);
  clearErrors();
}

form.addEventListener('submit', async (e) => {
  e.preventDefault();
  clearErrors();
  const task = buildTask();
  submitBusy(true);
  try {
    submitted(await client.submit(task), task.task_type);
  } catch (error) {
    if (error.code === 'network_error') showErrors({ error: 'Could not reach the server. Check your connection and try again.' });
    else showErrors(error.toJSON ? error.toJSON() : { error: String(error) });
  }
  submitBusy(false);
});

form.elements.task_type.addEventListener('change', showType);
form.querySelectorAll('.drop').forEach(setupDropZone);
$('#strength').addEventListener('input', (e) => { $('#strength-out').value = Number(e.target.value).toFixed(2); });
$('#use_bgcolor').addEventListener('change', (e) => { form.elements.bgcolor.disabled = !e.target.checked; });
form.elements.bgcolor.disabled = true;

// --- API key and queue panel ------------------------------------------------------------------

const keyInput = $('#api-key');
keyInput.value = apiKey();
keyInput.addEventListener('change', () => {
  const key = keyInput.value.trim();
  if (key) localStorage.setItem(KEY_STORE, key); else localStorage.removeItem(KEY_STORE);
  client.setApiKey(key);
  for (const t of tasks.values()) { t.note = ''; render(t); follow(t); } // those refused before
  pollQueues();
});

let queuesTimer = 0, polling = false;
async function pollQueues() {
  if (polling) return;
  polling = true;
  clearTimeout(queuesTimer);
  const dl = $('#queues');
  if (!document.hidden) {
    try {
      const body = await client.queues();
      const rows = Object.entries(body.queues || {}).map(([name, q]) => [name, `${q.pending} pending · ${q.running} running`]);
      rows.push(['workers', String(body.workers ?? '?')]);
      dl.replaceChildren(...rows.flatMap(([k, v]) => [make('dt', k), make('dd', v)]));
    } catch (err) {
      dl.replaceChildren(make('dd', `Unavailable: ${err.message}`));
    }
  }
  polling = false;
  queuesTimer = setTimeout(pollQueues, 5000);
}

// Forget tasks after an hour: the server no longer has them.
setInterval(() => {
  for (const t of [...tasks.values()]) if (Date.now() - t.created >= TTL_MS) forget(t);
}, 60000);
window.addEventListener('pagehide', save);
// A file dropped next to a drop zone must not replace the page.
for (const name of ['dragover', 'drop']) window.addEventListener(name, (e) => e.preventDefault());

showType();
restore();
$('#empty').hidden = tasks.size > 0;
client.connect();
pollQueues();
