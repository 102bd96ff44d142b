// LeadStage dashboard: every figure comes from the metrics API, with the token the user
// gave (kept for this tab only, in sessionStorage). Charts are Chart.js (vendored).
/* global Chart */

const $ = (id) => document.getElementById(id);
const charts = {};
let catalog = null;

// -- API -------------------------------------------------------------------------------

async function api(path, params = {}) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(params)) {
    if (value !== "" && value !== null && value !== undefined) url.searchParams.set(key, value);
  }
  const response = await fetch(url, {
    headers: { Authorization: `Bearer ${sessionStorage.getItem("leadstage.token")}` },
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body?.error?.message ?? body?.detail ?? response.statusText;
    const error = new Error(`${response.status}: ${message}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// -- formatting ------------------------------------------------------------------------

export function percent(ratio) {
  return ratio === null || ratio === undefined ? "n/a" : `${(ratio * 100).toFixed(1)}%`;
}

function ratioText(ratio) {
  // A Ratio is {value, reason}: no value means nothing to divide by, said in the reason.
  return ratio?.value === null || ratio?.value === undefined
    ? `n/a${ratio?.reason ? ` (${ratio.reason})` : ""}`
    : percent(ratio.value);
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function replaceChart(id, config) {
  charts[id]?.destroy();
  charts[id] = new Chart($(id), config);
}

function note(id, text) {
  $(id).textContent = text;
}

function filters() {
  const params = { from: toIsoStart($("from").value), to: toIsoEnd($("to").value) };
  const dimension = $("breakdown").value;
  const segment = $("segment").value;
  if (dimension && segment) params[dimension] = segment;
  return params;
}

function toIsoStart(date) {
  return date ? `${date}T00:00:00Z` : "";
}

function toIsoEnd(date) {
  // The "to" date is inclusive: the whole day counts.
  return date ? `${date}T23:59:59Z` : "";
}

// -- funnel ----------------------------------------------------------------------------

// Writes each step's conversion rate between its bar and the previous one.
const conversionLabels = {
  id: "conversionLabels",
  afterDatasetsDraw(chart, _args, options) {
    const { ctx } = chart;
    const bars = chart.getDatasetMeta(0).data;
    ctx.save();
    ctx.fillStyle = "#1d2733";
    ctx.font = "12px system-ui, sans-serif";
    ctx.textAlign = "center";
    options.rates.forEach((rate, i) => {
      if (i === 0 || !bars[i]) return;
      const x = (bars[i - 1].x + bars[i].x) / 2;
      const y = Math.min(bars[i - 1].y, bars[i].y) - 8;
      ctx.fillText(`→ ${rate}`, x, y);
    });
    ctx.restore();
  },
};

async function loadFunnel(funnel) {
  const summary = await api(`/v1/funnels/${encodeURIComponent(funnel)}/summary`, filters());
  note(
    "funnel-note",
    `${summary.leads} leads entered${summary.entered_from ? ` from ${summary.entered_from.slice(0, 10)}` : ""}` +
      `${summary.entered_to ? ` to ${summary.entered_to.slice(0, 10)}` : ""}; ` +
      `conversion window ${summary.conversion_window_days} days; as of ${summary.as_of.slice(0, 19)}Z.`,
  );
  const tbody = $("funnel-table").querySelector("tbody");
  tbody.replaceChildren();
  for (const stage of summary.stages) {
    const row = document.createElement("tr");
    row.dataset.stage = stage.stage;
    cell(row, stage.stage);
    cell(row, String(stage.reached)).dataset.field = "reached";
    cell(row, String(stage.current)).dataset.field = "current";
    cell(row, ratioText(stage.step_conversion)).dataset.field = "step_conversion";
    cell(row, ratioText(stage.cumulative_conversion)).dataset.field = "cumulative_conversion";
    cell(row, String(stage.in_progress)).dataset.field = "in_progress";
    cell(row, String(stage.dropped)).dataset.field = "dropped";
    tbody.appendChild(row);
  }
  replaceChart("funnel-chart", {
    type: "bar",
    data: {
      labels: summary.stages.map((s) => s.stage),
      datasets: [
        { label: "Reached", data: summary.stages.map((s) => s.reached), backgroundColor: "#2f6fdf" },
        { label: "Now in stage", data: summary.stages.map((s) => s.current), backgroundColor: "#9bb8ee" },
      ],
    },
    options: {
      maintainAspectRatio: false,
      animation: false,
      layout: { padding: { top: 24 } },
      plugins: { conversionLabels: { rates: summary.stages.map((s) => ratioText(s.step_conversion)) } },
    },
    plugins: [conversionLabels],
  });
  return summary;
}

// -- breakdown -------------------------------------------------------------------------

async function loadSegments(funnel) {
  const dimension = $("breakdown").value;
  const select = $("segment");
  const chosen = select.value;
  select.replaceChildren(new Option("all", ""));
  if (!dimension) return;
  try {
    const { from, to } = filters();
    const result = await api(`/v1/funnels/${encodeURIComponent(funnel)}/summary`, {
      breakdown: dimension,
      from,
      to,
    });
    for (const segment of result.segments ?? []) {
      if (segment.value === null) continue; // the unknown segment cannot be filtered on
      select.appendChild(new Option(`${segment.value} (${segment.leads})`, segment.value));
    }
    select.value = chosen;
  } catch (error) {
    select.appendChild(new Option(`unavailable: ${error.message}`, ""));
  }
}

// -- pipeline cards --------------------------------------------------------------------

const PIPELINE_CARDS = [
  ["average_sales_cycle_days", "Average sales cycle (days)", (v) => v.toFixed(1)],
  ["average_deal_size", "Average deal size", (v) => v.toLocaleString("en-US", { maximumFractionDigits: 0 })],
  ["win_rate", "Win rate", percent],
  ["churn_rate_percent", "Churn rate", (v) => `${v.toFixed(1)}%`],
  ["deal_slippage_rate_percent", "Deal slippage", (v) => `${v.toFixed(1)}%`],
  ["pipeline_coverage", "Pipeline coverage", (v) => `${v.toFixed(2)}x`],
  ["romi", "ROMI (incremental)", (v) => `${v.toFixed(2)}x`],
];

function nextDay(date) {
  const day = new Date(`${date}T00:00:00Z`);
  day.setUTCDate(day.getUTCDate() + 1);
  return day.toISOString().slice(0, 10);
}

export function cardText(figure, format) {
  return figure?.value === null || figure?.value === undefined ? "n/a" : format(Number(figure.value));
}

async function loadPipeline() {
  const box = $("pipeline-cards");
  box.replaceChildren();
  let metrics;
  try {
    // Whole days; `to` is exclusive in this endpoint, the page's "to" inclusive.
    metrics = await api("/v1/metrics/sales", {
      from: $("from").value,
      to: nextDay($("to").value),
      period: "month",
      funnel: $("funnel").value,
    });
  } catch (error) {
    box.textContent = `Pipeline metrics unavailable: ${error.message}`;
    return;
  }
  const periods = metrics.periods ?? [];
  const latest = periods[periods.length - 1];
  box.dataset.period = latest?.period ?? "";
  for (const [key, label, format] of PIPELINE_CARDS) {
    const figure = latest?.figures?.[key];
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.metric = key;
    const value = document.createElement("div");
    value.className = "value";
    value.textContent = cardText(figure, format);
    const caption = document.createElement("div");
    caption.className = "label";
    caption.textContent = `${label}, ${latest?.period ?? ""}` + (figure?.reason ? `: ${figure.reason}` : "");
    card.append(value, caption);
    box.appendChild(card);
  }
}

// -- cohorts, time in stage, attribution ----------------------------------------------

async function loadCohorts(funnel) {
  try {
    const result = await api(`/v1/funnels/${encodeURIComponent(funnel)}/cohorts`, {
      ...filters(),
      period: "week",
    });
    const cohorts = result.cohorts ?? [];
    // One line per stage: the share of each cohort that reached it (the report's trends).
    const trends = (result.trends ?? []).slice(1);
    replaceChart("cohort-chart", {
      type: "line",
      data: {
        labels: cohorts.map((c) => c.period_start.slice(0, 10)),
        datasets: trends.map((trend, i) => ({
          label: trend.stage,
          data: trend.points.map((p) => (p.value === null ? null : p.value * 100)),
          borderColor: `hsl(${(i * 57) % 360} 60% 45%)`,
          spanGaps: true,
        })),
      },
      options: { maintainAspectRatio: false, animation: false, scales: { y: { min: 0 } } },
    });
    note(
      "cohort-note",
      `${cohorts.length} weekly cohorts; % of each cohort that reached a stage within ` +
        `${result.follow_days} days.`,
    );
  } catch (error) {
    note("cohort-note", `Cohorts unavailable: ${error.message}`);
  }
}

async function loadTimeInStage(funnel) {
  try {
    const result = await api(`/v1/funnels/${encodeURIComponent(funnel)}/time-in-stage`, filters());
    const stages = result.stages ?? [];
    const days = (measure) => (measure?.value === null || measure?.value === undefined ? null : measure.value / 86400);
    replaceChart("time-chart", {
      type: "bar",
      data: {
        labels: stages.map((s) => s.stage),
        datasets: [
          { label: "Median days", data: stages.map((s) => days(s.median_seconds)), backgroundColor: "#2f6fdf" },
          { label: "p90 days", data: stages.map((s) => days(s.p90_seconds)), backgroundColor: "#9bb8ee" },
        ],
      },
      options: { maintainAspectRatio: false, animation: false },
    });
    note("time-note", result.measures ?? "Completed stays only.");
  } catch (error) {
    note("time-note", `Time in stage unavailable: ${error.message}`);
  }
}

async function loadAttribution(funnel) {
  const tbody = $("attribution-table").querySelector("tbody");
  tbody.replaceChildren();
  try {
    const result = await api(`/v1/funnels/${encodeURIComponent(funnel)}/attribution`, {
      ...filters(),
      stage: $("attribution-stage").value,
      model: $("attribution-model").value,
      by: $("attribution-by").value,
    });
    for (const row of result.credits ?? []) {
      const tr = document.createElement("tr");
      tr.dataset.value = row.value ?? "";
      cell(tr, row.value ?? "(none)");
      cell(tr, Number(row.credit).toFixed(2)).dataset.field = "credit";
      cell(tr, ratioText(row.share)).dataset.field = "share";
      tbody.appendChild(tr);
    }
    note(
      "attribution-note",
      `${result.conversions} conversions to ${result.stage} (${result.unattributed} with no ` +
        `touch before them), ${result.model.replace("_", " ")} model.`,
    );
  } catch (error) {
    note("attribution-note", `Attribution unavailable: ${error.message}`);
  }
}

// -- lead search -----------------------------------------------------------------------

async function searchLead(event) {
  event.preventDefault();
  const query = $("lead-query").value.trim();
  const funnel = $("funnel").value;
  const box = $("lead-result");
  box.replaceChildren();
  try {
    const lead = query.includes("@")
      ? await api("/v1/leads", { email: query, funnel })
      : await api(`/v1/leads/${encodeURIComponent(query)}`, { funnel });
    const heading = document.createElement("p");
    heading.dataset.testid = "lead-stage";
    heading.textContent = `${lead.lead_id}: ${lead.stage ?? "no stage yet"} in ${lead.funnel}` +
      (lead.sales_ready ? " (sales-ready)" : "");
    const timeline = document.createElement("ol");
    timeline.className = "timeline";
    for (const t of lead.transitions) {
      const item = document.createElement("li");
      item.className = t.kind;
      item.textContent = `${t.occurred_at.slice(0, 16).replace("T", " ")}  ${t.kind}: ` +
        `${t.from_stage ?? "—"} → ${t.to_stage} (${t.event_type}, rule ${t.rule})`;
      timeline.appendChild(item);
    }
    box.append(heading, timeline);
  } catch (error) {
    box.textContent = error.status === 404 ? `No lead matches ${query}.` : error.message;
  }
}

// -- wiring ----------------------------------------------------------------------------

async function refresh(event) {
  event?.preventDefault();
  const funnel = $("funnel").value;
  const stages = catalog.byName[funnel].stages.map((s) => s.name);
  const stageSelect = $("attribution-stage");
  if ([...stageSelect.options].map((o) => o.value).join() !== stages.join()) {
    stageSelect.replaceChildren(...stages.map((s) => new Option(s, s)));
    stageSelect.value = stages[stages.length - 1];
  }
  await loadFunnel(funnel);
  await Promise.all([loadPipeline(), loadCohorts(funnel), loadTimeInStage(funnel), loadAttribution(funnel)]);
  document.body.dataset.loaded = "true"; // for tests and screenshots: every panel has answered
}

async function open() {
  try {
    const result = await api("/v1/funnels");
    catalog = { ...result, byName: Object.fromEntries(result.funnels.map((f) => [f.name, f])) };
  } catch (error) {
    sessionStorage.removeItem("leadstage.token");
    $("token-error").textContent = error.status === 401 || error.status === 403
      ? "That token is not valid for the metrics API."
      : error.message;
    return;
  }
  $("funnel").replaceChildren(...catalog.funnels.map((f) => new Option(f.name, f.name)));
  $("funnel").value = catalog.default;
  if (!$("from").value || !$("to").value) {
    const today = new Date();
    $("to").value = today.toISOString().slice(0, 10);
    today.setUTCDate(today.getUTCDate() - 90);
    $("from").value = today.toISOString().slice(0, 10);
  }
  $("token-form").hidden = true;
  $("filters").hidden = false;
  $("dashboard").hidden = false;
  await refresh();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("leadstage.token", $("token").value.trim());
  $("token").value = "";
  open();
});
$("filters").addEventListener("submit", refresh);
$("funnel").addEventListener("change", refresh);
$("breakdown").addEventListener("change", async () => {
  $("segment").value = "";
  await loadSegments($("funnel").value);
  await refresh();
});
$("segment").addEventListener("change", refresh);
$("attribution-form").addEventListener("change", () => loadAttribution($("funnel").value));
$("lead-form").addEventListener("submit", searchLead);
$("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem("leadstage.token");
  window.location.reload();
});

if (sessionStorage.getItem("leadstage.token")) open();
