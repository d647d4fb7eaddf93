// nonstop dashboard: state from /api/state, live updates over server-sent events (/api/events),
// charts drawn as SVG by hand. Everything from the agent is put in the page as text, never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "nonstop-token";
  const PALETTE = ["#2f6fdf", "#e8833a", "#2a9d8f", "#b5487c", "#7a6fdb", "#8c8c3a", "#d1495b", "#4d908e"];
  const ICONS = {
    start: "▶", step: "›", release: "✓", instance_starting: "…", instance_healthy: "✓", switched: "⇄",
    weight: "⇄", draining: "…", drained: "✓", kept_warm: "✓", instance_stopped: "■", smoke_passed: "✓",
    analysis: "≈", analysis_failed: "✗", waiting: "‖", control: "☛", control_ignored: "·", error: "✗",
    recover: "↻", result: "●",
  };

  const S = {
    status: null, history: null, timeline: { deployment: null, events: [] }, samples: [],
    interval: 1, window: 5, colors: new Map(), token: null, authed: false, es: null,
  };
  const MAX_SAMPLES = 300;

  // -- tiny DOM helpers (text only) ------------------------------------------------------------
  const $ = (sel) => document.querySelector(sel);
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "style") Object.assign(el.style, v);
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat()) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }
  const SVGNS = "http://www.w3.org/2000/svg";
  function s(tag, attrs, text) {
    const el = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // -- formatting ----------------------------------------------------------------------------------
  const fmtDur = (sec) => {
    if (sec === null || sec === undefined) return "–";
    if (sec < 60) return `${sec.toFixed(sec < 10 ? 1 : 0)}s`;
    if (sec < 3600) return `${Math.floor(sec / 60)}m ${String(Math.floor(sec % 60)).padStart(2, "0")}s`;
    if (sec < 86400) return `${Math.floor(sec / 3600)}h ${String(Math.floor((sec % 3600) / 60)).padStart(2, "0")}m`;
    return `${Math.floor(sec / 86400)}d ${Math.floor((sec % 86400) / 3600)}h`;
  };
  const fmtAgo = (ts) => {
    if (!ts) return "–";
    const d = Date.now() / 1000 - ts;
    if (d < 90) return `${Math.max(0, Math.round(d))}s ago`;
    if (d < 5400) return `${Math.round(d / 60)}m ago`;
    if (d < 86400 * 2) return `${Math.round(d / 3600)}h ago`;
    return new Date(ts * 1000).toLocaleDateString();
  };
  const fmtClock = (ts) => new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
  const fmtMs = (s) => (s === null || s === undefined ? "–" : s === 0 ? "0" : s < 1 ? `${(s * 1000).toFixed(s < 0.01 ? 1 : 0)} ms` : `${s.toFixed(2)} s`);
  const fmtPct = (r) => (r === null || r === undefined ? "–" : r === 0 ? "0%" : `${(r * 100).toFixed(r < 0.01 && r > 0 ? 2 : 1)}%`);
  const fmtRps = (v) => (v === null || v === undefined ? "–" : v >= 100 ? v.toFixed(0) : v.toFixed(1));

  function color(release) {
    if (!S.colors.has(release)) S.colors.set(release, PALETTE[S.colors.size % PALETTE.length]);
    return S.colors.get(release);
  }

  // -- token -------------------------------------------------------------------------------------------
  function tokenFromFragment() {
    // #token=... never reaches a server (fragments are not sent); drop it from the address bar at once.
    const m = location.hash.match(/(?:^#|&)token=([^&]+)/);
    if (m) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function authHeaders() {
    return S.token ? { Authorization: `Bearer ${S.token}` } : {};
  }

  async function checkToken(token) {
    const r = await fetch("/api/auth", { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
    return r.status === 204;
  }

  function setAuthed(on) {
    S.authed = on;
    document.body.classList.toggle("authed", on);
    const badge = $("#auth-state");
    badge.textContent = on ? "can steer" : "read-only";
    badge.className = "badge" + (on ? " authed" : "");
    $("#unlock").textContent = on ? "Token…" : "Enter token";
  }

  function openTokenDialog(message) {
    const dlg = $("#token-dialog");
    $("#token-error").textContent = message || "";
    $("#token-input").value = "";
    if (!dlg.open) dlg.showModal();
    $("#token-input").focus();
  }

  async function submitToken(ev) {
    ev.preventDefault();
    const tok = $("#token-input").value.trim();
    if (!tok) { $("#token-error").textContent = "paste the token first"; return; }
    if (await checkToken(tok)) {
      S.token = tok;
      sessionStorage.setItem(TOKEN_KEY, tok);
      setAuthed(true);
      $("#token-dialog").close();
      toast("Unlocked: the buttons work in this tab.", "ok");
      render();
    } else {
      $("#token-error").textContent = "That token was refused.";
    }
  }

  // -- actions -----------------------------------------------------------------------------------------
  async function act(path, body, what) {
    let r;
    try {
      r = await fetch(path, {
        method: "POST",
        headers: { "Content-Type": "application/json", ...authHeaders() },
        body: JSON.stringify(body || {}),
        cache: "no-store",
      });
    } catch (e) {
      toast(`${what}: the agent did not answer (${e.message})`, "bad");
      return;
    }
    let data = {};
    try { data = await r.json(); } catch (_) { /* empty body */ }
    if (r.status === 401) {
      toast(`Refused: ${what} needs the token.`, "bad");
      openTokenDialog("Refused without the token. Paste it to unlock the buttons.");
      return;
    }
    if (r.status === 403) {
      S.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      setAuthed(false);
      toast(`Refused: wrong token (${what}).`, "bad");
      openTokenDialog("The token was refused.");
      return;
    }
    if (!r.ok) {
      toast(`${what} refused: ${data.message || r.statusText}`, "bad");
      return;
    }
    toast(`${what}: sent (deployment #${data.deployment}).`, "ok");
  }

  let toastTimer = null;
  function toast(text, kind) {
    const t = $("#toast");
    t.textContent = text;
    t.className = "toast" + (kind ? ` ${kind}` : "");
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, 6000);
  }

  // -- live data -----------------------------------------------------------------------------------------
  function applyState(st) {
    S.status = st.status;
    S.history = st.history;
    S.timeline = st.timeline || { deployment: null, events: [] };
    S.samples = (st.samples || []).slice(-MAX_SAMPLES);
    S.interval = st.interval || 1;
    S.window = st.window || 5;
    $("#app-name").textContent = st.app || "";
    document.title = `${st.app} · nonstop`;
    render();
  }

  function applyTick(t) {
    S.samples.push(t.sample);
    if (S.samples.length > MAX_SAMPLES) S.samples.splice(0, S.samples.length - MAX_SAMPLES);
    S.status = t.status;
    if (t.history) S.history = t.history;
    render();
  }

  function applyEvent(ev) {
    if (ev.deployment === null || ev.deployment === undefined) return; // agent-level events: not in the timeline
    if (ev.deployment !== S.timeline.deployment) {
      if (ev.type !== "start" && S.timeline.deployment !== null && ev.deployment < S.timeline.deployment) return;
      S.timeline = { deployment: ev.deployment, events: [] };
    }
    if (!S.timeline.events.some((e) => e.id === ev.id)) S.timeline.events.push(ev);
    renderTimeline();
  }

  function connect() {
    const es = new EventSource("/api/events");
    S.es = es;
    const conn = $("#conn");
    const setConn = (state, label) => { conn.dataset.state = state; conn.querySelector(".label").textContent = label; };
    es.addEventListener("state", (e) => { applyState(JSON.parse(e.data)); setConn("live", "live"); });
    es.addEventListener("tick", (e) => { applyTick(JSON.parse(e.data)); setConn("live", "live"); });
    es.addEventListener("event", (e) => applyEvent(JSON.parse(e.data)));
    es.onerror = () => setConn(es.readyState === EventSource.CLOSED ? "down" : "connecting", "reconnecting…");
  }

  // -- rendering -------------------------------------------------------------------------------------------
  let pending = false;
  function render() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      releasesInView(); // assigns colours in name order before anything draws
      renderHeader();
      renderSplit();
      renderCharts();
      renderDeployment();
      renderTimeline();
      renderInstances();
      renderHistory();
      renderTls();
    });
  }

  function renderHeader() {
    const st = S.status;
    if (!st) return;
    $("#live-release").textContent = st.live_release || "none";
    const up = st.agent && st.agent.started_at ? fmtDur(Date.now() / 1000 - st.agent.started_at) : "–";
    $("#meta").textContent = `http://${st.listen} · router ${st.router.type} · agent up ${up}`;
  }

  function releasesInView() {
    // Order: the routing table's (canary first), then any other release seen in the samples.
    const names = [];
    for (const r of (S.status && S.status.routes) || []) if (!names.includes(r.release)) names.push(r.release);
    for (const smp of S.samples) for (const n of Object.keys(smp.releases)) if (!names.includes(n)) names.push(n);
    [...names].sort().forEach(color); // colours by name order, stable for the session
    return names;
  }

  function renderSplit() {
    const bar = $("#split-bar");
    const routes = (S.status && S.status.routes) || [];
    bar.replaceChildren();
    if (!routes.length) {
      bar.append(h("span", { class: "empty" }, "no route: requests are held, then 503"));
    }
    for (const r of routes) {
      if (r.weight <= 0) continue;
      bar.append(h("div", {
        class: "seg", "data-release": r.release, title: `${r.release}: ${r.weight}% → ${r.targets.join(", ")}`,
        style: { flexBasis: `${r.weight}%`, background: color(r.release) },
      }, r.weight >= 7 ? `${r.release} ${r.weight}%` : ""));
    }
    bar.setAttribute("aria-label", "traffic split: " + routes.map((r) => `${r.release} ${r.weight}%`).join(", "));
    const legend = $("#legend");
    legend.replaceChildren(...releasesInView().map((n) => {
      const w = routes.find((r) => r.release === n);
      return h("span", { class: "item" }, h("span", { class: "sw", style: { background: color(n) } }), `${n}${w ? ` ${w.weight}%` : ""}`);
    }));
  }

  function renderCharts() {
    const names = releasesInView();
    const pick = (key) => names.map((n) => ({
      name: n, color: color(n),
      points: S.samples.map((smp) => [smp.ts, smp.releases[n] ? smp.releases[n][key] : null]),
    }));
    const last = S.samples[S.samples.length - 1];
    chart($("#chart-weight"), pick("weight"), { stacked: true, yMax: 100, fmt: (v) => `${v}%`, ticks: [0, 50, 100] });
    chart($("#chart-rps"), pick("rps"), { fmt: fmtRps, unit: " req/s" });
    chart($("#chart-err"), pick("error_rate"), { fmt: fmtPct, minMax: 0.05 });
    chart($("#chart-p99"), pick("p99"), { fmt: fmtMs, minMax: 0.01 });
    const now = (key, fmt) => names
      .filter((n) => last && last.releases[n] && last.releases[n][key] !== null && last.releases[n][key] !== undefined)
      .map((n) => `${n} ${fmt(last.releases[n][key])}`).join("  ·  ");
    $("#now-rps").textContent = now("rps", fmtRps);
    $("#now-err").textContent = now("error_rate", fmtPct);
    $("#now-p99").textContent = now("p99", fmtMs);
  }

  // One SVG chart: time on x (the ring buffer's span), lines per release, or stacked areas (weights).
  function chart(box, series, opt) {
    const W = Math.max(box.clientWidth, 200), H = Math.max(box.clientHeight, 80);
    const pad = { l: 52, r: 8, t: 6, b: 18 };
    const iw = W - pad.l - pad.r, ih = H - pad.t - pad.b;
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
    const tsAll = S.samples.map((x) => x.ts);
    const tEnd = tsAll.length ? tsAll[tsAll.length - 1] : Date.now() / 1000;
    // The axis grows with the data: a minute at least, the ring buffer's length at most.
    const span = Math.min(MAX_SAMPLES * S.interval, Math.max(60, tsAll.length ? tEnd - tsAll[0] : 0));
    const tStart = tEnd - span;
    let yMax = opt.yMax;
    if (yMax === undefined) {
      let m = 0;
      for (const se of series) for (const [, v] of se.points) if (v !== null && v !== undefined && v > m) m = v;
      yMax = niceMax(Math.max(m * 1.15, opt.minMax || 1));
    }
    const X = (t) => pad.l + ((t - tStart) / span) * iw;
    const Y = (v) => pad.t + ih - (Math.min(v, yMax) / yMax) * ih;
    const ticks = opt.ticks || [0, yMax / 2, yMax];
    for (const v of ticks) {
      svg.append(s("line", { class: "gridline", x1: pad.l, x2: W - pad.r, y1: Y(v), y2: Y(v) }));
      svg.append(s("text", { class: "axis", x: pad.l - 6, y: Y(v) + 3.5, "text-anchor": "end" }, opt.fmt(v)));
    }
    const step = span <= 120 ? 15 : 60;
    for (let k = 0; k * step <= span; k++) {
      const ago = k * step;
      const label = ago === 0 ? "now" : ago % 60 === 0 ? `-${ago / 60}m` : `-${ago}s`;
      svg.append(s("text", { class: "axis", x: X(tEnd - ago), y: H - 3, "text-anchor": ago === 0 ? "end" : "middle" }, label));
    }
    const hasData = series.some((se) => se.points.some(([, v]) => v !== null && v !== undefined));
    if (!hasData) {
      svg.append(s("text", { class: "nodata", x: pad.l + iw / 2, y: pad.t + ih / 2, "text-anchor": "middle" },
        S.samples.length ? "no requests yet" : "waiting for samples…"));
    } else if (opt.stacked) {
      const base = S.samples.map(() => 0);
      for (const se of series) {
        const top = se.points.map(([, v], i) => base[i] + (v || 0));
        if (top.some((v, i) => v > base[i])) {
          let d = "";
          se.points.forEach(([t], i) => { d += `${i ? "L" : "M"}${X(t).toFixed(1)},${Y(top[i]).toFixed(1)}`; });
          for (let i = se.points.length - 1; i >= 0; i--) d += `L${X(se.points[i][0]).toFixed(1)},${Y(base[i]).toFixed(1)}`;
          svg.append(s("path", { class: "area", d: d + "Z", fill: se.color, "data-release": se.name }));
        }
        top.forEach((v, i) => { base[i] = v; });
      }
    } else {
      for (const se of series) {
        let d = "", pen = false;
        for (const [t, v] of se.points) {
          if (v === null || v === undefined) { pen = false; continue; }
          d += `${pen ? "L" : "M"}${X(t).toFixed(1)},${Y(v).toFixed(1)}`;
          pen = true;
        }
        if (d) svg.append(s("path", { class: "line", d, stroke: se.color, "data-release": se.name }));
      }
    }
    const cursor = s("line", { class: "cursor", y1: pad.t, y2: pad.t + ih, visibility: "hidden" });
    svg.append(cursor);
    svg.addEventListener("mousemove", (e) => hover(e, svg, cursor, series, opt, { X, tStart, span, pad, iw, W }));
    svg.addEventListener("mouseleave", () => { cursor.setAttribute("visibility", "hidden"); $("#tooltip").hidden = true; });
    box.replaceChildren(svg);
  }

  function hover(e, svg, cursor, series, opt, g) {
    if (!S.samples.length) return;
    const rect = svg.getBoundingClientRect();
    const x = ((e.clientX - rect.left) / rect.width) * g.W;
    const t = g.tStart + ((x - g.pad.l) / g.iw) * g.span;
    let best = 0;
    S.samples.forEach((smp, i) => { if (Math.abs(smp.ts - t) < Math.abs(S.samples[best].ts - t)) best = i; });
    const smp = S.samples[best];
    cursor.setAttribute("x1", g.X(smp.ts));
    cursor.setAttribute("x2", g.X(smp.ts));
    cursor.setAttribute("visibility", "visible");
    const tip = $("#tooltip");
    tip.replaceChildren(h("div", { class: "t" }, fmtClock(smp.ts)), ...series.map((se) => {
      const v = se.points[best] ? se.points[best][1] : null;
      return h("div", { class: "r" }, h("span", { class: "sw", style: { background: se.color } }), `${se.name} ${v === null || v === undefined ? "–" : opt.fmt(v)}`);
    }));
    tip.hidden = false;
    tip.style.left = `${Math.min(e.clientX + 14, window.innerWidth - tip.offsetWidth - 8)}px`;
    tip.style.top = `${e.clientY + 14}px`;
  }

  function niceMax(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function currentDeployment() {
    const st = S.status;
    if (st && st.deployment) return { d: st.deployment, active: true };
    const deps = (S.history && S.history.deployments) || [];
    return { d: deps[0] || null, active: false };
  }

  function renderDeployment() {
    const { d, active } = currentDeployment();
    const stateBadge = $("#dep-state");
    const box = $("#dep-summary");
    const canSteer = active && d && !["promoted", "aborted", "rolled_back", "failed"].includes(d.state);
    const cn = d && d.canary;
    $("#btn-promote").disabled = !canSteer;
    $("#btn-promote-full").disabled = !canSteer;
    $("#btn-abort").disabled = !canSteer;
    $("#btn-rollback").disabled = !!(S.status && S.status.deployment) || !previousRelease();
    if (!d) {
      stateBadge.textContent = "none";
      stateBadge.className = "badge";
      box.replaceChildren(h("p", { class: "muted" }, "No deployment yet."));
      return;
    }
    const state = d.outcome || d.state;
    stateBadge.textContent = state.replace("_", " ");
    stateBadge.className = `badge ${state}`;
    const facts = [
      h("span", {}, "strategy ", h("b", {}, d.strategy)),
      h("span", {}, "from ", h("b", {}, d.from_release || "–")),
      d.phase ? h("span", {}, "phase ", h("b", {}, d.phase)) : null,
      h("span", {}, active ? "running " : "took ", h("b", {}, active ? fmtDur(Date.now() / 1000 - d.started_at) : fmtDur(d.seconds ?? ((d.finished_at || 0) - d.started_at)))),
      !active ? h("span", {}, "ended ", h("b", {}, fmtAgo(d.finished_at))) : null,
    ];
    const kids = [
      h("div", { class: "title" }, `#${d.id} `, h("code", {}, d.release), active ? " rolling out" : ""),
      h("div", { class: "facts" }, facts),
    ];
    if (cn) {
      kids.push(h("div", { class: "facts", "data-testid": "canary" },
        h("span", {}, "canary weight ", h("b", { "data-testid": "canary-weight" }, `${cn.weight}%`)),
        cn.received && cn.received.share != null
          ? h("span", { "data-testid": "canary-received" }, "received ", h("b", {}, fmtPct(cn.received.share)),
              ` of ${cn.received.requests} req`)
          : null,
        h("span", {}, "step ", h("b", {}, `${cn.step}/${cn.steps}`)),
        h("span", {}, "analysis failures ", h("b", {}, `${cn.failures}/${cn.failure_limit}`)),
      ));
      const prog = h("div", { class: "progress", title: `step ${cn.step} of ${cn.steps}` });
      for (let i = 1; i <= cn.steps; i++) prog.append(h("span", { class: "st" + (i < cn.step ? " done" : i === cn.step ? " now" : "") }));
      kids.push(prog);
      if (active && cn.waiting_for) kids.push(h("div", { class: "waiting", "data-testid": "waiting-for" }, `waiting for ${cn.waiting_for}`));
      const lastA = (cn.analysis || [])[(cn.analysis || []).length - 1];
      if (lastA) kids.push(h("div", { class: "facts" }, "last analysis ", h("span", { class: `badge ${lastA.verdict}` }, lastA.verdict), ` ${lastA.summary || ""}`));
    }
    const wt = d && (d.watch || d.batch_watch);
    if (wt && active) {
      const b = wt.baseline;
      kids.push(h("div", { class: "facts", "data-testid": "watch" },
        h("span", {}, "watching ", h("code", {}, wt.release)),
        h("span", {}, h("b", { "data-testid": "watch-remaining" }, fmtDur(wt.remaining)), " left"),
        h("span", {}, "failed checks ", h("b", {}, `${wt.failures}/${wt.failure_limit}`)),
        h("span", {}, "baseline ", h("b", {}, b ? `${fmtPct(b.error_rate)} 5xx, p99 ${fmtMs(b.p99)}` : "none")),
      ));
      const lastW = (wt.analysis || [])[(wt.analysis || []).length - 1];
      if (lastW) kids.push(h("div", { class: "facts" }, `+${lastW.after}s `, h("span", { class: `badge ${lastW.verdict}` }, lastW.verdict), ` ${lastW.summary || ""}`));
    }
    if (!active && d.reason) kids.push(h("div", { class: "reason muted" }, d.reason));
    box.replaceChildren(...kids);
  }

  function renderTimeline() {
    const list = $("#timeline");
    const evs = collapse(S.timeline.events || []);
    const t0 = evs.length ? evs[0].ts : 0;
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 8;
    list.replaceChildren(...evs.map((ev) => {
      const cls = [ev.type];
      if (ev.type === "result") cls.push(ev.ok ? "ok" : "bad");
      if (ev.verdict) cls.push(ev.verdict);
      const extra = [];
      if (ev.type === "analysis" || ev.type === "analysis_failed") {
        const c = ev.canary || {}, st = ev.stable || {};
        if (c.requests !== undefined) {
          extra.push(`canary ${c.requests} req, 5xx ${fmtPct(c.error_rate)}, p99 ${fmtMs(c.p99)}` +
            (ev.stable ? ` · stable ${st.requests} req, 5xx ${fmtPct(st.error_rate)}, p99 ${fmtMs(st.p99)}` : ""));
        }
      }
      if (ev.type === "result" && ev.detail && ev.detail.checks) extra.push(...ev.detail.checks.slice(-3).map(String));
      return h("li", { class: cls.join(" "), "data-type": ev.type, title: fmtClock(ev.ts) },
        h("span", { class: "at" }, `+${(ev.ts - t0).toFixed(1)}s`),
        h("span", { class: "icon" }, ICONS[ev.type] || "·"),
        h("div", { class: "msg" },
          ev.verdict ? h("span", { class: `badge ${ev.verdict}` }, ev.verdict) : null, ev.verdict ? " " : null,
          ev.message, ev.repeat > 1 ? h("span", { class: "repeat", title: `${ev.repeat} times in a row` }, ` ×${ev.repeat}`) : null,
          extra.length ? h("div", { class: "data" }, extra.join("\n")) : null));
    }));
    if (!evs.length) list.append(h("li", { class: "empty" }, "no events yet"));
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  // Analyses that keep saying the same (an inconclusive window filling up) show as one line: the latest, ×N.
  function collapse(evs) {
    const out = [];
    for (const ev of evs) {
      const prev = out[out.length - 1];
      if (prev && ev.type === "analysis" && prev.type === "analysis" && prev.verdict === ev.verdict) {
        out[out.length - 1] = { ...ev, repeat: (prev.repeat || 1) + 1, ts: prev.ts };
      } else out.push(ev);
    }
    return out;
  }

  function renderInstances() {
    const body = $("#instances tbody");
    const rows = ((S.status && S.status.instances) || []).map((i) => {
      const health = i.alive ? i.state : "dead";
      const warm = i.warm_until ? ` (warm ${fmtDur(Math.max(0, i.warm_until - Date.now() / 1000))})` : "";
      return h("tr", { "data-instance": i.id },
        h("td", { class: "mono" }, i.id),
        h("td", { class: "mono" }, h("span", { class: "sw-inline", style: { background: color(i.release) } }), i.release),
        h("td", { class: "mono" }, i.port),
        h("td", {}, h("span", { class: `health ${health}` }, h("span", { class: "dot" }), health + warm)),
        h("td", {}, i.routed ? "yes" : "no"),
        h("td", { class: "mono" }, fmtDur(i.uptime)),
        h("td", { class: "mono" }, i.restarts));
    });
    body.replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 7, class: "muted" }, "no instances"))]));
  }

  function previousRelease() {
    const rels = (S.history && S.history.releases) || [];
    return rels.find((r) => !r.live && r.status !== "bad") || null;
  }

  function renderHistory() {
    const h_ = S.history;
    if (!h_) return;
    const busy = !!(S.status && S.status.deployment);
    const none = (n, text) => [h("tr", {}, h("td", { colspan: n, class: "muted" }, text))];
    if (!h_.releases.length) $("#releases tbody").replaceChildren(...none(5, "no releases yet"));
    else $("#releases tbody").replaceChildren(...h_.releases.map((r) => h("tr", { class: r.live ? "live" : "", "data-release": r.id },
      h("td", { class: "mono" }, h("span", { class: "sw-inline", style: { background: color(r.id) } }), r.id),
      h("td", { class: "mono" }, r.version),
      h("td", {}, h("span", { class: `badge ${r.status}` }, r.status)),
      h("td", {}, fmtAgo(r.created_at)),
      h("td", {}, r.live ? "" : h("button", {
        type: "button", class: "ghost small", disabled: busy, "data-testid": `rollback-${r.id}`,
        onclick: () => rollback(r.id),
      }, "Roll back to")))));
    const live = S.status && S.status.deployment; // fresher than the history for the running one
    const deps = h_.deployments.map((d) => (live && live.id === d.id ? { ...d, ...live } : d));
    if (!deps.length) $("#deployments tbody").replaceChildren(...none(8, "no deployments yet: nonstop deploy"));
    else $("#deployments tbody").replaceChildren(...deps.map((d) => h("tr", { "data-deployment": d.id },
      h("td", { class: "mono" }, d.id),
      h("td", { class: "mono" }, d.release),
      h("td", {}, d.strategy),
      h("td", { class: "mono" }, d.from_release || "–"),
      h("td", {}, h("span", { class: `badge ${d.outcome || d.state}` }, (d.outcome || d.state).replace("_", " "))),
      h("td", { class: "mono" }, d.seconds !== null && d.seconds !== undefined ? fmtDur(d.seconds) : "–"),
      h("td", {}, fmtAgo(d.started_at)),
      h("td", { class: "reason", title: d.reason || "" }, d.reason || ""))));
  }

  // -- HTTPS: what the proxy serves, and ACME's state (with the CA's own words when it refused) --------
  const ACME_BADGE = { valid: "ok", issuing: "progressing", failing: "failed", missing: "pending" };
  const fmtWhen = (iso) => {
    if (!iso) return "–";
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return iso;
    const d = t / 1000 - Date.now() / 1000;
    return d >= 0 ? `${iso} (in ${fmtDur(d)})` : `${iso} (${fmtDur(-d)} ago)`;
  };
  const fmtExpiry = (c) => {
    if (!c.not_after) return "–";
    const days = c.expires_in_days;
    if (days === null || days === undefined) return c.not_after;
    return `${c.not_after} (${days < 0 ? "expired" : days < 1 ? `in ${fmtDur(days * 86400)}` : `in ${days} d`})`;
  };

  function renderTls() {
    const tls = S.status && S.status.tls;
    const card = $("#tls-card");
    const acme = tls && tls.acme;
    const failing = !!(acme && acme.state === "failing");
    $("#tls-alert").hidden = !failing;
    card.hidden = !tls;
    if (!tls) return;
    card.classList.toggle("failing", failing);
    $("#tls-listen").textContent = `https://${tls.listen}`;
    const certs = tls.certificates;
    const body = $("#tls-certs tbody");
    if (!certs || !certs.length) {
      body.replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "muted" },
        certs ? "no certificate served yet" : "the proxy did not say which certificates it serves")));
    } else {
      body.replaceChildren(...certs.map((c) => {
        const soon = c.expires_in_days !== null && c.expires_in_days !== undefined && c.expires_in_days < 7;
        return h("tr", { "data-field": c.field },
          h("td", { class: "mono" }, c.field),
          h("td", { class: "mono", "data-testid": "tls-names" }, (c.names || []).join(", ") || "–"),
          h("td", { class: "reason", title: c.issuer || "" }, c.issuer || "–"),
          h("td", { class: "mono" + (soon ? " soon" : ""), "data-testid": "tls-expiry" }, fmtExpiry(c)),
          h("td", {}, c.reload_error
            ? h("span", { class: "badge bad", title: c.reload_error }, "reload failed")
            : h("span", { class: "badge ok" }, "ok")));
      }));
    }
    const box = $("#tls-acme");
    box.hidden = !acme;
    if (!acme) { box.replaceChildren(); return; }
    const kids = [
      h("div", { class: "facts" },
        h("span", {}, "ACME ", h("span", { class: `badge ${ACME_BADGE[acme.state] || ""}`, "data-testid": "acme-state" }, acme.state)),
        h("span", {}, "domains ", h("b", {}, (acme.domains || []).join(", "))),
        h("span", {}, "next attempt ", h("b", { "data-testid": "acme-next" }, fmtWhen(acme.next_attempt))),
        h("span", {}, "last success ", h("b", {}, acme.last_success || "never")),
        h("span", { class: "mono muted", title: "tls.acme.directory" }, acme.directory || "")),
    ];
    if (failing) {
      const err = acme.last_error || {};
      const problems = (err.problems || []).filter((p) => p && p.detail);
      // a refusal changes nothing the proxy serves: say so, from what it serves (or the stored ACME certificate)
      const serving = (certs || []).length
        ? `The certificate${certs.length > 1 ? "s" : ""} above keep${certs.length > 1 ? "" : "s"} serving until ${certs.length > 1 ? "they expire" : "it expires"}.`
        : acme.certificate ? `The current certificate (valid until ${acme.certificate.not_after}) stays in place.`
          : "No certificate is served yet.";
      kids.push(h("div", { class: "acme-failing", role: "alert", "data-testid": "acme-failing" },
        h("div", { class: "title" },
          `${acme.certificate ? "Renewal" : "Issuance"} failing: `,
          h("b", { "data-testid": "acme-failures" }, `${acme.failures} failed attempt${acme.failures === 1 ? "" : "s"} in a row`),
          err.stage ? ` (stage ${err.stage})` : "", err.at ? `, last at ${err.at}` : ""),
        h("div", { class: "serving", "data-testid": "acme-serving" }, serving),
        h("div", { class: "ca-said" }, "The CA said:"),
        problems.length
          ? h("ul", { class: "problems", "data-testid": "acme-problems" }, problems.map((p) => h("li", {},
              p.type ? h("code", {}, p.type) : null, p.identifier ? ` ${p.identifier}:` : "", ` ${p.detail}`)))
          : null,
        h("pre", { class: "ca-error", "data-testid": "acme-error" }, err.message || "no reason given")));
    }
    box.replaceChildren(...kids);
  }

  function rollback(to) {
    const target = to || (previousRelease() || {}).id;
    if (!window.confirm(`Roll back to ${target || "the previous release"}? Traffic moves without dropping requests.`)) return;
    act("/api/rollback", { to: to || null }, "rollback");
  }

  // -- start -----------------------------------------------------------------------------------------------
  function init() {
    setAuthed(false);
    S.token = tokenFromFragment();
    if (S.token) {
      checkToken(S.token).then((ok) => {
        if (ok) setAuthed(true);
        else { sessionStorage.removeItem(TOKEN_KEY); S.token = null; toast("The token from the link was refused.", "bad"); }
      });
    }
    $("#unlock").addEventListener("click", () => openTokenDialog());
    $("#token-form").addEventListener("submit", submitToken);
    $("#token-cancel").addEventListener("click", () => $("#token-dialog").close());
    $("#token-forget").addEventListener("click", () => {
      S.token = null; sessionStorage.removeItem(TOKEN_KEY); setAuthed(false); $("#token-dialog").close(); render();
    });
    $("#btn-promote").addEventListener("click", () => act("/api/promote", { full: false }, "promote"));
    $("#btn-promote-full").addEventListener("click", () => act("/api/promote", { full: true }, "promote fully"));
    $("#btn-abort").addEventListener("click", () => {
      if (window.confirm("Abort the deployment? All traffic goes back to the stable release.")) act("/api/abort", {}, "abort");
    });
    $("#btn-rollback").addEventListener("click", () => rollback(null));
    window.addEventListener("resize", render);
    setInterval(render, 5000); // uptimes and "ago" move even when nothing else does
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
