// Tollgate dashboard: reads the reporting API and draws it with charts.js, with nothing
// from elsewhere. Every value from the API is put in the page as text (textContent or an
// SVG attribute), never as HTML.
"use strict";

(() => {
  const KEY_STORAGE = "tollgate.reportingKey";
  const API = new URL("../v1/", document.baseURI);
  const DAY_MS = 86400e3;
  const PAGE_ROWS = 10000;
  const { integer, compact, usd, percent, localTime, drawSpend, drawBars, drawGauges, drawAlerts } =
    window.TollgateCharts;
  const { drawQuality } = window.TollgateQuality;

  // -- the key ----------------------------------------------------------------------------

  function keyFromFragment() {
    const fragment = new URLSearchParams(location.hash.slice(1));
    const key = fragment.get("key");
    if (key) {
      sessionStorage.setItem(KEY_STORAGE, key);
      fragment.delete("key");
      const rest = fragment.toString();
      history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
    }
    return sessionStorage.getItem(KEY_STORAGE);
  }

  // -- the API ----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, params = {}) {
    const url = new URL(path, API);
    for (const [name, value] of Object.entries(params)) {
      for (const item of Array.isArray(value) ? value : [value]) {
        if (item !== null && item !== undefined) url.searchParams.append(name, String(item));
      }
    }
    const response = await fetch(url, {
      headers: { Authorization: "Bearer " + state.key, Accept: "application/json" },
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = typeof body.detail === "string" ? body.detail : response.statusText;
      throw new ApiError(response.status, `${path}: ${detail}`);
    }
    return body;
  }

  // Every page of an answer, up to maxPages. An answer cut short there is named in the
  // page's "truncated" notice: a chart must not pass part of the rows off as all of them.
  async function allRows(what, path, params, maxPages = 20) {
    const rows = [];
    let offset = 0;
    for (let page = 0; page < maxPages; page++) {
      const body = await api(path, { ...params, offset, limit: PAGE_ROWS });
      rows.push(...body.rows);
      if (body.next_offset === null || body.next_offset === undefined) return rows;
      offset = body.next_offset;
    }
    state.truncated.push(`${what}: only the first ${integer.format(rows.length)} rows are shown`);
    return rows;
  }

  function showTruncated() {
    const notice = document.getElementById("truncated");
    notice.replaceChildren(...state.truncated.map((line) => {
      const item = document.createElement("li");
      item.textContent = line;
      return item;
    }));
    notice.hidden = state.truncated.length === 0;
  }

  // -- the range --------------------------------------------------------------------------

  function chooseRange() {
    const query = new URLSearchParams(location.search);
    const days = Math.max(1, Math.min(366, Number(query.get("days")) || 30));
    const end = query.get("end") ? new Date(query.get("end")) : new Date();
    const start = query.get("start") ? new Date(query.get("start")) : new Date(end - days * DAY_MS);
    if (isNaN(start) || isNaN(end) || end <= start) throw new Error("start/end in the URL are not a range");
    const span = end - start;
    const granularity =
      query.get("granularity") || (span <= 2 * DAY_MS ? "hour" : span <= 120 * DAY_MS ? "day" : "week");
    const tz = query.get("tz") || Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
    const quality = {
      evaluation: query.get("evaluation") || "hallucination",
      label: query.get("label") || "hallucinated",
      score: query.get("score") || "groundedness",
    };
    return { start, end, days, granularity, tz, quality, custom: query.has("start") || query.has("end") };
  }

  const state = { key: null, range: null, truncated: [] };

  function rangeParams() {
    return { start: state.range.start.toISOString(), end: state.range.end.toISOString() };
  }

  function showTotals(totals, savings, errors) {
    const sum = (rows, column) => rows.reduce((acc, row) => acc + Number(row[column] || 0), 0);
    document.getElementById("kpi-spend").textContent = usd(sum(totals, "cost_usd"));
    document.getElementById("kpi-requests").textContent = integer.format(sum(totals, "requests"));
    document.getElementById("kpi-tokens").textContent = compact.format(sum(totals, "total_tokens"));
    const kpiSavings = document.getElementById("kpi-savings");
    kpiSavings.textContent = usd(sum(savings, "net_savings_usd"));
    kpiSavings.title = `${usd(sum(savings, "savings_usd"))} saved on cache reads, less ` +
      `${usd(sum(savings, "cache_write_premium_usd"))} paid extra for cache writes`;
    document.getElementById("kpi-errors").textContent =
      `${integer.format(sum(errors, "requests"))} (${percent(sum(errors, "share_of_requests"))})`;
  }

  // -- the page ---------------------------------------------------------------------------

  function drawRangeLinks() {
    const nav = document.getElementById("ranges");
    const query = new URLSearchParams(location.search);
    nav.replaceChildren(...[1, 7, 30, 90].map((days) => {
      const link = document.createElement("a");
      const params = new URLSearchParams();
      params.set("days", String(days));
      if (query.has("tz")) params.set("tz", query.get("tz"));
      link.href = "?" + params.toString();
      link.textContent = days === 1 ? "24 h" : `${days} d`;
      if (!state.range.custom && state.range.days === days) link.className = "current";
      return link;
    }));
    document.getElementById("range-label").textContent =
      `${localTime(state.range.start.toISOString(), state.range.tz)} – ` +
      `${localTime(state.range.end.toISOString(), state.range.tz)} (${state.range.tz})`;
  }

  function setStatus(phase, message = "") {
    document.body.dataset.state = phase;
    document.getElementById("status").textContent = message;
  }

  function showLogin(message) {
    document.getElementById("board").hidden = true;
    document.getElementById("forget").hidden = true;
    document.getElementById("login").hidden = false;
    document.getElementById("login-error").textContent = message || "";
    setStatus("login");
    document.getElementById("key-input").focus();
  }

  async function load() {
    const caller = await api("whoami");
    document.getElementById("scope").textContent = caller.admin ? "all tenants" : `tenant ${caller.tenant}`;
    document.getElementById("forget").hidden = false;
    document.getElementById("login").hidden = true;
    document.getElementById("board").hidden = false;
    document.getElementById("spend-granularity").textContent = `per ${state.range.granularity}`;
    const range = rangeParams();
    // Budgets as they stand at the end of the range (now, for a range ending now).
    const budgetsAt = new Date(Math.min(Date.now(), state.range.end - 1)).toISOString();
    document.getElementById("budgets-at").textContent = `at ${localTime(budgetsAt, state.range.tz)}`;
    state.truncated = [];
    const { evaluation, label, score } = state.range.quality;
    document.getElementById("quality-what").textContent = `${evaluation}: share labelled ${label}`;
    document.getElementById("quality-rate").textContent = `${label} rate`;
    document.getElementById("quality-score").textContent = `Mean ${score}`;
    const [series, totals, savings, errors, tenants, keys, models, budgets, alerts, rates, scores, speeds] =
      await Promise.all([
      allRows("Spend over time", "spend", { ...range, granularity: state.range.granularity, tz: state.range.tz }),
      allRows("Totals", "spend", range),
      allRows("Cache savings", "cache-savings", range),
      allRows("Failed calls", "errors", range),
      allRows("Top tenants", "top", { ...range, by: "tenant", n: 8 }, 1),
      allRows("Top keys", "top", { ...range, by: "api_key_id", n: 8 }, 1),
      allRows("Top models", "top", { ...range, by: "model", n: 8 }, 1),
      allRows("Budgets", "budgets", { at: budgetsAt }, 1),
      api("alerts", { ...range, limit: 50 }).then((body) => body.rows),
      allRows("Quality", "quality", { ...range, evaluation, label, group_by: "model" }),
      allRows("Mean score", "quality", { ...range, evaluation: score, group_by: "model" }),
      allRows("Latency", "latency", { ...range, group_by: "model" }),
    ]);
    showTotals(totals, savings, errors);
    showTruncated();
    const { tz, granularity } = state.range;
    const drawn = [
      ["spend-chart", (node) => drawSpend(node, series, alerts, { tz, granularity })],
      ["top-tenant", (node) => drawBars(node, "tenant", tenants)],
      ["top-api_key_id", (node) => drawBars(node, "api_key_id", keys)],
      ["top-model", (node) => drawBars(node, "model", models)],
      ["budgets", (node) => drawGauges(node, budgets)],
      ["alerts", (node) => drawAlerts(node, alerts, tz)],
      ["quality", (node) => drawQuality(node, rates, scores, speeds)],
    ];
    for (const [id, draw] of drawn) {
      const node = document.getElementById(id);
      draw(node);
      node.dataset.rendered = "true";
    }
  }

  async function open() {
    state.key = sessionStorage.getItem(KEY_STORAGE);
    if (!state.key) return showLogin("");
    setStatus("loading", "Loading…");
    try {
      await load();
      setStatus("ready", "");
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        sessionStorage.removeItem(KEY_STORAGE);
        return showLogin("That key was not accepted.");
      }
      setStatus("error", error.message);
    }
  }

  function start() {
    try {
      state.range = chooseRange();
    } catch (error) {
      setStatus("error", error.message);
      return;
    }
    drawRangeLinks();
    keyFromFragment();
    document.getElementById("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = document.getElementById("key-input");
      sessionStorage.setItem(KEY_STORAGE, input.value.trim());
      input.value = "";
      open();
    });
    document.getElementById("forget").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORAGE);
      state.key = null;
      showLogin("");
    });
    open();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
