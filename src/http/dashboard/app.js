// d8 dashboard: one fetch-based stream of /api/events keeps everything
// current; a few plain requests fill in details (workers, usage, a task).
// The API key lives in sessionStorage (this tab only) and travels as a
// bearer header, never in a URL. Text from the cluster is always inserted
// as text (textContent), never as markup.
"use strict";

(() => {
  const KEY = "d8.key";
  const MAX_TASKS = 100;
  const MAX_LOG_LINES = 400;
  const STALE_MS = 40000; // the server sends a keep-alive every 15 s
  const LEVELS = { error: 0, warn: 1, info: 2, debug: 3, trace: 4 };

  const $ = (id) => document.getElementById(id);
  const state = {
    key: sessionStorage.getItem(KEY) || "",
    info: null,
    stats: null,
    statsAt: 0,
    workers: [],
    workersAt: 0,
    lastEvent: new Map(), // worker id -> last state event
    tasks: new Map(), // id -> task, newest kept
    logs: [],
    samples: [], // [ms, finished count]
    selected: null,
    detailAbort: null,
    connected: false,
    lastByte: 0,
  };

  // ---------- small helpers ----------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (k === "class") node.className = v;
        else if (k === "text") node.textContent = v;
        else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
        else node.setAttribute(k, v);
      }
    }
    for (const c of children) {
      if (c !== null && c !== undefined) node.append(c);
    }
    return node;
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (state.key) h.Authorization = "Bearer " + state.key;
    return h;
  }

  class Unauthorized extends Error {}

  async function api(path, opts) {
    const o = Object.assign({ cache: "no-store" }, opts || {});
    o.headers = headers(o.headers);
    const r = await fetch(path, o);
    if (r.status === 401) throw new Unauthorized("the key was refused");
    let body = null;
    try {
      body = await r.json();
    } catch (_) {
      body = null;
    }
    if (!r.ok) {
      const msg = body && body.error && body.error.message ? body.error.message : "HTTP " + r.status;
      throw new Error(msg);
    }
    return body;
  }

  function ago(ms) {
    if (ms === null || ms === undefined || isNaN(ms)) return "–";
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    if (s < 86400) return Math.floor(s / 3600) + " h";
    return Math.floor(s / 86400) + " d";
  }

  function duration(ms) {
    if (ms === null || ms === undefined || isNaN(ms)) return "–";
    if (ms < 1000) return Math.round(ms) + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    return (ms / 60000).toFixed(1) + " min";
  }

  function countdown(ms) {
    const s = Math.max(0, Math.ceil(ms / 1000));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = s % 60;
    if (h > 0) return h + "h " + String(m).padStart(2, "0") + "m";
    if (m > 0) return m + "m " + String(sec).padStart(2, "0") + "s";
    return sec + "s";
  }

  function num(n) {
    return typeof n === "number" ? n.toLocaleString("en-US") : "–";
  }

  function usd(n) {
    if (typeof n !== "number") return "–";
    if (n === 0) return "0";
    if (n < 0.01) return n.toFixed(6);
    return n.toFixed(2);
  }

  function badge(text) {
    return el("span", { class: "badge " + text, text: text });
  }

  // ---------- login and connection ----------

  function showLogin(message) {
    if (streamAbort) streamAbort.abort();
    state.connected = false;
    $("app").classList.add("hidden");
    $("banner").classList.add("hidden");
    $("login").classList.remove("hidden");
    $("login-error").textContent = message || "";
    $("key").focus();
  }

  function showApp() {
    $("login").classList.add("hidden");
    $("app").classList.remove("hidden");
  }

  function banner(text, bad) {
    const b = $("banner");
    if (!text) {
      b.classList.add("hidden");
      return;
    }
    $("banner-text").textContent = text;
    b.classList.toggle("bad", !!bad);
    b.classList.remove("hidden");
  }

  let streamAbort = null;
  let retryMs = 1000;
  let retryTimer = null;

  async function connect() {
    clearTimeout(retryTimer);
    if (streamAbort) streamAbort.abort();
    const abort = new AbortController();
    streamAbort = abort;
    try {
      const r = await fetch("/api/events", {
        headers: headers({ Accept: "text/event-stream" }),
        signal: abort.signal,
        cache: "no-store",
      });
      if (r.status === 401) {
        if (state.key) {
          sessionStorage.removeItem(KEY);
          state.key = "";
          showLogin("That key was refused. Check <data-dir>/api-key on the orchestrator.");
        } else {
          showLogin("");
        }
        return;
      }
      if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
      showApp();
      state.connected = true;
      state.lastByte = Date.now();
      retryMs = 1000;
      banner(null);
      loadInfo();
      loadUsage();
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        state.lastByte = Date.now();
        buf += decoder.decode(value, { stream: true });
        let at;
        while ((at = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, at);
          buf = buf.slice(at + 2);
          handleBlock(block);
        }
      }
      throw new Error("the orchestrator closed the stream");
    } catch (e) {
      if (abort.signal.aborted) return;
      state.connected = false;
      banner("Disconnected from the orchestrator (" + e.message + "); retrying in " + Math.round(retryMs / 1000) + " s.", true);
      retryTimer = setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 15000);
    }
  }

  function handleBlock(block) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (data.length === 0) return; // a keep-alive comment
    let v;
    try {
      v = JSON.parse(data.join("\n"));
    } catch (_) {
      return;
    }
    switch (event) {
      case "snapshot":
        onSnapshot(v);
        break;
      case "stats":
        onStats(v);
        break;
      case "worker":
        onWorker(v);
        break;
      case "task":
        onTask(v);
        break;
      case "log":
        onLog(v);
        break;
      case "rests":
        onRests(v);
        break;
      default:
        break;
    }
  }

  // ---------- events ----------

  function onSnapshot(v) {
    state.tasks.clear();
    for (const t of (v.tasks || []).slice().reverse()) state.tasks.set(t.task_id, t);
    state.logs = (v.logs || []).slice(-MAX_LOG_LINES);
    setWorkers(v.workers || []);
    onStats(v.stats);
    renderTasks();
    renderLogs();
  }

  function onStats(s) {
    if (!s) return;
    const now = Date.now();
    for (const c of s.cooldowns || []) c.at = now;
    state.stats = s;
    state.statsAt = now;
    renderCards();
    renderQueue();
    renderWorkers();
  }

  let workersTimer = null;
  function refreshWorkersSoon() {
    clearTimeout(workersTimer);
    workersTimer = setTimeout(loadWorkers, 300);
  }

  function onWorker(v) {
    state.lastEvent.set(v.worker_id, { state: v.state, at: Date.now() });
    const w = state.workers.find((x) => x.worker_id === v.worker_id);
    if (w) {
      w.status = displayStatus(w.status, v.worker_id);
    }
    renderWorkers();
    refreshWorkersSoon();
  }

  let usageTimer = null;
  function onTask(t) {
    state.tasks.delete(t.task_id);
    state.tasks.set(t.task_id, t);
    while (state.tasks.size > MAX_TASKS) {
      state.tasks.delete(state.tasks.keys().next().value);
    }
    renderTasks();
    if (state.selected === t.task_id) renderDetail(t);
    if (t.status === "completed") {
      clearTimeout(usageTimer);
      usageTimer = setTimeout(loadUsage, 3000);
    }
  }

  function onLog(line) {
    state.logs.push(line);
    if (state.logs.length > MAX_LOG_LINES) state.logs.splice(0, state.logs.length - MAX_LOG_LINES);
    appendLog(line);
  }

  // ---------- data loaded on demand ----------

  async function loadInfo() {
    try {
      state.info = await api("/api/cluster");
      state.info.loadedAt = Date.now();
      renderHeader();
    } catch (e) {
      if (e instanceof Unauthorized) showLogin("That key was refused.");
    }
  }

  async function loadWorkers() {
    try {
      setWorkers(await api("/api/workers"));
    } catch (e) {
      if (e instanceof Unauthorized) showLogin("That key was refused.");
    }
  }

  function setWorkers(list) {
    state.workers = list.map((w) => Object.assign({}, w, { status: displayStatus(w.status, w.worker_id) }));
    state.workersAt = Date.now();
    renderWorkers();
    renderLogSources();
  }

  // A worker the orchestrator declared dead shows as dead until it is back.
  function displayStatus(status, id) {
    const ev = state.lastEvent.get(id);
    if (ev && (ev.state === "dead" || ev.state === "revoked") && status !== "online" && status !== "busy") {
      return ev.state;
    }
    return status;
  }

  async function loadUsage() {
    try {
      const by = $("usage-by").value;
      renderUsage(await api("/api/usage?by=" + encodeURIComponent(by)));
    } catch (e) {
      if (e instanceof Unauthorized) showLogin("That key was refused.");
    }
  }

  // ---------- rendering ----------

  function renderHeader() {
    const i = state.info;
    if (!i) return;
    $("cluster-name").textContent = i.name;
    document.title = i.name + " · d8";
    const up = i.uptime_secs + (Date.now() - i.loadedAt) / 1000;
    $("cluster-meta").textContent = "d8 " + i.version + " · up " + ago(up * 1000) + (i.mdns ? " · found by workers over mDNS" : " · mDNS off");
    $("base-url").textContent = location.origin + "/v1";
  }

  function renderCards() {
    const s = state.stats;
    if (!s) return;
    $("c-workers").textContent = num(s.workers.online);
    $("c-pending").textContent = num(s.tasks.pending);
    $("c-running").textContent = num(s.tasks.assigned);
    $("c-completed").textContent = num(s.tasks.completed);
    $("c-failed").textContent = num(s.tasks.failed);
    $("c-rate").textContent = s.tasks.completed + s.tasks.failed > 0 ? s.performance.success_rate.toFixed(1) + " %" : "–";
    $("c-requeued").textContent = num(s.queue ? s.queue.requeued : undefined);
    const lat = latencies();
    $("c-latency").textContent = lat ? duration(lat[0]) : "–";
    $("c-latency95").textContent = "p95 " + (lat ? duration(lat[1]) : "–");
  }

  // p50 and p95 of how long the recent finished tasks took.
  function latencies() {
    const d = [];
    for (const t of state.tasks.values()) {
      if (t.status === "completed" && t.completed_at) {
        d.push(Date.parse(t.completed_at) - Date.parse(t.created_at));
      }
    }
    if (d.length === 0) return null;
    d.sort((a, b) => a - b);
    const at = (q) => d[Math.min(d.length - 1, Math.floor(q * d.length))];
    return [at(0.5), at(0.95)];
  }

  function renderQueue() {
    const s = state.stats;
    if (!s) return;
    const by = (s.queue && s.queue.pending_by_priority) || {};
    const rows = Object.keys(by).map(Number).sort((a, b) => b - a);
    const max = Math.max(1, ...rows.map((p) => by[p]));
    const box = $("priorities");
    box.replaceChildren(
      ...rows.map((p) => {
        const bar = el("div", { class: "bar" });
        bar.style.width = Math.max(1, (100 * by[p]) / max) + "%";
        return el("div", { class: "bar-row" }, el("span", { text: "P" + p }), el("div", null, bar), el("span", { class: "n", text: num(by[p]) }));
      }),
    );
    $("priorities-empty").classList.toggle("hidden", rows.length > 0);
  }

  function sample() {
    const s = state.stats;
    if (!s) return;
    const now = Date.now();
    state.samples.push([now, s.tasks.completed + s.tasks.failed]);
    while (state.samples.length > 0 && now - state.samples[0][0] > 121000) state.samples.shift();
    const rates = [];
    for (let i = 1; i < state.samples.length; i++) {
      const [t0, n0] = state.samples[i - 1];
      const [t1, n1] = state.samples[i];
      rates.push(((n1 - n0) * 1000) / Math.max(1, t1 - t0));
    }
    const recent = rates.slice(-5);
    const tps = recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : 0;
    $("tps").textContent = tps.toFixed(1);
    drawSpark(rates);
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#1f6feb";
  }

  function drawSpark(rates) {
    const c = $("spark");
    const g = c.getContext("2d");
    g.clearRect(0, 0, c.width, c.height);
    if (rates.length < 2) return;
    const max = Math.max(1, ...rates);
    g.strokeStyle = cssVar("--accent");
    g.lineWidth = 1.5;
    g.beginPath();
    rates.forEach((r, i) => {
      const x = (i / (rates.length - 1)) * (c.width - 2) + 1;
      const y = c.height - 2 - (r / max) * (c.height - 4);
      if (i === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    });
    g.stroke();
  }

  function cooldownsOf(id) {
    const s = state.stats;
    if (!s || !s.cooldowns) return [];
    const now = Date.now();
    return s.cooldowns
      .filter((c) => c.worker_id === id)
      .map((c) => Object.assign({}, c, { left: c.disabled ? null : c.remaining_ms - (now - c.at) }))
      .filter((c) => c.left === null || c.left > 0);
  }

  // A worker's providers began or stopped resting: show it at once.
  function onRests(v) {
    const s = state.stats;
    if (!s) return;
    const now = Date.now();
    const others = (s.cooldowns || []).filter((c) => c.worker_id !== v.worker_id);
    const mine = (v.rests || []).map((c) => Object.assign({ worker_id: v.worker_id, at: now }, c));
    s.cooldowns = others.concat(mine);
    renderWorkers();
  }

  function renderWorkers() {
    const body = $("workers").tBodies[0];
    const now = Date.now();
    const rows = state.workers.map((w) => {
      const offers = (w.offers || []).map((o) =>
        el(
          "span",
          { class: "chip " + o.tier },
          o.provider + " · " + o.tier + (o.latency_ms ? " · " + duration(o.latency_ms) : "") + " ",
          el("span", { class: "models", text: (o.models || []).join(", ") }),
        ),
      );
      const rests = cooldownsOf(w.worker_id).map((c) =>
        el("div", {
          class: "rest",
          text: c.provider + (c.model ? "/" + c.model : "") + ": " + (c.disabled ? "key rejected" : (c.reason || "resting").replace("_", " ") + " " + countdown(c.left)),
        }),
      );
      const heard = w.last_seen_ms_ago === null || w.last_seen_ms_ago === undefined ? "–" : ago(w.last_seen_ms_ago + (now - state.workersAt)) + " ago";
      const system = [w.os, w.arch].filter(Boolean).join(" / ") || "–";
      const slots = w.slots ? (w.active_tasks || 0) + " / " + w.slots : "–";
      const revoke = w.status === "revoked" ? null : el("button", { class: "small danger", type: "button", text: "Revoke", onclick: () => revokeWorker(w.worker_id) });
      return el(
        "tr",
        { "data-worker": w.worker_id },
        el("td", { text: w.worker_id }),
        el("td", null, badge(w.status)),
        el("td", { text: system }),
        el("td", { class: "num", text: slots }),
        el("td", { class: "providers" }, ...offers),
        el("td", null, ...(rests.length ? rests : ["–"])),
        el("td", { text: heard }),
        el("td", null, revoke),
      );
    });
    body.replaceChildren(...rows);
    $("workers-empty").classList.toggle("hidden", rows.length > 0);
  }

  async function revokeWorker(id) {
    if (!confirm("Revoke worker " + id + "? It is disconnected now and its certificate stops working; it would need a new join token to come back.")) return;
    try {
      await api("/api/workers/" + encodeURIComponent(id), { method: "DELETE" });
      refreshWorkersSoon();
    } catch (e) {
      alert("Could not revoke " + id + ": " + e.message);
    }
  }

  function renderTasks() {
    const body = $("tasks").tBodies[0];
    const now = Date.now();
    const list = Array.from(state.tasks.values()).reverse();
    body.replaceChildren(
      ...list.map((t) => {
        const took = t.completed_at ? Date.parse(t.completed_at) - Date.parse(t.created_at) : null;
        const row = el(
          "tr",
          { "data-task": t.task_id, onclick: () => openDetail(t.task_id) },
          el("td", { text: t.task_id }),
          el("td", { text: t.type }),
          el("td", null, badge(t.status)),
          el("td", { text: t.worker_id || "–" }),
          el("td", { text: t.agent_id || "–" }),
          el("td", { text: ago(now - Date.parse(t.created_at)) }),
          el("td", { text: took === null ? "–" : duration(took) }),
        );
        if (t.task_id === state.selected) row.classList.add("selected");
        return row;
      }),
    );
    renderCards();
  }

  // ---------- task detail with its live output ----------

  function renderDetail(t) {
    $("d-id").textContent = t.task_id;
    const b = $("d-status");
    b.className = "badge " + t.status;
    b.textContent = t.status;
    const parts = [t.type, "priority " + t.priority];
    if (t.worker_id) parts.push("on " + t.worker_id);
    if (t.agent_id) parts.push("agent " + t.agent_id);
    if (t.attempts) parts.push(t.attempts + " attempt" + (t.attempts === 1 ? "" : "s"));
    if (t.result && t.result.provider) parts.push(t.result.provider + "/" + t.result.model);
    $("d-meta").textContent = parts.join(" · ");
    if (t.result && typeof t.result.content === "string" && t.status === "completed") {
      $("d-output").textContent = t.result.content;
    }
    $("d-error").textContent = t.error ? "Error: " + t.error : "";
  }

  async function openDetail(id) {
    if (state.detailAbort) state.detailAbort.abort();
    state.selected = id;
    $("detail").classList.remove("hidden");
    $("d-output").textContent = "";
    $("d-error").textContent = "";
    renderTasks();
    const known = state.tasks.get(id);
    if (known) renderDetail(known);
    let t;
    try {
      t = await api("/api/tasks/" + encodeURIComponent(id));
    } catch (e) {
      if (e instanceof Unauthorized) return showLogin("That key was refused.");
      $("d-error").textContent = e.message;
      return;
    }
    if (state.selected !== id) return;
    renderDetail(t);
    if (t.status === "pending" || t.status === "assigned") follow(id);
  }

  // Reads /api/tasks/{id}/stream: the text so far, new pieces, the end.
  async function follow(id) {
    const abort = new AbortController();
    state.detailAbort = abort;
    try {
      const r = await fetch("/api/tasks/" + encodeURIComponent(id) + "/stream", { headers: headers({ Accept: "text/event-stream" }), signal: abort.signal, cache: "no-store" });
      if (!r.ok || !r.body) return;
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      let attempt = 0;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += decoder.decode(value, { stream: true });
        let at;
        while ((at = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, at);
          buf = buf.slice(at + 2);
          let event = "message";
          let data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
          }
          if (!data || state.selected !== id) continue;
          const v = JSON.parse(data);
          const out = $("d-output");
          if (event === "chunk") {
            if (v.attempt !== attempt) {
              attempt = v.attempt;
              out.textContent = "";
            }
            out.textContent += v.text;
            out.scrollTop = out.scrollHeight;
          } else if (event === "reset") {
            attempt = v.attempt;
            out.textContent = v.text;
          } else if (event === "done") {
            renderDetail(v);
            return;
          }
        }
      }
    } catch (_) {
      // closed or aborted: the task event still brings the final state
    }
  }

  function closeDetail() {
    if (state.detailAbort) state.detailAbort.abort();
    state.selected = null;
    $("detail").classList.add("hidden");
    renderTasks();
  }

  async function tryPrompt(ev) {
    ev.preventDefault();
    const input = $("try-prompt");
    const text = input.value.trim();
    if (!text) return;
    try {
      const r = await api("/api/tasks", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ type: "agent_action", data: { messages: [{ role: "user", content: text }], stream: true } }),
      });
      input.value = "";
      openDetail(r.task_id);
    } catch (e) {
      if (e instanceof Unauthorized) return showLogin("That key was refused.");
      alert("Could not submit: " + e.message);
    }
  }

  // ---------- usage ----------

  function renderUsage(u) {
    const by = u.by || "provider";
    $("usage-key").textContent = by.charAt(0).toUpperCase() + by.slice(1);
    const body = $("usage").tBodies[0];
    body.replaceChildren(
      ...u.rows.map((r) =>
        el(
          "tr",
          null,
          el("td", { text: r.key || "(none)" }),
          el("td", { class: "num", text: num(r.tasks) }),
          el("td", { class: "num", text: num(r.total_tokens) }),
          el("td", { class: "num", text: usd(r.cost_usd) }),
          el("td", { class: "num", text: usd(r.monthly_usd) }),
        ),
      ),
    );
    const t = u.total;
    $("usage").tFoot.replaceChildren(
      el("tr", null, el("td", { text: "total" }), el("td", { class: "num", text: num(t.tasks) }), el("td", { class: "num", text: num(t.total_tokens) }), el("td", { class: "num", text: usd(t.cost_usd) }), el("td", { class: "num", text: usd(t.monthly_usd) })),
    );
    const notes = [];
    if (t.tasks_without_usage) notes.push(t.tasks_without_usage + " task(s) got no token counts from their vendor.");
    if (t.tasks_unpriced) notes.push(t.tasks_unpriced + " task(s) ran on a billed key without a known price (set one in the worker file or the orchestrator's prices.toml).");
    if (u.rows.length === 0) notes.push("No completed task in these 30 days yet.");
    notes.push("Monthly: the cost of this period at its pace, over 30 days. Local and free-tier keys cost nothing.");
    $("usage-note").textContent = notes.join(" ");
    drawUsage(u.daily || []);
  }

  function drawUsage(daily) {
    const c = $("usage-chart");
    const ratio = window.devicePixelRatio || 1;
    const w = c.clientWidth || 640;
    const h = c.clientHeight || 120;
    c.width = Math.round(w * ratio);
    c.height = Math.round(h * ratio);
    const g = c.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, w, h);
    if (daily.length === 0) return;
    const useCost = daily.some((d) => d.cost_usd > 0);
    const val = (d) => (useCost ? d.cost_usd : d.total_tokens);
    const max = Math.max(...daily.map(val));
    const bw = w / daily.length;
    g.fillStyle = cssVar("--accent");
    daily.forEach((d, i) => {
      const bh = max > 0 ? (val(d) / max) * (h - 18) : 0;
      g.fillRect(i * bw + 1, h - 14 - bh, Math.max(1, bw - 2), bh);
    });
    g.fillStyle = cssVar("--muted");
    g.font = "11px sans-serif";
    g.fillText(daily[0].day, 2, h - 2);
    const last = daily[daily.length - 1].day;
    g.fillText(last, w - g.measureText(last).width - 2, h - 2);
    const label = useCost ? "US$ per day, max " + usd(max) : "tokens per day, max " + num(max);
    g.fillText(label, 2, 11);
  }

  // ---------- logs ----------

  function logWanted(line) {
    const src = $("log-source").value;
    const level = $("log-level").value;
    if (src === "orchestrator" && line.source !== "orchestrator") return false;
    if (src && src !== "orchestrator" && line.worker !== src) return false;
    return (LEVELS[line.level] ?? 9) <= LEVELS[level];
  }

  function logNode(line) {
    const fields = Object.entries(line.fields || {})
      .map(([k, v]) => " " + k + "=" + v)
      .join("");
    return el(
      "div",
      { class: line.level },
      line.ts.slice(11, 19) + " " + line.level.toUpperCase().padEnd(5) + " ",
      el("span", { class: "src", text: "[" + (line.worker || "orchestrator") + "]" }),
      " " + line.message + fields,
    );
  }

  function renderLogs() {
    const box = $("log-lines");
    box.replaceChildren(...state.logs.filter(logWanted).map(logNode));
    box.scrollTop = box.scrollHeight;
  }

  function appendLog(line) {
    if (!logWanted(line)) return;
    const box = $("log-lines");
    const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 24;
    box.append(logNode(line));
    while (box.childElementCount > MAX_LOG_LINES) box.firstChild.remove();
    if (atEnd) box.scrollTop = box.scrollHeight;
  }

  function renderLogSources() {
    const sel = $("log-source");
    const current = sel.value;
    const ids = state.workers.map((w) => w.worker_id).sort();
    sel.replaceChildren(
      el("option", { value: "", text: "all" }),
      el("option", { value: "orchestrator", text: "orchestrator" }),
      ...ids.map((id) => el("option", { value: id, text: id })),
    );
    sel.value = ids.includes(current) || current === "orchestrator" ? current : "";
  }

  // ---------- header actions ----------

  async function showJoin() {
    const code = $("join-cmd");
    try {
      // A fresh token for a day, so the standing one never leaves the
      // orchestrator; it is listed (and revocable) with the others.
      const t = await api("/api/tokens", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ ttl_secs: 86400 }),
      });
      const i = state.info || {};
      const where = i.mdns ? "" : " " + location.hostname + ":" + (i.quic_port || 5000);
      code.textContent = "d8 join" + where + " --token " + t.token + " --provider echo";
      $("join").classList.remove("hidden");
      $("show-join").textContent = "New join command";
    } catch (e) {
      if (e instanceof Unauthorized) return showLogin("That key was refused.");
      alert("Could not make a join token: " + e.message);
    }
  }

  async function copyBase() {
    try {
      await navigator.clipboard.writeText($("base-url").textContent);
      $("copy-base").textContent = "Copied";
      setTimeout(() => ($("copy-base").textContent = "Copy"), 1500);
    } catch (_) {
      // clipboard needs a secure context; the URL is selectable anyway
    }
  }

  // ---------- start ----------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      state.key = $("key").value.trim();
      sessionStorage.setItem(KEY, state.key);
      $("key").value = "";
      $("login-error").textContent = "";
      connect();
    });
    $("logout").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      state.key = "";
      showLogin("");
    });
    $("reconnect").addEventListener("click", () => {
      retryMs = 1000;
      connect();
    });
    $("show-join").addEventListener("click", showJoin);
    $("copy-base").addEventListener("click", copyBase);
    $("try-form").addEventListener("submit", tryPrompt);
    $("d-close").addEventListener("click", closeDetail);
    $("log-source").addEventListener("change", renderLogs);
    $("log-level").addEventListener("change", renderLogs);
    $("usage-by").addEventListener("change", loadUsage);
    setInterval(() => {
      if (!state.connected) return;
      sample();
      renderHeader();
      renderWorkers();
      if (Date.now() - state.lastByte > STALE_MS) {
        banner("No news from the orchestrator for " + Math.round((Date.now() - state.lastByte) / 1000) + " s; reconnecting.", false);
        connect();
      }
    }, 1000);
    // Heartbeat ages and slot use are not events: refresh them now and then.
    setInterval(() => {
      if (state.connected && !document.hidden) loadWorkers();
    }, 5000);
    setInterval(() => {
      if (state.connected && !document.hidden) loadUsage();
    }, 60000);
    start();
  });

  // Ask for the key only when the orchestrator wants one (`/health` says),
  // so a first visit makes no request that is bound to be refused.
  async function start() {
    if (!state.key) {
      try {
        const h = await fetch("/health", { cache: "no-store" }).then((r) => r.json());
        if (h.auth !== false) return showLogin("");
      } catch (_) {
        // unreachable: connect() shows the banner and retries
      }
    }
    connect();
  }
})();
