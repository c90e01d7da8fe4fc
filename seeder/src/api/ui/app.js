// otamesh console: the publisher's dashboard over the seeder's API.
//
// Plain JavaScript, no framework, no build step. Every text from the API goes into the page
// through textContent (never innerHTML), and the Content-Security-Policy allows no inline
// script. The token lives in sessionStorage (this tab only) and goes out as
// `Authorization: Bearer` on every request, the event stream included: EventSource cannot
// send headers, so /api/events is read with fetch() and parsed here.
'use strict';

const TOKEN_KEY = 'otamesh.token';
const PAGE = 50;
const HEAT_PAGE = 25;
const STATES = ['never-reported', 'idle', 'checking', 'downloading', 'verifying', 'staged', 'installing',
  'pending-reboot', 'trial', 'committed', 'rolled-back'];

const session = { token: sessionStorage.getItem(TOKEN_KEY), scope: null };
let renderSeq = 0;
let liveRefresh = null;
// Rollout id → the answer to the last action on it, as shown under its buttons.
const actionResults = new Map();

// ---------------------------------------------------------------- DOM helpers

// el('div', {class: 'x', 'data-a': 1}, child, 'text', ...): children are nodes or text.
function el(tag, attrs, ...children) {
  const svg = ['svg', 'rect', 'line', 'text', 'g', 'title'].includes(tag);
  const node = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'onclick' || k === 'onsubmit' || k === 'oninput' || k === 'onchange') node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function link(href, text) { return el('a', { href }, text); }
function num(n) { return n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US'); }
function pct(x) { return x === null || x === undefined ? '–' : `${Number(x).toFixed(1)} %`; }
function ago(unix) {
  if (!unix) return '–';
  const s = Math.max(0, Math.round(Date.now() / 1000 - unix));
  if (s < 120) return `${s}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  if (s < 172800) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}
function enc(s) { return encodeURIComponent(s); }

function table(headers, rows, attrs) {
  return el('table', attrs || {},
    el('thead', {}, el('tr', {}, headers.map((h) => el('th', {}, h)))),
    el('tbody', {}, rows));
}

function showError(message) {
  const box = document.getElementById('error');
  box.textContent = message;
  box.hidden = !message;
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  const opts = options || {};
  const response = await fetch(path, {
    method: opts.method || 'GET',
    headers: { Authorization: `Bearer ${session.token}`, Accept: 'application/json' },
    cache: 'no-store',
  });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const text = body && typeof body.error === 'string' ? body.error : response.statusText;
    if (response.status === 401) signOut(`The API refused the token: ${text}`);
    throw new ApiError(response.status, `${response.status}: ${text}`);
  }
  return body;
}

// ---------------------------------------------------------------- sign-in

function signOut(message) {
  session.token = null;
  session.scope = null;
  sessionStorage.removeItem(TOKEN_KEY);
  stopEvents();
  showLogin();
  showError(message || '');
}

function showLogin() {
  document.getElementById('login').hidden = false;
  document.getElementById('view').replaceChildren();
  document.getElementById('logout').hidden = true;
  document.getElementById('scope').textContent = '';
  document.getElementById('token').focus();
}

async function signIn(token) {
  session.token = token;
  try {
    const who = await api('/api/session');
    session.scope = who.scope;
  } catch (e) {
    if (session.token) signOut(e.message);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  document.getElementById('login').hidden = true;
  document.getElementById('logout').hidden = false;
  document.getElementById('scope').textContent = `${session.scope} token`;
  document.body.dataset.scope = session.scope;
  showError('');
  startEvents();
  route();
}

// ---------------------------------------------------------------- live events

const events = { controller: null, lastId: null, retryMs: 1000 };

function setLive(state) {
  const badge = document.getElementById('live');
  badge.textContent = state;
  badge.className = `badge ${state === 'live' ? 'on' : 'off'}`;
}

function stopEvents() {
  if (events.controller) events.controller.abort();
  events.controller = null;
  setLive('offline');
}

// Reads the SSE stream with fetch (so the token goes in a header, not the URL), reconnecting
// with a growing delay and Last-Event-ID so nothing is missed.
async function startEvents() {
  stopEvents();
  const controller = new AbortController();
  events.controller = controller;
  while (events.controller === controller && session.token) {
    try {
      const headers = { Authorization: `Bearer ${session.token}`, Accept: 'text/event-stream' };
      if (events.lastId) headers['Last-Event-ID'] = events.lastId;
      const response = await fetch('/api/events', { headers, signal: controller.signal, cache: 'no-store' });
      if (!response.ok || !response.body) throw new Error(`events: ${response.status}`);
      setLive('live');
      events.retryMs = 1000;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          handleEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
        if (buffer.length > 1 << 20) buffer = ''; // a runaway event: drop it
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    if (events.controller !== controller) return;
    setLive('reconnecting');
    await new Promise((resolve) => setTimeout(resolve, events.retryMs));
    events.retryMs = Math.min(events.retryMs * 2, 30000);
  }
}

function handleEvent(block) {
  let kind = 'message';
  let id = null;
  for (const line of block.split('\n')) {
    if (line.startsWith('event:')) kind = line.slice(6).trim();
    else if (line.startsWith('id:')) id = line.slice(3).trim();
  }
  if (id) events.lastId = id;
  if (kind !== 'status' && kind !== 'rollout') return; // keep-alive comments
  document.body.dataset.events = String(Number(document.body.dataset.events || 0) + 1);
  // Many reports arrive at once: one refresh a second at most.
  if (liveRefresh) return;
  liveRefresh = setTimeout(() => {
    liveRefresh = null;
    const view = currentView();
    if (view.live) render(view, true);
  }, 1000);
}

// ---------------------------------------------------------------- router

function currentView() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  if (parts.length === 0) return { name: 'overview', live: true, params, draw: drawOverview };
  if (parts[0] === 'rollouts' && parts.length === 1) return { name: 'rollouts', live: true, params, draw: drawRollouts };
  if (parts[0] === 'rollouts') return { name: 'rollouts', live: true, params, arg: parts[1], draw: drawRollout };
  if (parts[0] === 'devices' && parts.length === 1) return { name: 'devices', live: false, params, draw: drawDevices };
  if (parts[0] === 'devices') return { name: 'devices', live: true, params, arg: parts[1], draw: drawDevice };
  if (parts[0] === 'sites' && parts.length === 1) return { name: 'sites', live: false, params, draw: drawSites };
  if (parts[0] === 'sites') return { name: 'sites', live: true, params, arg: parts[1], draw: drawSite };
  return { name: 'none', live: false, params, draw: async () => el('p', {}, 'No such page. ', link('#/', 'Overview')) };
}

function route() {
  if (!session.token) { showLogin(); return; }
  render(currentView(), false);
}

// Draws a view off-screen, then swaps it in: a refresh does not flicker, and a slow answer
// for a view the user already left is dropped.
async function render(view, quiet) {
  const seq = ++renderSeq;
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('current', a.dataset.nav === view.name);
  const target = document.getElementById('view');
  if (!quiet) target.setAttribute('aria-busy', 'true');
  try {
    const node = await view.draw(view);
    if (seq !== renderSeq) return;
    target.replaceChildren(node);
    if (!quiet) showError('');
  } catch (e) {
    if (seq !== renderSeq) return;
    if (session.token) showError(e.message);
  } finally {
    if (seq === renderSeq) {
      target.removeAttribute('aria-busy');
      document.body.dataset.rendered = view.name;
      performance.mark(`rendered:${view.name}`);
    }
  }
}

// ---------------------------------------------------------------- charts (inline SVG)

// Horizontal bars: [{label, value, cls}], labels on the left, values on the right.
function barChart(items, attrs) {
  const width = 460;
  const row = 22;
  const labelW = 130;
  const max = Math.max(1, ...items.map((i) => i.value));
  const svg = el('svg', Object.assign({ viewBox: `0 0 ${width} ${items.length * row + 4}`, class: 'chart', role: 'img' }, attrs || {}));
  items.forEach((item, n) => {
    const y = n * row + 2;
    const w = Math.max(item.value > 0 ? 2 : 0, ((width - labelW - 70) * item.value) / max);
    svg.append(
      el('text', { x: labelW - 6, y: y + 15, 'text-anchor': 'end', class: 'label' }, item.label),
      el('rect', { x: labelW, y: y + 3, width: w, height: row - 8, class: `bar ${item.cls || ''}` },
        el('title', {}, `${item.label}: ${item.text || num(item.value)}`)),
      el('text', { x: labelW + w + 6, y: y + 15, class: 'value' }, item.text || num(item.value)),
    );
  });
  return svg;
}

// Failure rate per wave: a column per wave, the dashed line at `limit` percent if known.
function failureChart(waves) {
  const width = 460;
  const height = 160;
  const pad = 30;
  const rates = waves.map((w) => (w.failure_percent === null || w.failure_percent === undefined ? null : w.failure_percent));
  const top = Math.max(5, ...rates.filter((r) => r !== null).map((r) => Math.ceil(r)));
  const svg = el('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart', role: 'img', id: 'failure-chart' },
    el('title', {}, 'Failure rate per wave'));
  const colW = (width - pad * 2) / Math.max(1, waves.length);
  for (const frac of [0, 0.5, 1]) {
    const y = height - pad - frac * (height - pad * 2);
    svg.append(el('line', { x1: pad, x2: width - pad, y1: y, y2: y, class: 'grid' }),
      el('text', { x: pad - 4, y: y + 4, 'text-anchor': 'end', class: 'label' }, `${Math.round(top * frac)}%`));
  }
  waves.forEach((w, n) => {
    const x = pad + n * colW + colW * 0.2;
    const r = rates[n];
    const h = r === null ? 0 : ((height - pad * 2) * r) / top;
    svg.append(
      el('rect', { x, y: height - pad - h, width: colW * 0.6, height: h, class: `bar ${r !== null && r >= 5 ? 'bad' : 'ok'}` },
        el('title', {}, `wave ${w.index}: ${r === null ? 'no final results' : pct(r)}`)),
      el('text', { x: x + colW * 0.3, y: height - pad + 14, 'text-anchor': 'middle', class: 'label' }, `wave ${w.index}`),
      el('text', { x: x + colW * 0.3, y: height - pad - h - 4, 'text-anchor': 'middle', class: 'value' }, r === null ? '–' : pct(r)),
    );
  });
  return svg;
}

// Progress of one wave: committed, installing, failed, rolled back and not yet reported, as
// one stacked bar of the wave's targeted devices.
function progressBar(w) {
  const c = w;
  const total = Math.max(1, w.targeted, c.committed + c.installing + c.failed + c.rolled_back);
  const parts = [['committed', c.committed], ['installing', c.installing], ['failed', c.failed], ['rolled-back', c.rolled_back]];
  const svg = el('svg', { viewBox: '0 0 200 14', class: 'progress', preserveAspectRatio: 'none' });
  let x = 0;
  for (const [cls, n] of parts) {
    const width = (200 * n) / total;
    if (width > 0) svg.append(el('rect', { x, y: 0, width, height: 14, class: `seg ${cls}` }, el('title', {}, `${cls}: ${n}`)));
    x += width;
  }
  return svg;
}

function stateClass(state) {
  if (state === 'committed') return 'ok';
  if (state === 'rolled-back' || state === 'failed') return 'bad';
  if (state === 'never-reported') return 'muted';
  return 'busy';
}

// ---------------------------------------------------------------- views

function anomalyList(flags, empty) {
  if (!flags.length) return el('p', { class: 'muted', id: 'anomalies-none' }, empty);
  const shown = 12;
  const more = flags.length > shown ? el('li', { class: 'muted' }, `and ${flags.length - shown} more (/api/anomalies lists all)`) : null;
  return el('ul', { class: 'anomalies', id: 'anomalies' }, flags.slice(0, shown).map((a) => {
    const target = a.group_by === 'site' ? link(`#/sites/${enc(a.group)}`, a.group)
      : link(`#/devices?hw_class=${enc(a.group)}`, a.group);
    return el('li', { 'data-kind': a.kind, 'data-group': a.group },
      el('span', { class: 'tag bad' }, a.kind === 'failure_rate' ? 'failure rate' : 'install time'),
      ' ', a.group_by === 'site' ? 'site ' : 'hardware class ', target, ': ', a.summary.replace(/^[^:]*: /, ''));
  }), more);
}

async function drawOverview(view) {
  const offset = Math.max(0, Number(view.params.get('offset')) || 0);
  const q = view.params.get('q') || '';
  const [o, anomalies, sites] = await Promise.all([
    api('/api/overview'),
    api('/api/anomalies'),
    api(`/api/sites?limit=${HEAT_PAGE}&offset=${offset}${q ? `&q=${enc(q)}` : ''}`),
  ]);
  const card = (id, label, value, note) => el('div', { class: 'card', id },
    el('div', { class: 'card-label' }, label), el('div', { class: 'card-value' }, num(value)), note ? el('div', { class: 'muted' }, note) : null);
  const reported = o.devices - o.never_reported;
  const states = Object.entries(o.states).sort((a, b) => STATES.indexOf(a[0]) - STATES.indexOf(b[0]));
  const versions = Object.entries(o.versions).sort((a, b) => b[1] - a[1]);
  const columns = versions.slice(0, 8).map(([v]) => v);
  return el('div', {},
    el('h1', {}, 'Fleet overview'),
    el('div', { class: 'cards' },
      card('card-devices', 'Devices', o.devices),
      card('card-sites', 'Sites', o.sites),
      card('card-reported', 'Reported', reported),
      card('card-never', 'Never reported', o.never_reported),
      card('card-stale', 'Stale (> 1 day)', o.stale)),
    el('div', { class: 'grid2' },
      el('section', {},
        el('h2', {}, 'Devices by state'),
        barChart(states.map(([s, n]) => ({ label: s, value: n, cls: stateClass(s) })), { id: 'states-chart' }),
        table(['State', 'Devices'], states.map(([s, n]) => el('tr', { 'data-state': s },
          el('td', {}, link(`#/devices?state=${enc(s)}`, s)), el('td', { class: 'n' }, num(n)))), { id: 'states', class: 'compact' })),
      el('section', {},
        el('h2', {}, 'Versions'),
        barChart(versions.slice(0, 10).map(([v, n]) => ({ label: v, value: n })), { id: 'versions-chart' }),
        el('h2', {}, 'Anomalies'),
        anomalyList(anomalies.flags, 'No site or hardware class stands out.'))),
    el('section', {},
      el('h2', {}, `Versions by site (${num(sites.total)} sites)`),
      searchBox('site-filter', 'filter sites', q, (value) => { location.hash = `#/?q=${enc(value)}`; }),
      heatMap(sites.sites, columns),
      pager(sites.total, offset, HEAT_PAGE, (n) => `#/?offset=${n}${q ? `&q=${enc(q)}` : ''}`)));
}

function heatMap(sites, columns) {
  const head = ['Site', 'Devices', ...columns, 'other', 'never'];
  const rows = sites.map((s) => {
    const known = columns.reduce((sum, v) => sum + (s.versions[v] || 0), 0);
    const reported = s.devices - s.never_reported;
    const cell = (n) => {
      const share = s.devices ? n / s.devices : 0;
      return el('td', { class: `heat h${Math.min(5, Math.ceil(share * 5))}`, title: `${num(n)} of ${num(s.devices)}` }, n ? num(n) : '');
    };
    return el('tr', { 'data-site': s.site },
      el('td', {}, link(`#/sites/${enc(s.site)}`, s.site)),
      el('td', { class: 'n' }, num(s.devices)),
      columns.map((v) => cell(s.versions[v] || 0)),
      cell(Math.max(0, reported - known)),
      cell(s.never_reported));
  });
  return table(head, rows, { id: 'heatmap', class: 'heatmap' });
}

function searchBox(id, placeholder, value, go) {
  const input = el('input', { id, type: 'search', placeholder, value });
  return el('form', { class: 'search', onsubmit: (e) => { e.preventDefault(); go(input.value.trim()); } },
    input, el('button', { type: 'submit' }, 'Go'));
}

function pager(total, offset, size, href) {
  const last = Math.max(0, Math.ceil(total / size) - 1) * size;
  return el('div', { class: 'pager' },
    offset > 0 ? link(href(Math.max(0, offset - size)), '‹ previous') : el('span', { class: 'muted' }, '‹ previous'),
    el('span', { class: 'pages' }, total ? `${num(offset + 1)}–${num(Math.min(total, offset + size))} of ${num(total)}` : 'none'),
    offset < last ? link(href(offset + size), 'next ›') : el('span', { class: 'muted' }, 'next ›'));
}

async function drawRollouts() {
  const { rollouts } = await api('/api/rollouts');
  const rows = rollouts.map((r) => {
    const t = r.sites.reduce((a, s) => ({
      committed: a.committed + s.committed,
      failed: a.failed + s.failed + s.rolled_back,
      targeted: a.targeted + s.targeted,
    }), { committed: 0, failed: 0, targeted: 0 });
    const finals = t.committed + t.failed;
    return el('tr', { 'data-rollout': r.id },
      el('td', {}, link(`#/rollouts/${enc(r.release)}`, r.id)),
      el('td', {}, `${r.release} ${r.version}`),
      el('td', {}, el('span', { class: `tag state-${r.state}` }, r.state)),
      el('td', {}, `${r.current_wave + 1} of ${r.waves.length}`),
      el('td', { class: 'n' }, num(t.targeted)),
      el('td', { class: 'n' }, num(t.committed)),
      el('td', { class: 'n' }, num(t.failed)),
      el('td', { class: 'n' }, finals ? pct((100 * t.failed) / finals) : '–'));
  });
  return el('div', {},
    el('h1', {}, 'Rollouts'),
    rollouts.length ? table(['Rollout', 'Release', 'State', 'Wave', 'Targeted', 'Committed', 'Failed', 'Failure rate'], rows, { id: 'rollouts' })
      : el('p', { class: 'muted' }, 'No rollout yet: start one with `seeder rollout start` or POST /api/rollouts.'));
}

async function drawRollout(view) {
  const r = await api(`/api/rollouts/${enc(view.arg)}`);
  const operator = session.scope === 'operator';
  // The last action's answer outlives the re-render that follows it (and live refreshes).
  const said = actionResults.get(r.id) || { text: '', cls: 'muted' };
  const message = el('p', { id: 'action-result', class: said.cls }, said.text);
  const act = async (action) => {
    if (action === 'abort' && !window.confirm(`Abort rollout ${r.id}? This cannot be undone.`)) return;
    message.textContent = `${action}…`;
    message.className = 'muted';
    try {
      const after = await api(`/api/rollouts/${enc(r.release)}/${action}`, { method: 'POST' });
      actionResults.set(r.id, { text: `${action}: the rollout is now ${after.state}`, cls: 'muted' });
    } catch (e) {
      actionResults.set(r.id, { text: e.message, cls: 'error-text' });
    }
    render(currentView(), true);
  };
  const button = (action, allowed) => el('button', {
    id: `rollout-${action}`, type: 'button', disabled: !operator || !allowed,
    title: operator ? null : 'needs an operator token', onclick: () => act(action),
  }, action[0].toUpperCase() + action.slice(1));
  const running = r.state === 'running';
  const stopped = r.state === 'paused' || r.state === 'halted';
  const waves = r.waves.map((w) => el('tr', { 'data-wave': w.index, class: w.index === r.current_wave ? 'current' : '' },
    el('td', {}, w.index), el('td', { class: 'n' }, pct(w.cumulative_percent)), el('td', { class: 'n' }, num(w.targeted)),
    el('td', {}, progressBar(w)),
    el('td', { class: 'n' }, num(w.installing)), el('td', { class: 'n' }, num(w.committed)),
    el('td', { class: 'n' }, num(w.failed)), el('td', { class: 'n' }, num(w.rolled_back)),
    el('td', { class: 'n' }, pct(w.failure_percent)), el('td', {}, w.gate)));
  const sites = [...r.sites].sort((a, b) => (b.failure_percent || 0) - (a.failure_percent || 0)).slice(0, PAGE);
  return el('div', {},
    el('h1', {}, `Rollout ${r.id}`),
    el('p', {}, `${r.release} ${r.version} for ${r.hw_class} · policy v${r.seq} · wave ${r.current_wave + 1} of ${r.waves.length} since ${r.wave_started_at} · `,
      el('span', { id: 'rollout-state', class: `tag state-${r.state}` }, r.state),
      r.halt_reason ? el('span', { class: 'error-text' }, ` halted: ${r.halt_reason}`) : null),
    el('div', { class: 'actions' },
      button('pause', running), button('resume', stopped), button('abort', r.state !== 'aborted'),
      operator ? null : el('span', { class: 'muted' }, ' a read-only token cannot act on rollouts')),
    message,
    el('div', { class: 'grid2' },
      el('section', {}, el('h2', {}, 'Failure rate per wave'), failureChart(r.waves)),
      el('section', {}, el('h2', {}, 'Legend'), el('p', {},
        ['committed', 'installing', 'failed', 'rolled-back'].map((c) => el('span', { class: `legend seg-${c}` }, c))))),
    el('h2', {}, 'Waves'),
    table(['Wave', 'Cumulative', 'Targeted', 'Progress', 'Installing', 'Committed', 'Failed', 'Rolled back', 'Failure rate', 'Gate'], waves, { id: 'waves' }),
    el('h2', {}, `Sites (${num(r.sites.length)}, worst first${r.sites.length > PAGE ? `, first ${PAGE}` : ''})`),
    table(['Site', 'Targeted', 'Installing', 'Committed', 'Failed', 'Rolled back', 'Failure rate'], sites.map((s) => el('tr', {},
      el('td', {}, link(`#/sites/${enc(s.site)}`, s.site)), el('td', { class: 'n' }, num(s.targeted)),
      el('td', { class: 'n' }, num(s.installing)), el('td', { class: 'n' }, num(s.committed)),
      el('td', { class: 'n' }, num(s.failed)), el('td', { class: 'n' }, num(s.rolled_back)),
      el('td', { class: 'n' }, pct(s.failure_percent))))));
}

const DEVICE_FILTERS = ['q', 'site', 'release', 'state', 'hw_class'];

async function drawDevices(view) {
  const p = view.params;
  const offset = Math.max(0, Number(p.get('offset')) || 0);
  const text = (p.get('q') || '').trim();
  // A whole public key (64 hex digits) is a lookup, not a search.
  if (/^[0-9a-fA-F]{64}$/.test(text)) {
    location.hash = `#/devices/${enc(text.toLowerCase())}`;
    return el('p', {}, 'Looking up the key…');
  }
  const query = new URLSearchParams();
  for (const f of DEVICE_FILTERS) if (p.get(f)) query.set(f, p.get(f));
  query.set('limit', PAGE);
  query.set('offset', offset);
  const page = await api(`/api/devices?${query}`);
  const inputs = {};
  const field = (name, placeholder) => { inputs[name] = el('input', { id: `search-${name}`, name, placeholder, value: p.get(name) || '' }); return inputs[name]; };
  const stateSelect = el('select', { id: 'search-state', name: 'state' }, el('option', { value: '' }, 'any state'),
    STATES.map((s) => el('option', { value: s, selected: p.get('state') === s }, s)));
  inputs.state = stateSelect;
  const form = el('form', { class: 'search wide', id: 'device-search', onsubmit: (e) => {
    e.preventDefault();
    const next = new URLSearchParams();
    for (const f of DEVICE_FILTERS) if (inputs[f].value.trim()) next.set(f, inputs[f].value.trim());
    location.hash = `#/devices?${next}`;
  } },
  field('q', 'id contains, or a public key'), field('site', 'site'), field('release', 'release or release@version'),
  stateSelect, field('hw_class', 'hardware class'), el('button', { type: 'submit', id: 'search-go' }, 'Search'));
  const rows = page.devices.map((d) => el('tr', { 'data-device': d.id, class: d.stale ? 'stale' : '' },
    el('td', {}, link(`#/devices/${enc(d.id)}`, d.id)),
    el('td', {}, link(`#/sites/${enc(d.site)}`, d.site)),
    el('td', {}, d.hw_class),
    el('td', {}, d.state ? `${d.state.release}@${d.state.version}` : '–'),
    el('td', {}, el('span', { class: `tag ${stateClass(d.state ? d.state.state : 'never-reported')}` }, d.state ? d.state.state : 'never reported')),
    el('td', {}, d.state ? ago(d.state.updated_at) : '–', d.stale ? el('span', { class: 'tag muted' }, 'stale') : null)));
  const href = (n) => { const q = new URLSearchParams(query); q.set('offset', n); q.delete('limit'); return `#/devices?${q}`; };
  return el('div', {},
    el('h1', {}, 'Devices'),
    form,
    el('p', { id: 'device-total' }, `${num(page.total)} devices match`),
    table(['Device', 'Site', 'Hardware', 'Runs', 'State', 'Last report'], rows, { id: 'devices' }),
    pager(page.total, offset, PAGE, href));
}

async function drawDevice(view) {
  const { device: d, history } = await api(`/api/devices/${enc(view.arg)}`);
  const s = d.state;
  const facts = [
    ['Device', d.id], ['Public key', d.key], ['Site', link(`#/sites/${enc(d.site)}`, d.site)], ['Hardware class', d.hw_class],
    ['Enrolled', new Date(d.enrolled_at * 1000).toISOString()],
    ['Runs', s ? `${s.release} ${s.version} (slot ${s.active_slot || '?'})` : 'never reported'],
    ['State', s ? s.state : '–'], ['Installing', s && s.target_version ? s.target_version : '–'],
    ['Rollout', s && s.rollout ? `${s.rollout}: ${s.result || '–'}` : '–'],
    ['Error', s && s.error ? `${s.error}${s.error_code ? ` (${s.error_code})` : ''}` : '–'],
    ['Anti-rollback floor', s && s.security_floor !== null ? s.security_floor : '–'],
    ['Last report', s ? `seq ${s.last_seq}, ${ago(s.updated_at)}${d.stale ? ' (stale)' : ''}` : '–'],
  ];
  return el('div', {},
    el('h1', {}, `Device ${d.id}`),
    el('dl', { class: 'facts', id: 'device-facts' }, facts.map(([k, v]) => [el('dt', {}, k), el('dd', {}, v)])),
    el('h2', {}, `History (${history.length} newest)`),
    table(['Received', 'Seq', 'State', 'Rollout', 'Result', 'Error', 'Install time'], history.map((e) => el('tr', {},
      el('td', {}, new Date(e.received_at * 1000).toISOString().replace('.000Z', 'Z')), el('td', { class: 'n' }, e.seq),
      el('td', {}, e.state), el('td', {}, e.rollout || '–'), el('td', {}, e.result || '–'),
      el('td', {}, e.error || '–'), el('td', { class: 'n' }, e.install_secs === null ? '–' : `${e.install_secs} s`))), { id: 'history' }));
}

async function drawSites(view) {
  const offset = Math.max(0, Number(view.params.get('offset')) || 0);
  const q = view.params.get('q') || '';
  const page = await api(`/api/sites?limit=${PAGE}&offset=${offset}${q ? `&q=${enc(q)}` : ''}`);
  const rows = page.sites.map((s) => el('tr', { 'data-site': s.site },
    el('td', {}, link(`#/sites/${enc(s.site)}`, s.site)), el('td', { class: 'n' }, num(s.devices)),
    el('td', { class: 'n' }, num(s.never_reported)), el('td', { class: 'n' }, num(s.stale)),
    el('td', {}, Object.entries(s.versions).sort((a, b) => b[1] - a[1]).map(([v, n]) => `${v} ${num(n)}`).join(' · ')),
    el('td', {}, Object.entries(s.states).filter(([st]) => st !== 'committed').map(([st, n]) => `${st} ${num(n)}`).join(' · '))));
  return el('div', {},
    el('h1', {}, `Sites (${num(page.total)})`),
    searchBox('sites-filter', 'site name contains', q, (value) => { location.hash = `#/sites?q=${enc(value)}`; }),
    table(['Site', 'Devices', 'Never reported', 'Stale', 'Versions', 'Not committed'], rows, { id: 'sites' }),
    pager(page.total, offset, PAGE, (n) => `#/sites?offset=${n}${q ? `&q=${enc(q)}` : ''}`));
}

async function drawSite(view) {
  const offset = Math.max(0, Number(view.params.get('offset')) || 0);
  const [detail, page] = await Promise.all([
    api(`/api/sites/${enc(view.arg)}`),
    api(`/api/devices?site=${enc(view.arg)}&limit=${PAGE}&offset=${offset}`),
  ]);
  const s = detail.site;
  const bars = (map, classes) => barChart(Object.entries(map).sort((a, b) => b[1] - a[1]).map(([k, n]) => ({ label: k, value: n, cls: classes ? stateClass(k) : '' })));
  const states = Object.assign({}, s.states);
  if (s.never_reported) states['never-reported'] = s.never_reported;
  const edges = detail.edges.map((e) => el('tr', { 'data-peer': e.peer },
    el('td', { class: 'mono' }, e.peer), el('td', {}, ago(e.last_seen)), el('td', { class: 'n' }, num(e.batches)),
    el('td', { class: 'n' }, num(e.reports)), el('td', { class: 'n' }, num(e.stored)),
    el('td', { class: 'n' }, `${num(e.last_stored)} of ${num(e.last_batch)}`), el('td', {}, ago(e.first_seen))));
  const rows = page.devices.map((d) => el('tr', { 'data-device': d.id, class: d.stale ? 'stale' : '' },
    el('td', {}, link(`#/devices/${enc(d.id)}`, d.id)), el('td', {}, d.hw_class),
    el('td', {}, d.state ? `${d.state.release}@${d.state.version}` : '–'),
    el('td', {}, el('span', { class: `tag ${stateClass(d.state ? d.state.state : 'never-reported')}` }, d.state ? d.state.state : 'never reported')),
    el('td', {}, d.state ? ago(d.state.updated_at) : '–')));
  return el('div', {},
    el('h1', {}, `Site ${s.site}`),
    el('div', { class: 'cards' },
      el('div', { class: 'card', id: 'site-devices' }, el('div', { class: 'card-label' }, 'Devices'), el('div', { class: 'card-value' }, num(s.devices))),
      el('div', { class: 'card' }, el('div', { class: 'card-label' }, 'Never reported'), el('div', { class: 'card-value' }, num(s.never_reported))),
      el('div', { class: 'card' }, el('div', { class: 'card-label' }, 'Stale'), el('div', { class: 'card-value' }, num(s.stale))),
      el('div', { class: 'card' }, el('div', { class: 'card-label' }, 'Edge nodes'), el('div', { class: 'card-value' }, num(detail.edges.length)))),
    el('h2', {}, 'Anomalies'),
    anomalyList(detail.anomalies, 'Nothing stands out at this site.'),
    el('div', { class: 'grid3' },
      el('section', {}, el('h2', {}, 'Versions'), bars(s.versions, false)),
      el('section', {}, el('h2', {}, 'States'), bars(states, true)),
      el('section', {}, el('h2', {}, 'Hardware'), bars(s.hw_classes, false))),
    el('h2', {}, 'Edge nodes'),
    detail.edges.length
      ? table(['Peer', 'Last batch', 'Batches', 'Reports', 'Acknowledged', 'Last batch acknowledged', 'First seen'], edges, { id: 'edges' })
      : el('p', { class: 'muted' }, 'No edge node of this site has forwarded reports to this seeder yet (the site is what a node claims).'),
    el('h2', {}, 'Devices'),
    table(['Device', 'Hardware', 'Runs', 'State', 'Last report'], rows, { id: 'site-device-list' }),
    pager(page.total, offset, PAGE, (n) => `#/sites/${enc(s.site)}?offset=${n}`));
}

// ---------------------------------------------------------------- start

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = document.getElementById('token');
    const token = input.value.trim();
    input.value = '';
    if (token) signIn(token);
  });
  document.getElementById('logout').addEventListener('click', () => signOut(''));
  window.addEventListener('hashchange', route);
  if (session.token) signIn(session.token);
  else showLogin();
});
