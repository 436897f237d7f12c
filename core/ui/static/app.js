// Touchstream CX live page. Reads only /ui/api/<name> (named queries, run read-only
// on the server) and renders with textContent: event text (comments are user input)
// never becomes markup.
"use strict";

(() => {
  const WINDOWS = { "1h": "last hour", "1d": "last 24 h", "30d": "last 30 days" };
  const KPIS = [
    { id: "nps", label: "NPS", fmt: signed1, range: [-100, 100], higherIsBetter: true },
    { id: "csat", label: "CSAT", fmt: percent, range: [0, 1], higherIsBetter: true },
    { id: "ces", label: "CES (1–7)", fmt: (v) => v.toFixed(2), range: [1, 7], higherIsBetter: true },
    { id: "checkout_abandonment", label: "Checkout abandonment", fmt: percent, range: [0, 1], higherIsBetter: false },
    { id: "churn", label: "Churn", fmt: percent, range: [0, 1], higherIsBetter: false },
  ];
  const KINDS = {
    nps_detractor: "NPS detractor",
    csat_low: "low CSAT",
    ces_low: "low CES",
    negative_comment: "negative comment",
  };
  const PALETTE = ["#2f5bea", "#e04f39", "#12a150", "#9e58e0", "#f79009", "#0ba5c0", "#d444b0", "#667085"];
  const ALERT_ROWS = 200;

  const params = new URLSearchParams(location.search);
  const view = {
    win: WINDOWS[params.get("window")] ? params.get("window") : "1d",
    channel: /^[a-z][a-z0-9_]{0,31}$/.test(params.get("channel") || "") ? params.get("channel") : "all",
    refreshS: clamp(Number(params.get("refresh")) || 5, 1, 60),
  };
  const charts = {};
  let refreshes = 0;
  let timer = null;
  let running = false;
  let again = false;

  // --- helpers -----------------------------------------------------------
  function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }
  function signed1(v) { return (v > 0 ? "+" : "") + v.toFixed(1); }
  function percent(v) { return (v * 100).toFixed(1) + "%"; }
  function count(v) { return Number.isInteger(v) ? String(v) : v.toFixed(2); }
  function $(id) { return document.getElementById(id); }

  /** An element with text (never HTML), attributes, dataset and children. */
  function el(tag, opts = {}, children = []) {
    const node = document.createElement(tag);
    if (opts.cls) node.className = opts.cls;
    if (opts.text !== undefined && opts.text !== null) node.textContent = String(opts.text);
    for (const [k, v] of Object.entries(opts.attrs || {})) node.setAttribute(k, String(v));
    for (const [k, v] of Object.entries(opts.data || {})) node.dataset[k] = String(v);
    for (const child of children) if (child) node.appendChild(child);
    return node;
  }
  function fill(tbody, rows) { tbody.replaceChildren(...rows); }
  function emptyRow(columns, text) {
    return el("tr", {}, [el("td", { text, cls: "note", attrs: { colspan: columns } })]);
  }
  function duration(seconds) {
    if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }
  function utc(iso) { return iso ? iso.replace("T", " ").replace(/\.\d+Z$|Z$/, "") + " UTC" : "—"; }
  function bar(share, cls) {
    const inner = el("span");
    inner.style.width = clamp(share * 100, 0, 100).toFixed(1) + "%";
    return el("div", { cls: "bar" + (cls ? " " + cls : "") }, [inner]);
  }
  /** Red (worse) → green (better) on the KPI's range. */
  function colour(kpi, value) {
    const [lo, hi] = kpi.range;
    let t = clamp((value - lo) / (hi - lo), 0, 1);
    if (!kpi.higherIsBetter) t = 1 - t;
    return `hsl(${Math.round(t * 125)} 70% ${Math.round(86 - 4 * Math.abs(t - 0.5))}%)`;
  }

  async function api(name, extra = {}) {
    const query = new URLSearchParams(extra);
    const response = await fetch(`api/${name}?${query}`, { cache: "no-store", credentials: "same-origin" });
    const body = await response.json().catch(() => ({ error: `${name}: HTTP ${response.status}` }));
    if (!response.ok) throw new Error(body.error || `${name}: HTTP ${response.status}`);
    return body;
  }

  // --- panels ------------------------------------------------------------
  function renderGrid(doc) {
    const head = $("kpi-grid-head");
    if (head.children.length === 1) {
      for (const kpi of KPIS) head.appendChild(el("th", { text: kpi.label, attrs: { scope: "col" }, data: { kpi: kpi.id } }));
    }
    const cells = new Map();
    let since = null;
    let until = null;
    for (const row of doc.rows) {
      cells.set(`${row.kpi}|${row.touchpoint}`, row);
      if (row.touchpoint === "all") {
        if (!since || row.since < since) since = row.since;
        if (!until || row.until > until) until = row.until;
      }
    }
    const shown = new Set(KPIS.map((k) => k.id));
    const touchpoints = [...new Set(doc.rows.filter((r) => shown.has(r.kpi)).map((r) => r.touchpoint))]
      .filter((t) => t !== "all").sort();
    touchpoints.push("all");
    const rows = touchpoints.map((tp) => {
      const tr = el("tr", { cls: tp === "all" ? "total" : "", data: { touchpoint: tp } }, [
        el("th", { text: tp === "all" ? "all touchpoints" : tp, attrs: { scope: "row" } }),
      ]);
      for (const kpi of KPIS) {
        const row = cells.get(`${kpi.id}|${tp}`);
        const td = el("td", { cls: "kpi", data: { kpi: kpi.id, touchpoint: tp } });
        if (!row || row.value === null || row.value === undefined) {
          td.classList.add("empty");
          td.appendChild(el("span", { cls: "value", text: "—" }));
          td.appendChild(el("span", { cls: "ratio", text: row ? `${count(row.numerator)} / ${count(row.denominator)}` : "" }));
        } else {
          td.appendChild(el("span", { cls: "value", text: kpi.fmt(row.value) }));
          td.appendChild(el("span", { cls: "ratio", text: `${count(row.numerator)} / ${count(row.denominator)}` }));
          td.style.backgroundColor = colour(kpi, row.value);
          td.dataset.value = String(row.value);
        }
        tr.appendChild(td);
      }
      return tr;
    });
    fill($("kpi-grid").tBodies[0], doc.rows.length ? rows : [emptyRow(KPIS.length + 1, "No KPI windows in this window yet.")]);
    const channel = view.channel === "all" ? "all channels" : `channel ${view.channel}`;
    $("grid-note").textContent = `${WINDOWS[view.win]}, ${channel}` +
      (since ? ` — KPI windows from ${utc(since)} to ${utc(until)}` : "");
  }

  function renderSeries(doc, id, axisFmt, valueFmt) {
    const host = $(id);
    const note = $(id + "-note");
    const size = Number(doc.params.window_size);
    const xs = [...new Set(doc.rows.map((r) => Date.parse(r.window_start) / 1000 + size))].sort((a, b) => a - b);
    const touchpoints = [...new Set(doc.rows.map((r) => r.touchpoint))].sort();
    const index = new Map(xs.map((x, i) => [x, i]));
    const data = [xs];
    for (const tp of touchpoints) {
      const ys = new Array(xs.length).fill(null);
      for (const r of doc.rows) {
        if (r.touchpoint === tp) ys[index.get(Date.parse(r.window_start) / 1000 + size)] = r.value;
      }
      data.push(ys);
    }
    note.textContent = xs.length
      ? `${size === 86400 ? "daily" : size / 3600 + "-hour rolling"} windows, by end time, ${view.channel === "all" ? "all channels" : view.channel}`
      : "No windows in this range yet.";
    const key = touchpoints.join("|");
    let chart = charts[id];
    if (typeof uPlot === "undefined") {
      note.textContent = "Chart library not loaded.";
      return;
    }
    if (!xs.length) {
      if (chart) { chart.plot.destroy(); delete charts[id]; }
      host.replaceChildren();
      return;
    }
    if (chart && chart.key === key) {
      chart.plot.setData(data);
      return;
    }
    if (chart) chart.plot.destroy();
    host.replaceChildren();
    const opts = {
      width: Math.max(300, host.clientWidth),
      height: 240,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      series: [{}].concat(touchpoints.map((tp, i) => ({
        label: tp,
        stroke: PALETTE[i % PALETTE.length],
        width: 2,
        value: (u, v) => (v === null || v === undefined ? "—" : valueFmt(v)),
      }))),
      axes: [{}, { values: (u, vals) => vals.map(axisFmt), size: 56 }],
    };
    charts[id] = { key, plot: new uPlot(opts, data, host) };
  }

  function renderFunnel(doc) {
    const rows = doc.rows.map((r) => {
      const tr = el("tr", { cls: r.channel === view.channel ? "selected" : "", data: { channel: r.channel } }, [
        el("th", { text: r.channel, attrs: { scope: "row" } }),
      ]);
      for (const step of ["started", "shipping", "payment", "review", "ordered"]) {
        const td = el("td", { cls: "num" }, [el("span", { text: r[step] })]);
        td.appendChild(bar(r.started ? r[step] / r.started : 0));
        tr.appendChild(td);
      }
      tr.appendChild(el("td", { cls: "num", text: r.conversion === null ? "—" : percent(r.conversion) }));
      return tr;
    });
    fill($("funnel").tBodies[0], rows.length ? rows : [emptyRow(7, "No checkouts in this window.")]);
  }

  function renderPaths(doc) {
    const rows = doc.rows.map((r) => el("tr", {}, [
      el("td", { text: r.path }),
      el("td", { cls: "num", text: r.checkouts }),
      el("td", { cls: "num", text: r.avg_events }),
    ]));
    fill($("paths").tBodies[0], rows.length ? rows : [emptyRow(3, "No abandoned checkout decided in this window.")]);
  }

  function renderAlerts(doc, sla) {
    const shown = doc.rows.slice(0, ALERT_ROWS);
    const past = doc.rows.filter((r) => r.past_sla).length;
    const slaText = sla % 3600 === 0 ? `${sla / 3600} h` : duration(sla);
    $("alerts-count").textContent = `${doc.rows.length} open, ${past} past the ${slaText} SLA`;
    $("alerts-note").textContent = doc.rows.length > ALERT_ROWS
      ? `Oldest ${ALERT_ROWS} shown, ${doc.rows.length - ALERT_ROWS} more.` : "Oldest first, all channels.";
    const rows = shown.map((r) => {
      const share = sla ? r.age_s / sla : 0;
      const left = sla - r.age_s;
      const slaCell = el("td", {}, [
        el("span", { text: r.past_sla ? "past SLA" : `${duration(left)} left` }),
        bar(share, "sla" + (r.past_sla ? " past" : "")),
      ]);
      return el("tr", { cls: r.past_sla ? "past-sla" : "", data: { alertId: r.alert_id, status: r.status } }, [
        el("td", { cls: "age", text: duration(r.age_s), attrs: { title: utc(r.occurred_at) } }),
        slaCell,
        el("td", { text: KINDS[r.kind] || r.kind }),
        el("td", { cls: "num", text: r.score === null ? "—" : r.score }),
        el("td", { text: r.touchpoint }),
        el("td", { text: r.channel }),
        el("td", { text: r.customer }),
        el("td", { text: r.order_id || "—" }),
        el("td", { cls: "text", text: r.text || "" }),
      ]);
    });
    fill($("alerts").tBodies[0], rows.length ? rows : [emptyRow(9, "No open alert.")]);
  }

  function renderTimeToClose(doc) {
    const rows = doc.rows.map((r) => el("tr", {}, [
      el("td", { text: KINDS[r.kind] || r.kind }),
      el("td", { cls: "num", text: r.closed }),
      el("td", { cls: "num", text: duration(r.p50_s) }),
      el("td", { cls: "num", text: duration(r.p90_s) }),
      el("td", { cls: "num", text: duration(r.max_s) }),
      el("td", { cls: "num", text: percent(r.within_sla) }),
    ]));
    fill($("ttc").tBodies[0], rows.length ? rows : [emptyRow(6, "No closed alert yet.")]);
  }

  function renderHealth(doc) {
    const h = doc.rows[0] || {};
    const live = doc.live;
    let sink;
    if (!live) sink = "not in this process (no pipeline here)";
    else if (live.sink_lag === null) sink = `not measured yet (${live.sink_buffered} buffered)`;
    else sink = `${count(live.sink_lag)} not landed (${live.sink_buffered} buffered)`;
    const processes = live && live.worker_processes > 1 ? live.worker_processes : 1;
    const ports = live && live.worker_metrics_port ? ` (port ${live.worker_metrics_port})` : "";
    const worker = live
      ? `${live.worker_running ? "running" : "not running"}` +
        (processes > 1 ? ` (${processes} processes)` : "") +
        `; its consumer lag is on the worker's /metrics${ports}, not measured by this process`
      : "not in this process";
    const items = [
      ["events/s (last minute)", h.events_per_s, "events-per-s"],
      ["events landed, last hour", h.events_last_hour, "events-last-hour"],
      ["last event landed", h.seconds_since_last_event === null ? "never" : duration(h.seconds_since_last_event) + " ago", "last-event"],
      ["dead letters, last hour", h.dead_letters_last_hour, "dead-letters"],
      ["dead letters by reason", h.dead_letter_reasons || "none", "dead-letter-reasons", true],
      ["open alerts (past SLA)", `${h.alerts_open} (${h.alerts_past_sla})`, "alerts-open"],
      ["sink consumer lag, records", sink, "sink-lag", true],
      ["stream worker", worker, "worker", true],
    ];
    $("health").replaceChildren(...items.map(([label, value, key, small]) =>
      el("div", { data: { health: key } }, [el("dt", { text: label }), el("dd", { text: value ?? "—", cls: small ? "small" : "" })])));
  }

  function renderChannels(doc) {
    const select = $("channel");
    const names = doc.rows.map((r) => r.channel);
    if (view.channel !== "all" && !names.includes(view.channel)) names.push(view.channel);
    const options = [el("option", { text: "all channels", attrs: { value: "all" } })]
      .concat(names.sort().map((c) => el("option", { text: c, attrs: { value: c } })));
    select.replaceChildren(...options);
    select.value = view.channel;
  }

  // --- refresh loop ------------------------------------------------------
  async function refresh() {
    if (running) {
      again = true; // a control changed mid-refresh: refresh once more right after
      return;
    }
    running = true;
    again = false;
    clearTimeout(timer);
    const started = performance.now();
    const common = { window: view.win, channel: view.channel };
    const jobs = {
      grid: api("kpi_grid", common),
      nps: api("kpi_by_touchpoint", { ...common, kpi: "nps" }),
      lost: api("kpi_by_touchpoint", { ...common, kpi: "checkout_abandonment" }),
      funnel: api("checkout_funnel", { window: view.win }),
      paths: api("abandonment_paths", common),
      alerts: api("open_detractor_alerts"),
      ttc: api("time_to_close"),
      health: api("pipeline_health"),
      channels: api("channels"),
    };
    const names = Object.keys(jobs);
    const results = await Promise.allSettled(Object.values(jobs));
    const got = {};
    const errors = [];
    results.forEach((r, i) => {
      if (r.status === "fulfilled") got[names[i]] = r.value;
      else errors.push(r.reason.message);
    });
    const draw = [
      ["grid", () => renderGrid(got.grid)],
      ["nps", () => renderSeries(got.nps, "chart-nps", (v) => signed1(v), signed1)],
      ["lost", () => renderSeries(got.lost, "chart-abandonment", (v) => (v * 100).toFixed(0) + "%", percent)],
      ["funnel", () => renderFunnel(got.funnel)],
      ["paths", () => renderPaths(got.paths)],
      ["alerts", () => renderAlerts(got.alerts, got.health ? got.health.sla_s : 86400)],
      ["ttc", () => renderTimeToClose(got.ttc)],
      ["health", () => renderHealth(got.health)],
      ["channels", () => renderChannels(got.channels)],
    ];
    for (const [name, render] of draw) {
      if (!got[name]) continue;
      try { render(); } catch (exc) { errors.push(`${name}: ${exc.message}`); }
    }
    refreshes += 1;
    const took = Math.round(performance.now() - started);
    document.body.dataset.refreshes = String(refreshes);
    document.body.dataset.refreshMs = String(took);
    const status = $("status");
    status.textContent = errors.length
      ? `error: ${errors.join("; ")}`
      : `updated ${new Date().toISOString().slice(11, 19)} UTC (${took} ms), every ${view.refreshS} s`;
    status.className = errors.length ? "error" : "";
    running = false;
    // Refreshes start every refreshS seconds (not refreshS after the last one ended).
    timer = setTimeout(refresh, again ? 0 : Math.max(0, view.refreshS * 1000 - took));
  }

  function syncControls() {
    for (const button of document.querySelectorAll("[data-window]")) {
      button.setAttribute("role", "radio");
      button.setAttribute("aria-checked", String(button.dataset.window === view.win));
    }
    const query = new URLSearchParams({ window: view.win, channel: view.channel });
    if (params.has("refresh")) query.set("refresh", String(view.refreshS));
    history.replaceState(null, "", `?${query}`);
  }

  function start() {
    for (const button of document.querySelectorAll("[data-window]")) {
      button.addEventListener("click", () => {
        view.win = button.dataset.window;
        syncControls();
        refresh();
      });
    }
    $("channel").addEventListener("change", (event) => {
      view.channel = event.target.value;
      syncControls();
      refresh();
    });
    window.addEventListener("resize", () => {
      for (const [id, chart] of Object.entries(charts)) {
        chart.plot.setSize({ width: Math.max(300, $(id).clientWidth), height: 240 });
      }
    });
    syncControls();
    refresh();
  }

  start();
})();
