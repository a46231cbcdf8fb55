// vllm-sentinel live status page: polls api/v1/status (a relative URL, so the page works under a
// proxy path prefix; the whole history once, then only the new samples with `since=`) and draws
// each chart as hand-written SVG. No library, no other host.
'use strict';
(function () {
  const SVGNS = 'http://www.w3.org/2000/svg';
  // Okabe-Ito: distinguishable with the common colour-vision deficiencies; every line also has
  // its own dash pattern, so no information rests on colour alone.
  const COLORS = ['#0072B2', '#E69F00', '#009E73', '#D55E00', '#CC79A7', '#56B4E9', '#000000', '#F0E442'];
  const DASHES = ['', '7 3', '2 3', '10 3 2 3', '4 2 4 6', '1 2'];
  const OUTCOME_ORDER = ['ok', 'context_length'];
  const W = 460, H = 190, L = 62, R = 10, T = 10, B = 34;

  const body = document.body;
  const pollMs = Math.max(250, parseInt(body.dataset.pollMs, 10) || 2000);
  const live = document.getElementById('live');
  const updated = document.getElementById('updated');
  const charts = new Map(); // id -> {spec, cursor}
  let last = null;
  let failures = 0;

  // ---------- formatting ----------
  const pad = (n) => String(n).padStart(2, '0');
  function clock(ts) {
    const d = new Date(ts * 1000);
    return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
  }
  function trim(x, digits) {
    return Number(x.toFixed(digits)).toString();
  }
  const UNITS = {
    seconds: { axis: 'latency', fmt: (v) => (Math.abs(v) < 1 ? trim(v * 1000, v * 1000 < 10 ? 2 : 1) + ' ms' : trim(v, 2) + ' s') },
    ratio: { axis: 'percent', fmt: (v) => trim(v * 100, 1) + ' %' },
    rps: { axis: 'requests per second', fmt: (v) => trim(v, v < 10 ? 2 : 1) + ' req/s' },
    requests: { axis: 'requests', fmt: (v) => trim(v, 1) },
    bytes: { axis: 'bytes', fmt: (v) => (v >= 2 ** 30 ? trim(v / 2 ** 30, 1) + ' GiB' : trim(v / 2 ** 20, 1) + ' MiB') },
    watts: { axis: 'watts', fmt: (v) => trim(v, 0) + ' W' },
    celsius: { axis: 'degrees Celsius', fmt: (v) => trim(v, 0) + ' °C' },
    cores: { axis: 'CPU cores', fmt: (v) => trim(v, 3) + ' cores' },
    count: { axis: 'count', fmt: (v) => trim(v, 2) },
    tokens: { axis: 'tokens', fmt: (v) => trim(v, 0) + ' tokens' },
  };
  function fmt(unit, v) {
    if (v === null || v === undefined || Number.isNaN(v)) return '—';
    return UNITS[unit].fmt(v);
  }

  // ---------- DOM helpers ----------
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const k of kids) if (k !== null && k !== undefined && k !== false) e.append(k);
    return e;
  }
  function s(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }
  // The element with this id, created (appended to parent) the first time: focused sections
  // and charts survive the updates.
  function slot(parent, id, tag, attrs) {
    let e = document.getElementById(id);
    if (!e) {
      e = h(tag, Object.assign({ id: id }, attrs || {}));
      parent.append(e);
    }
    return e;
  }
  function safeId(x) {
    return String(x).replace(/[^A-Za-z0-9_-]/g, '_');
  }
  function value(key, unit, v) {
    return h('span', { class: 'v', 'data-key': key, 'data-value': v === null || v === undefined ? '' : String(v) }, fmt(unit, v));
  }
  function stat(label, key, unit, v) {
    return h('div', {}, h('dt', {}, label), h('dd', {}, value(key, unit, v)));
  }
  function empty(text) {
    return h('p', { class: 'empty' }, text);
  }

  // ---------- charts ----------
  function niceStep(span) {
    const raw = span / 4;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    const m = raw / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }

  // spec: {id, title, unit, lines: [{label, values}], max?}
  function chart(parent, spec) {
    const fig = slot(parent, 'chart-' + safeId(spec.id), 'figure', { tabindex: '0', 'data-chart': spec.id });
    const state = charts.get(spec.id) || { cursor: null };
    state.spec = spec;
    charts.set(spec.id, state);
    if (!fig.dataset.keys) {
      fig.dataset.keys = '1';
      fig.addEventListener('keydown', (ev) => onKey(spec.id, ev));
    }
    draw(fig, state);
  }

  function onKey(id, ev) {
    const st = charts.get(id);
    if (!st || !last) return;
    const n = last.timestamps.length;
    let c = st.cursor === null ? n - 1 : st.cursor;
    if (ev.key === 'ArrowLeft') c = Math.max(0, c - 1);
    else if (ev.key === 'ArrowRight') c = Math.min(n - 1, c + 1);
    else if (ev.key === 'Home') c = 0;
    else if (ev.key === 'End' || ev.key === 'Escape') c = null;
    else return;
    ev.preventDefault();
    st.cursor = c === n - 1 ? null : c;
    draw(document.getElementById('chart-' + safeId(id)), st);
  }

  function draw(fig, state) {
    const spec = state.spec;
    const ts = last.timestamps;
    const n = ts.length;
    let points = 0;
    let max = spec.max || 0;
    for (const l of spec.lines) {
      for (const v of l.values) {
        if (v !== null && v !== undefined) {
          points++;
          if (v > max) max = v;
        }
      }
    }
    fig.dataset.points = String(points);
    fig.replaceChildren();
    fig.append(h('figcaption', {}, spec.title));
    if (points === 0) {
      fig.append(empty(n === 0 ? 'no sample yet' : spec.empty || 'no data in the last ' + Math.max(1, Math.round((n * last.interval_seconds) / 60)) + ' min'));
      fig.setAttribute('aria-label', spec.title + ': no data');
      return;
    }
    if (max <= 0) max = 1;
    const step = niceStep(max);
    const top = Math.ceil(max / step) * step;
    const t0 = ts[0], t1 = Math.max(ts[n - 1], t0 + last.interval_seconds);
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (v) => T + (1 - v / top) * (H - T - B);
    const g = s('svg', { viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-hidden': 'true', focusable: 'false' });
    for (let v = 0; v <= top + step / 2; v += step) {
      g.append(s('line', { class: 'grid', x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      const t = s('text', { x: L - 4, y: y(v) + 3, 'text-anchor': 'end' });
      t.textContent = fmt(spec.unit, v);
      g.append(t);
    }
    g.append(s('line', { class: 'axis', x1: L, x2: L, y1: T, y2: H - B }));
    g.append(s('line', { class: 'axis', x1: L, x2: W - R, y1: H - B, y2: H - B }));
    for (let i = 0; i < 4; i++) {
      const tt = t0 + ((t1 - t0) * i) / 3;
      const t = s('text', { x: x(tt), y: H - B + 13, 'text-anchor': i === 0 ? 'start' : i === 3 ? 'end' : 'middle' });
      t.textContent = clock(tt);
      g.append(t);
    }
    const xt = s('text', { x: (L + W - R) / 2, y: H - 4, 'text-anchor': 'middle' });
    xt.textContent = 'local time (one sample every ' + last.interval_seconds + ' s)';
    g.append(xt);
    const yt = s('text', { x: 10, y: (T + H - B) / 2, 'text-anchor': 'middle', transform: 'rotate(-90 10 ' + (T + H - B) / 2 + ')' });
    yt.textContent = UNITS[spec.unit].axis;
    g.append(yt);
    spec.lines.forEach((l, i) => {
      let d = '';
      let pen = false;
      l.values.forEach((v, j) => {
        if (v === null || v === undefined) {
          pen = false;
          return;
        }
        d += (pen ? 'L' : 'M') + x(ts[j]).toFixed(1) + ' ' + y(v).toFixed(1);
        pen = true;
      });
      // A lone point (no neighbour) is drawn as a dot.
      l.values.forEach((v, j) => {
        const prev = j > 0 ? l.values[j - 1] : null, next = j + 1 < n ? l.values[j + 1] : null;
        if (v !== null && v !== undefined && (prev === null || prev === undefined) && (next === null || next === undefined)) {
          g.append(s('circle', { cx: x(ts[j]), cy: y(v), r: 2.5, fill: COLORS[i % COLORS.length] }));
        }
      });
      g.append(s('path', { class: 'series', d: d, stroke: COLORS[i % COLORS.length], 'stroke-dasharray': DASHES[i % DASHES.length] }));
    });
    const at = state.cursor === null ? n - 1 : state.cursor;
    if (state.cursor !== null) g.append(s('line', { class: 'cursor', x1: x(ts[at]), x2: x(ts[at]), y1: T, y2: H - B }));
    fig.append(g);
    const legend = h('div', { class: 'legend' });
    const parts = [];
    spec.lines.forEach((l, i) => {
      const sw = s('svg', { width: 22, height: 8, 'aria-hidden': 'true' });
      sw.append(s('line', { x1: 1, x2: 21, y1: 4, y2: 4, stroke: COLORS[i % COLORS.length], 'stroke-width': 2.5, 'stroke-dasharray': DASHES[i % DASHES.length] }));
      const v = l.values[at];
      legend.append(h('span', {}, sw, ' ' + l.label + ' ', h('b', {}, fmt(spec.unit, v))));
      parts.push(l.label + ' ' + fmt(spec.unit, v));
    });
    fig.append(legend);
    const when = state.cursor === null ? 'latest, ' + clock(ts[at]) : 'at ' + clock(ts[at]) + ' (sample ' + (at + 1) + ' of ' + n + ')';
    fig.append(h('div', { class: 'readout' }, when));
    fig.setAttribute('aria-label', spec.title + ', ' + when + ': ' + parts.join(', '));
  }

  function quantileLines(series, base) {
    return ['p50', 'p95', 'p99'].map((q) => ({ label: q, values: series[base + '.' + q] || [] }));
  }
  function outcomeLines(series) {
    const outs = Object.keys(series).filter((k) => k.startsWith('requests_per_second.')).map((k) => k.slice(20));
    outs.sort((a, b) => {
      const ia = OUTCOME_ORDER.indexOf(a), ib = OUTCOME_ORDER.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
    });
    return outs.map((o) => ({ label: o, values: series['requests_per_second.' + o] }));
  }
  function has(series, prefix) {
    return Object.keys(series).some((k) => k.startsWith(prefix));
  }

  // ---------- sections ----------
  function renderTarget(t) {
    const id = 'target-' + safeId(t.name);
    const sec = slot(live, id, 'section', { tabindex: '0', 'aria-labelledby': id + '-h', class: 'target' });
    const lt = t.latest, sr = t.series, key = (k) => 'target:' + t.name + ':' + k;
    const head = slot(sec, id + '-head', 'div');
    head.replaceChildren(h('h2', { id: id + '-h' }, 'Target ' + t.name), h('p', { class: 'muted' }, (t.model || '(model not discovered yet)') + ' · ' + t.url));
    const state = slot(sec, id + '-state', 'div');
    state.replaceChildren();
    if (t.unreachable_since !== null) {
      state.append(h('p', { class: 'alert' }, 'Target not reachable since ' + clock(t.unreachable_since) + (t.last_error ? ': ' + t.last_error : '') + (lt.discovered === 0 ? ' (model discovery has not succeeded: no probe runs)' : '')));
    }
    const canary = lt.limit_honoured === undefined ? 'unknown (no canary result yet)' : lt.limit_honoured === 1 ? 'honoured' : 'NOT honoured';
    // ok and context_length always; other outcomes once they have happened.
    const outcomes = Object.keys(lt).filter((k) => k.startsWith('requests_total.') && lt[k] > 0).map((k) => k.slice(15));
    if (!outcomes.includes('ok')) outcomes.push('ok');
    if (!outcomes.includes('context_length')) outcomes.push('context_length');
    outcomes.sort((a, b) => (OUTCOME_ORDER.indexOf(b) >= 0) - (OUTCOME_ORDER.indexOf(a) >= 0) || a.localeCompare(b));
    const stats = h('dl', { class: 'stats' },
      stat('max_model_len (advertised)', key('max_model_len_tokens'), 'tokens', lt.max_model_len_tokens),
      stat('largest prompt served', key('max_prompt_served_tokens'), 'tokens', lt.max_prompt_served_tokens),
      h('div', {}, h('dt', {}, 'context-length canary'), h('dd', {}, h('span', { class: lt.limit_honoured === 0 ? 'down' : '' }, canary))),
      stat('probes in flight', key('in_flight'), 'requests', lt.in_flight),
      stat('KV cache used', key('kv_cache_usage_ratio'), 'ratio', lt.kv_cache_usage_ratio),
      stat('running', key('requests_running'), 'requests', lt.requests_running),
      stat('waiting', key('requests_waiting'), 'requests', lt.requests_waiting));
    for (const o of outcomes) stats.append(stat('probes ' + o + ' (total)', key('requests_total.' + o), 'requests', lt['requests_total.' + o] === undefined ? 0 : lt['requests_total.' + o]));
    state.append(stats);
    const grid = slot(sec, id + '-charts', 'div', { class: 'charts' });
    const noProbe = 'no probe has finished in the window' + (lt.discovered === 0 ? ': model discovery has not succeeded yet' : '');
    chart(grid, { id: t.name + '/ttft', title: 'Time to first token (probes, p50 / p95 / p99 over 1 min)', unit: 'seconds', lines: quantileLines(sr, 'ttft_seconds'), empty: noProbe });
    chart(grid, { id: t.name + '/itl', title: 'Inter-token latency (probes, p50 / p95 / p99 over 1 min)', unit: 'seconds', lines: quantileLines(sr, 'itl_seconds'), empty: noProbe });
    chart(grid, { id: t.name + '/e2e', title: 'End-to-end latency (probes, p50 / p95 / p99 over 1 min)', unit: 'seconds', lines: quantileLines(sr, 'e2e_seconds'), empty: noProbe });
    chart(grid, { id: t.name + '/rate', title: 'Probe requests by outcome (rate over 1 min)', unit: 'rps', lines: outcomeLines(sr), empty: noProbe });
    const noServer = 'no server metrics: the server\'s /metrics has not been scraped (vllm_sentinel_server_* absent' + (lt.upstream_up === 0 ? ', scrape failing' : '') + ')';
    chart(grid, { id: t.name + '/kv', title: 'KV-cache usage (server)', unit: 'ratio', max: 1, lines: [{ label: 'used', values: sr.kv_cache_usage_ratio || [] }], empty: noServer });
    chart(grid, { id: t.name + '/queue', title: 'Running vs waiting requests (server)', unit: 'requests', lines: [{ label: 'running', values: sr.requests_running || [] }, { label: 'waiting', values: sr.requests_waiting || [] }], empty: noServer });
    chart(grid, {
      id: t.name + '/split', title: 'Where TTFT goes: client-seen vs server (means)', unit: 'seconds', empty: noServer,
      lines: [
        { label: 'client TTFT (probes, 1 min)', values: sr['ttft_seconds.mean'] || [] },
        { label: 'server TTFT', values: sr.server_window_mean_ttft_seconds || [] },
        { label: 'server queue', values: sr.server_window_mean_queue_seconds || [] },
        { label: 'server prefill', values: sr.server_window_mean_prefill_seconds || [] },
      ],
    });
  }

  function renderGpus(gpu) {
    const sec = slot(live, 'gpus', 'section', { tabindex: '0', 'aria-labelledby': 'gpus-h' });
    const head = slot(sec, 'gpus-head', 'div');
    head.replaceChildren(h('h2', { id: 'gpus-h' }, 'GPUs'));
    const msg = slot(sec, 'gpus-msg', 'div');
    msg.replaceChildren();
    if (gpu.state === 'disabled') msg.append(empty('GPU sampling is off (gpu.enabled = false or --no-gpu).'));
    else if (gpu.devices.length === 0) msg.append(empty('no GPU: NVML not found or not initialised (vllm_sentinel_gpu_up = ' + (gpu.up === null ? 'absent' : gpu.up) + '); see the daemon log for the reason.'));
    else if (gpu.state !== 'ok') msg.append(h('p', { class: 'alert' }, 'GPU sampling failing (vllm_sentinel_gpu_up = ' + gpu.up + '): values below may be stale.'));
    for (const d of gpu.devices) {
      const id = 'gpu-' + safeId(d.gpu);
      const box = slot(sec, id, 'div', { class: 'gpu' });
      const lt = d.latest, sr = d.series, key = (k) => 'gpu:' + d.gpu + ':' + k;
      const top = slot(box, id + '-top', 'div');
      const thr = d.throttle_reasons.length ? d.throttle_reasons.join(', ') : 'none';
      top.replaceChildren(
        h('h3', {}, 'GPU ' + d.gpu + ' · ' + d.name),
        h('dl', { class: 'stats' },
          stat('memory used', key('memory_used_bytes'), 'bytes', lt.memory_used_bytes),
          stat('memory total', key('memory_total_bytes'), 'bytes', lt.memory_total_bytes),
          stat('utilization', key('utilization_ratio'), 'ratio', lt.utilization_ratio),
          stat('power', key('power_watts'), 'watts', lt.power_watts),
          stat('power limit', key('power_limit_watts'), 'watts', lt.power_limit_watts),
          stat('temperature', key('temperature_celsius'), 'celsius', lt.temperature_celsius),
          h('div', {}, h('dt', {}, 'throttle reasons active'), h('dd', {}, h('span', { class: d.throttle_reasons.length ? 'down' : '' }, thr)))));
      const grid = slot(box, id + '-charts', 'div', { class: 'charts' });
      const total = sr.memory_total_bytes || [];
      const memRatio = (sr.memory_used_bytes || []).map((v, i) => (v === null || !total[i] ? null : v / total[i]));
      chart(grid, { id: 'gpu' + d.gpu + '/mem', title: 'Memory used vs SM utilization', unit: 'ratio', max: 1, lines: [{ label: 'memory used', values: memRatio }, { label: 'SM utilization', values: sr.utilization_ratio || [] }] });
      chart(grid, { id: 'gpu' + d.gpu + '/power', title: 'Power draw and limit', unit: 'watts', lines: [{ label: 'power', values: sr.power_watts || [] }, { label: 'limit', values: sr.power_limit_watts || [] }] });
      chart(grid, { id: 'gpu' + d.gpu + '/temp', title: 'Temperature', unit: 'celsius', lines: [{ label: 'temperature', values: sr.temperature_celsius || [] }] });
      chart(grid, { id: 'gpu' + d.gpu + '/throttle', title: 'Throttle reasons active (idle excluded)', unit: 'count', lines: [{ label: 'reasons', values: sr.throttle_reasons_active || [] }] });
    }
  }

  function renderProber(p) {
    const sec = slot(live, 'prober', 'section', { tabindex: '0', 'aria-labelledby': 'prober-h' });
    const lt = p.latest, sr = p.series, key = (k) => 'prober:' + k;
    const top = slot(sec, 'prober-top', 'div');
    top.replaceChildren(h('h2', { id: 'prober-h' }, 'Prober self-health'));
    if (lt.saturated === 1) top.append(h('p', { class: 'alert' }, 'The prober is saturated: its latency numbers are not trustworthy.'));
    top.append(
      h('dl', { class: 'stats' },
        stat('saturated (1 = yes)', key('saturated'), 'count', lt.saturated),
        stat('runtime lag p99', key('runtime_lag_seconds.p99'), 'seconds', lt['runtime_lag_seconds.p99']),
        stat('sidecar CPU', key('cpu_cores'), 'cores', lt.cpu_cores),
        stat('sidecar memory (RSS)', key('resident_memory_bytes'), 'bytes', lt.resident_memory_bytes)));
    const grid = slot(sec, 'prober-charts', 'div', { class: 'charts' });
    chart(grid, { id: 'prober/lag', title: 'Runtime lag of a 10 ms timer (p50 / p99 over 1 min)', unit: 'seconds', lines: [{ label: 'p50', values: sr['runtime_lag_seconds.p50'] || [] }, { label: 'p99', values: sr['runtime_lag_seconds.p99'] || [] }] });
    chart(grid, { id: 'prober/cpu', title: 'Sidecar CPU', unit: 'cores', lines: [{ label: 'CPU', values: sr.cpu_cores || [] }] });
    chart(grid, { id: 'prober/rss', title: 'Sidecar memory (RSS)', unit: 'bytes', lines: [{ label: 'RSS', values: sr.resident_memory_bytes || [] }] });
  }

  function renderTap(tap) {
    const sec = slot(live, 'tap', 'section', { tabindex: '0', 'aria-labelledby': 'tap-h' });
    const top = slot(sec, 'tap-top', 'div');
    top.replaceChildren(h('h2', { id: 'tap-h' }, 'Real traffic (tap)'));
    if (!tap.enabled) top.append(empty('tap off: start the daemon with --tap-listen ADDR (docs/tap.md) to measure users\' real traffic.'));
    else if (tap.targets.length === 0) top.append(empty('tap on, no request through it yet.'));
    for (const t of tap.targets) {
      const id = 'tap-' + safeId(t.name);
      const box = slot(sec, id, 'div');
      const sr = t.series;
      slot(box, id + '-h', 'h3').textContent = 'Target ' + t.name;
      const grid = slot(box, id + '-charts', 'div', { class: 'charts' });
      chart(grid, { id: 'tap/' + t.name + '/rate', title: 'Requests by outcome (rate over 1 min)', unit: 'rps', lines: outcomeLines(sr) });
      chart(grid, { id: 'tap/' + t.name + '/ttft', title: 'Time to first token (p50 / p95 / p99 over 1 min)', unit: 'seconds', lines: quantileLines(sr, 'ttft_seconds') });
      chart(grid, { id: 'tap/' + t.name + '/e2e', title: 'End-to-end latency (p50 / p95 / p99 over 1 min)', unit: 'seconds', lines: quantileLines(sr, 'e2e_seconds') });
    }
  }

  function render(doc) {
    last = doc;
    const known = new Set(doc.targets.map((t) => 'target-' + safeId(t.name)));
    for (const sec of Array.from(live.querySelectorAll('section.target'))) if (!known.has(sec.id)) sec.remove();
    if (doc.targets.length === 0) slot(live, 'no-targets', 'p', { class: 'empty' }).textContent = 'no targets configured';
    for (const t of doc.targets) renderTarget(t);
    renderGpus(doc.gpu);
    renderProber(doc.prober);
    renderTap(doc.tap);
    const rows = document.getElementById('overview-rows');
    if (rows && doc.targets.length) {
      rows.replaceChildren(...doc.targets.map((t) => h('tr', {},
        h('td', {}, t.name), h('td', {}, t.url), h('td', {}, t.model || '(discovering)'),
        h('td', {}, t.metrics_up === null ? 'pending' : h('span', { class: t.metrics_up ? 'up' : 'down' }, t.metrics_up ? 'up' : 'down')),
        h('td', {}, t.last_error || ''))));
    }
    const ts = doc.sample_timestamp;
    updated.dataset.sampleTs = ts === null ? '' : String(ts);
    updated.dataset.seq = String(doc.seq);
    updated.classList.remove('stale');
    updated.textContent = ts === null ? 'Waiting for the first sample…'
      : 'Sample of ' + clock(ts) + ' · ' + doc.timestamps.length + ' of ' + doc.capacity + ' samples (every ' + doc.interval_seconds + ' s) · page refreshes every ' + pollMs / 1000 + ' s';
    body.dataset.rendered = String((parseInt(body.dataset.rendered, 10) || 0) + 1);
  }

  // ---------- incremental polling ----------
  // The first request (and any after a gap) fetches the whole history; later ones ask only for
  // the samples after the newest one held (`since=`) and append them, keeping the ring's length.
  function nulls(n) {
    return new Array(n).fill(null);
  }
  function mergeSeries(oldS, newS, oldN, newN, keep) {
    const out = {};
    for (const k of new Set(Object.keys(oldS || {}).concat(Object.keys(newS || {})))) {
      const a = (oldS && oldS[k]) || nulls(oldN);
      const b = (newS && newS[k]) || nulls(newN);
      const v = a.concat(b);
      const cut = v.slice(v.length - keep);
      // The daemon deletes a series that has no value over the whole window: so does the page.
      if (cut.some((x) => x !== null)) out[k] = cut;
    }
    return out;
  }
  function mergeList(oldList, newList, keyOf, oldN, newN, keep) {
    const byKey = new Map((oldList || []).map((x) => [keyOf(x), x]));
    return newList.map((x) => {
      const o = byKey.get(keyOf(x));
      return Object.assign({}, x, { series: mergeSeries(o && o.series, x.series, oldN, newN, keep) });
    });
  }
  function merge(old, doc) {
    const oldN = old.timestamps.length, newN = doc.timestamps.length;
    const keep = Math.min(oldN + newN, doc.ring_samples === undefined ? doc.capacity : doc.ring_samples);
    const all = old.timestamps.concat(doc.timestamps);
    const out = Object.assign({}, doc, { timestamps: all.slice(all.length - keep) });
    out.targets = mergeList(old.targets, doc.targets, (t) => t.name, oldN, newN, keep);
    out.gpu = Object.assign({}, doc.gpu, { devices: mergeList(old.gpu.devices, doc.gpu.devices, (d) => d.gpu, oldN, newN, keep) });
    out.prober = Object.assign({}, doc.prober, { series: mergeSeries(old.prober.series, doc.prober.series, oldN, newN, keep) });
    out.tap = Object.assign({}, doc.tap, { targets: mergeList(old.tap.targets, doc.tap.targets, (t) => t.name, oldN, newN, keep) });
    return out;
  }

  async function tick() {
    try {
      const held = last && last.timestamps.length ? last.timestamps[last.timestamps.length - 1] : null;
      const url = 'api/v1/status' + (held === null ? '' : '?since=' + encodeURIComponent(String(held)));
      const r = await fetch(url, { cache: 'no-store', headers: { Accept: 'application/json' } });
      if (!r.ok) throw new Error('HTTP ' + r.status);
      const doc = await r.json();
      if (doc.version !== 1) throw new Error('unsupported status API version ' + doc.version);
      failures = 0;
      // contiguous: the samples follow the one held; otherwise (the daemon restarted, or the
      // page slept past the ring) the response is the whole history newer than `since`.
      render(held !== null && doc.contiguous === true ? merge(last, doc) : doc);
    } catch (e) {
      failures++;
      updated.classList.add('stale');
      updated.textContent = 'Update failed (' + failures + ' in a row: ' + e.message + ')' + (last && last.sample_timestamp ? '; showing the sample of ' + clock(last.sample_timestamp) : '');
    } finally {
      setTimeout(tick, pollMs);
    }
  }
  tick();
})();
