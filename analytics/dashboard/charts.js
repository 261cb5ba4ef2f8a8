// Tollgate dashboard charts: formatting, and the SVG drawings of the reporting API's rows.
// Loaded before dashboard.js, which reads them from window.TollgateCharts. Every value
// from the API is put in the page as text (textContent or an SVG attribute), never as HTML.
"use strict";

window.TollgateCharts = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const ANOMALY_KINDS = new Set(["cost_anomaly", "new_spender"]);

  // -- formatting -------------------------------------------------------------------------

  const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });

  function usd(value) {
    const amount = Number(value || 0);
    const digits = amount !== 0 && Math.abs(amount) < 1 ? 4 : 2;
    return "$" + amount.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }

  function percent(fraction) {
    return (100 * Number(fraction || 0)).toFixed(1) + " %";
  }

  function localTime(iso, tz) {
    return new Date(iso).toLocaleString("en-GB", { timeZone: tz, dateStyle: "medium", timeStyle: "short" });
  }

  // A bucket is a local time without a zone: its wall-clock reading, kept as if UTC.
  function bucketMs(bucket) {
    return Date.parse(bucket.endsWith("Z") ? bucket : bucket + "Z");
  }

  // The wall-clock reading of an instant in the dashboard's time zone, on the same scale.
  function wallClockMs(iso, tz) {
    const parts = Object.fromEntries(
      new Intl.DateTimeFormat("en-US", {
        timeZone: tz, hourCycle: "h23", year: "numeric", month: "2-digit",
        day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
      }).formatToParts(new Date(iso)).map((p) => [p.type, p.value]),
    );
    return Date.UTC(parts.year, parts.month - 1, parts.day, parts.hour, parts.minute, parts.second);
  }

  // -- SVG --------------------------------------------------------------------------------

  function svg(name, attributes = {}, parent = null) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
    if (parent) parent.appendChild(node);
    return node;
  }

  function text(parent, x, y, content, attributes = {}) {
    const node = svg("text", { x, y, ...attributes }, parent);
    node.textContent = content;
    return node;
  }

  function tooltip(node, content) {
    svg("title", {}, node).textContent = content;
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const magnitude = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * magnitude >= value) return step * magnitude;
    return 10 * magnitude;
  }

  function empty(container, message) {
    const note = document.createElement("p");
    note.className = "empty";
    note.textContent = message;
    container.replaceChildren(note);
  }

  // -- the charts -------------------------------------------------------------------------

  // The spend series as an area chart; anomaly alerts in its span are marked on it.
  function drawSpend(container, rows, alerts, { tz, granularity }) {
    container.dataset.buckets = String(rows.length);
    if (!rows.length) return empty(container, "No spend in this range.");
    const width = 960, height = 280, left = 64, right = 16, top = 16, bottom = 36;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", class: "spend" });
    chart.setAttribute("aria-label", "Spend over time");
    const times = rows.map((row) => bucketMs(row.bucket));
    const costs = rows.map((row) => Number(row.cost_usd));
    const t0 = Math.min(...times), t1 = Math.max(...times);
    const yMax = niceMax(Math.max(...costs));
    const x = (t) => (t1 === t0 ? (left + width - right) / 2 : left + ((t - t0) / (t1 - t0)) * (width - left - right));
    const y = (v) => top + (1 - v / yMax) * (height - top - bottom);

    for (let i = 0; i <= 4; i++) {
      const value = (yMax * i) / 4;
      svg("line", { x1: left, x2: width - right, y1: y(value), y2: y(value), class: "grid" }, chart);
      text(chart, left - 8, y(value) + 4, usd(value), { class: "axis", "text-anchor": "end" });
    }
    const labels = Math.min(rows.length, 8);
    for (let i = 0; i < labels; i++) {
      const index = labels === 1 ? 0 : Math.round((i * (rows.length - 1)) / (labels - 1));
      const label = rows[index].bucket.slice(0, granularity === "hour" ? 16 : 10).replace("T", " ");
      const anchor = labels > 1 && i === 0 ? "start" : labels > 1 && i === labels - 1 ? "end" : "middle";
      text(chart, x(times[index]), height - 12, label, { class: "axis", "text-anchor": anchor });
    }

    const points = rows.map((row, i) => [x(times[i]), y(costs[i])]);
    const line = points.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`).join(" ");
    const base = y(0).toFixed(1);
    svg("path", { d: `${line} L${points.at(-1)[0].toFixed(1)},${base} L${points[0][0].toFixed(1)},${base} Z`, class: "area" }, chart);
    svg("path", { d: line, class: "line", "data-points": rows.length }, chart);

    let markers = 0;
    for (const alert of alerts.filter((a) => ANOMALY_KINDS.has(a.kind))) {
      const at = wallClockMs(alert.time, tz);
      if (at < t0 || at > t1) continue;
      const marker = svg("line", { x1: x(at), x2: x(at), y1: top, y2: y(0), class: "anomaly-marker" }, chart);
      tooltip(marker, `${alert.kind}: ${alert.summary}`);
      markers++;
    }
    if (markers) {
      svg("line", { x1: width - right - 150, x2: width - right - 130, y1: top, y2: top, class: "anomaly-marker" }, chart);
      text(chart, width - right - 124, top + 4, "anomaly alert", { class: "axis" });
    }
    rows.forEach((row, i) => {
      const point = svg("circle", {
        cx: points[i][0].toFixed(1), cy: points[i][1].toFixed(1), r: 3.5, class: "point",
        "data-bucket": row.bucket, "data-cost": row.cost_usd,
      }, chart);
      tooltip(point, `${row.bucket.replace("T", " ")}: ${usd(row.cost_usd)}, ${integer.format(row.requests)} requests`);
    });
    container.replaceChildren(chart);
  }

  function drawBars(container, dimension, rows) {
    if (!rows.length) return empty(container, "Nothing in this range.");
    const rowHeight = 26, width = 420, labelWidth = 150, valueWidth = 90;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${rows.length * rowHeight + 4}`, class: "bars" });
    const max = Math.max(...rows.map((row) => Number(row.cost_usd)), 1e-12);
    rows.forEach((row, i) => {
      const name = row[dimension] ?? "(none)";
      const group = svg("g", { class: "bar", "data-name": name, transform: `translate(0 ${i * rowHeight})` }, chart);
      const shown = name.length > 20 ? name.slice(0, 19) + "…" : name;
      text(group, 0, 17, shown, { class: "bar-label" });
      const span = ((width - labelWidth - valueWidth) * Number(row.cost_usd)) / max;
      svg("rect", { x: labelWidth, y: 4, width: Math.max(span, 1).toFixed(1), height: rowHeight - 8, rx: 3 }, group);
      text(group, width, 17, usd(row.cost_usd), { class: "bar-value", "text-anchor": "end" });
      tooltip(group, `${name}: ${usd(row.cost_usd)} (${percent(row.share)} of spend), ${integer.format(row.requests)} requests`);
    });
    container.replaceChildren(chart);
  }

  function drawGauges(container, rows) {
    if (!rows.length) return empty(container, "No budget has a window open at this time.");
    const shown = [...rows].sort((a, b) => Number(b.used_pct || 0) - Number(a.used_pct || 0)).slice(0, 48);
    const nodes = shown.map((row) => {
      const used = Math.max(0, Number(row.used_pct || 0));
      const figure = document.createElement("figure");
      figure.className = `gauge status-${row.status}`;
      figure.dataset.budgetId = row.budget_id;
      figure.dataset.subject = row.subject;
      figure.dataset.usedPct = String(used);
      const dial = svg("svg", { viewBox: "0 0 120 72", role: "img" });
      dial.setAttribute("aria-label", `${row.budget_id} ${used.toFixed(0)} % used`);
      const arc = (fraction) => {
        const angle = Math.PI * (1 - Math.min(fraction, 1));
        return `M10,62 A50,50 0 0 1 ${(60 + 50 * Math.cos(angle)).toFixed(2)},${(62 - 50 * Math.sin(angle)).toFixed(2)}`;
      };
      svg("path", { d: arc(1), class: "track" }, dial);
      if (used > 0) svg("path", { d: arc(used / 100), class: "fill" }, dial);
      text(dial, 60, 58, `${used.toFixed(0)}%`, { class: "gauge-value", "text-anchor": "middle" });
      const caption = document.createElement("figcaption");
      const title = document.createElement("strong");
      title.textContent = row.budget_id;
      const subject = document.createElement("span");
      subject.textContent = row.subject;
      const amounts = document.createElement("span");
      amounts.textContent = row.limit_usd !== null && row.limit_usd !== undefined
        ? `${usd(row.spent_usd)} of ${usd(row.limit_usd)}`
        : `${compact.format(row.spent_tokens)} of ${compact.format(row.limit_tokens)} tokens`;
      caption.append(title, subject, amounts);
      figure.append(dial, caption);
      return figure;
    });
    if (rows.length > shown.length) {
      const more = document.createElement("p");
      more.className = "empty";
      more.textContent = `and ${rows.length - shown.length} more`;
      nodes.push(more);
    }
    container.replaceChildren(...nodes);
  }

  function drawAlerts(table, rows, tz) {
    const body = table.tBodies[0];
    if (!rows.length) {
      const row = document.createElement("tr");
      const cell = row.insertCell();
      cell.colSpan = 5;
      cell.className = "empty";
      cell.textContent = "No alerts in this range.";
      return body.replaceChildren(row);
    }
    body.replaceChildren(...rows.map((alert) => {
      const row = document.createElement("tr");
      row.dataset.alertId = alert.alert_id;
      row.className = `severity-${alert.severity}` + (ANOMALY_KINDS.has(alert.kind) ? " anomaly" : "");
      for (const value of [localTime(alert.time, tz), alert.kind, alert.severity, alert.subject, alert.summary]) {
        row.insertCell().textContent = value ?? "";
      }
      return row;
    }));
  }

  return {
    integer, compact, usd, percent, localTime, drawSpend, drawBars, drawGauges, drawAlerts,
  };
})();
