// Tollgate dashboard: the quality panel. One row per model: how many answers were judged,
// the share a judge labelled (hallucinated, by default), mean groundedness, cost per good
// answer, time to first token and output speed. The worst rate is marked. Loaded after
// charts.js; every value from the API goes in as text, never as HTML.
"use strict";

window.TollgateQuality = (() => {
  const { integer, usd, percent } = window.TollgateCharts;

  function number(value, digits) {
    return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
  }

  // rates: /v1/quality rows (group_by=model, with a label); scores: the same for a scored
  // evaluation; speeds: /v1/latency rows (group_by=model). Models without a judged call
  // are left out: there is nothing to say of their quality.
  function drawQuality(table, rates, scores, speeds) {
    const body = table.tBodies[0];
    const scoreOf = new Map(scores.map((row) => [row.model, row.mean_score]));
    const speedOf = new Map(speeds.map((row) => [row.model, row]));
    const judged = rates.filter((row) => row.evaluated_calls > 0);
    if (!judged.length) {
      const row = document.createElement("tr");
      const cell = row.insertCell();
      cell.colSpan = 7;
      cell.className = "empty";
      cell.textContent = "No evaluated calls in this range.";
      return body.replaceChildren(row);
    }
    judged.sort((a, b) => b.label_rate - a.label_rate || String(a.model).localeCompare(String(b.model)));
    const worst = judged[0].label_rate;
    body.replaceChildren(...judged.map((rate) => {
      const row = document.createElement("tr");
      row.dataset.model = rate.model ?? "";
      row.dataset.rate = String(rate.label_rate);
      if (rate.label_rate === worst && worst > 0) row.className = "worst";
      const speed = speedOf.get(rate.model) || {};
      const cells = [
        rate.model ?? "(none)",
        `${integer.format(rate.evaluated_calls)} (${percent(rate.coverage)})`,
        null,
        number(scoreOf.get(rate.model), 2),
        rate.cost_per_good_answer === null ? "–" : usd(rate.cost_per_good_answer),
        speed.ttft_ms_p50 === null || speed.ttft_ms_p50 === undefined ? "–" : `${number(speed.ttft_ms_p50, 0)} ms`,
        number(speed.output_tokens_per_s_p50, 0),
      ];
      for (const value of cells) {
        const cell = row.insertCell();
        if (value !== null) {
          cell.textContent = value;
          continue;
        }
        cell.className = "rate";
        const bar = document.createElement("span");
        bar.className = "rate-bar";
        bar.style.width = `${Math.round(100 * (worst > 0 ? rate.label_rate / worst : 0))}%`;
        const text = document.createElement("span");
        text.textContent = percent(rate.label_rate);
        cell.append(bar, text);
      }
      return row;
    }));
  }

  return { drawQuality };
})();
