// Support console: plain JavaScript over the /v1 API; no build step, no third-party code.
"use strict";

const $ = (id) => document.getElementById(id);
const keyInput = $("key");
keyInput.value = sessionStorage.getItem("loyalty-key") || "";
keyInput.addEventListener("change", () => sessionStorage.setItem("loyalty-key", keyInput.value));
let current = null;

async function api(method, path, body) {
  const init = { method, headers: { "X-API-Key": keyInput.value } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json();
  if (!response.ok) {
    throw new Error(`${data.code}: ${data.reason}`);
  }
  return data;
}

// Stored text shown as schemas/text.py `printable` prints it: each control character (and
// U+2028/U+2029) as an escape, so a note or a name cannot break a line or hide text.
function printable(value) {
  return String(value).replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff
      ? `\\x${code.toString(16).padStart(2, "0")}`
      : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = printable(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function showError(err) {
  $("error").textContent = err ? String(err.message || err) : "";
}

$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError(null);
  const list = $("results");
  list.replaceChildren();
  try {
    const prefix = encodeURIComponent($("search").value.trim());
    const members = await api("GET", `/v1/members?prefix=${prefix}&limit=50`);
    if (members.length === 0) list.textContent = "no member found";
    for (const m of members) {
      const li = document.createElement("li");
      li.textContent = `${m.member_id}: ${m.available} available, tier ${m.tier || "-"}`;
      li.dataset.member = m.member_id;
      li.addEventListener("click", () => openMember(m.member_id));
      list.appendChild(li);
    }
  } catch (err) {
    showError(err);
  }
});

async function openMember(memberId) {
  showError(null);
  current = memberId;
  try {
    const audit = await api("GET", `/v1/members/${encodeURIComponent(memberId)}/audit`);
    render(audit);
  } catch (err) {
    showError(err);
    return;
  }
  await renderNotices(memberId);
}

async function renderNotices(memberId) {
  const base = `/v1/members/${encodeURIComponent(memberId)}/notifications`;
  const body = $("notices").querySelector("tbody");
  body.replaceChildren();
  let prefs;
  let notices;
  try {
    [prefs, notices] = await Promise.all([
      api("GET", `${base}/preferences`), api("GET", base),
    ]);
  } catch (err) {
    $("prefs").textContent = `Notices are not available here (${err.message}).`;
    return;
  }
  const outs = prefs.opted_out.map((o) => `${o.kind} on ${o.channel}`).join(", ");
  $("prefs").textContent = `Email: ${prefs.email || "none"}. `
    + (outs ? `Opted out of: ${outs}.` : "No opt-outs.");
  for (const n of [...notices].reverse()) {
    const row = document.createElement("tr");
    cell(row, n.at.slice(0, 16).replace("T", " "));
    cell(row, n.kind);
    cell(row, n.channel);
    cell(row, n.state + (n.last_error ? ` (${n.last_error})` : ""));
    cell(row, n.attempts, "num");
    cell(row, n.cause);
    body.appendChild(row);
  }
}

function render(audit) {
  $("member").hidden = false;
  $("member-title").textContent = audit.member_id;
  const b = audit.balance;
  const cards = [
    ["available", b.available], ["pending", b.pending], ["held", b.held],
    ["lifetime", b.lifetime_earned], ["tier", b.tier || "-"],
    ["expiring 30d", b.expiring["30d"]], ["expiring 90d", b.expiring["90d"]],
  ];
  $("balance").replaceChildren(...cards.map(([label, value]) => {
    const div = document.createElement("div");
    div.className = "card";
    div.dataset.field = label;
    const strong = document.createElement("b");
    strong.textContent = value;
    div.append(strong, label);
    return div;
  }));
  drawChart(audit.entries.map((x) => x.entry), Date.parse(audit.balance.as_of));
  $("explained").textContent = audit.explained
    ? `The ${audit.entries.length} entries add up to the balance (${audit.recorded_total}).`
    : `The entries add up to ${audit.entries_total} but the balance is ${audit.recorded_total}.`;
  $("explained").className = audit.explained ? "good" : "bad";
  const body = $("statement").querySelector("tbody");
  body.replaceChildren();
  for (const line of [...audit.entries].reverse()) {
    const e = line.entry;
    const row = document.createElement("tr");
    cell(row, e.seq, "num");
    cell(row, e.effective_at.slice(0, 16).replace("T", " "));
    cell(row, e.entry_type);
    cell(row, (e.points > 0 ? "+" : "") + e.points, "num");
    cell(row, e.balance_after.available, "num");
    cell(row, e.balance_after.pending, "num");
    cell(row, e.balance_after.held, "num");
    cell(row, e.note);
    cell(row, provenance(e, line.source_event), "prov");
    body.appendChild(row);
  }
  const lots = $("lots").querySelector("tbody");
  lots.replaceChildren();
  for (const lot of audit.lots) {
    const row = document.createElement("tr");
    cell(row, lot.lot_id);
    cell(row, lot.source);
    cell(row, `${lot.remaining} / ${lot.amount}`, "num");
    cell(row, lot.status);
    cell(row, lot.earned_at.slice(0, 10));
    cell(row, lot.expires_at ? lot.expires_at.slice(0, 10) : "never");
    lots.appendChild(row);
  }
}

function provenance(e, source) {
  const p = e.provenance;
  const o = p.origin;
  const where = [o.channel];
  for (const k of ["topic", "partition", "offset", "file", "line", "request_id", "actor"]) {
    if (o[k] !== null && o[k] !== undefined) where.push(`${k}=${o[k]}`);
  }
  const parts = [
    p.event_id ? `event ${p.event_id}` : "no event",
    `via ${where.join(" ")}`,
    `rule ${p.rule_id || "-"}`,
    `program ${p.program_version || "-"}`,
    `tier ${p.tier || "-"}`,
  ];
  if (e.moves.length) {
    parts.push("lots " + e.moves.map((m) => `${m.lot_id}${m.amount > 0 ? "+" : ""}${m.amount}`).join(" "));
  }
  if (source) parts.push(`source ${source.type}`);
  return parts.join("; ");
}

// The balance (available + pending + held) after every entry, as an SVG step line.
function drawChart(entries, asOf) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 800;
  const height = 220;
  const pad = 36;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "balance over time");
  const points = entries.map((e) => ({
    t: Date.parse(e.effective_at),
    v: e.balance_after.available + e.balance_after.pending + e.balance_after.held,
  }));
  points.sort((a, b) => a.t - b.t);
  if (points.length) {
    const last = points[points.length - 1];
    points.push({ t: Math.max(asOf, last.t), v: last.v });  // flat until the balance's as-of
  }
  const t0 = points.length ? points[0].t : 0;
  const t1 = points.length ? points[points.length - 1].t : 1;
  const vmax = Math.max(1, ...points.map((p) => p.v));
  const vmin = Math.min(0, ...points.map((p) => p.v));
  const x = (t) => pad + ((t - t0) / Math.max(1, t1 - t0)) * (width - 2 * pad);
  const y = (v) => height - pad - ((v - vmin) / Math.max(1, vmax - vmin)) * (height - 2 * pad);
  const axis = document.createElementNS(ns, "path");
  axis.setAttribute("d", `M${pad} ${pad / 2} V${height - pad} H${width - pad / 2}`);
  axis.setAttribute("stroke", "#94a3b8");
  axis.setAttribute("fill", "none");
  svg.appendChild(axis);
  let d = "";
  points.forEach((p, i) => {
    d += i === 0 ? `M${x(p.t)} ${y(p.v)}` : ` H${x(p.t)} V${y(p.v)}`;
  });
  const line = document.createElementNS(ns, "path");
  line.setAttribute("d", d || `M${pad} ${height - pad}`);
  line.setAttribute("stroke", "#2563eb");
  line.setAttribute("stroke-width", "3");
  line.setAttribute("fill", "none");
  line.setAttribute("class", "balance-line");
  svg.appendChild(line);
  for (const [v, label] of [[vmax, String(vmax)], [vmin, String(vmin)]]) {
    const text = document.createElementNS(ns, "text");
    text.setAttribute("x", 2);
    text.setAttribute("y", y(v) + 4);
    text.setAttribute("font-size", "11");
    text.textContent = label;
    svg.appendChild(text);
  }
  $("chart").replaceChildren(svg);
}

$("adjust-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const out = $("adjust-result");
  try {
    const result = await api("POST", `/v1/members/${encodeURIComponent(current)}/adjustments`, {
      points: parseInt($("adjust-points").value, 10),
      reason: $("adjust-reason").value,
    });
    out.textContent = `Recorded ${result.entries.join(", ")} by ${result.actor}; ` +
      `available now ${result.balance.available}.`;
    out.className = "good";
    await openMember(current);
  } catch (err) {
    out.textContent = String(err.message || err);
    out.className = "bad";
  }
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function whatIfProgress(job) {
  const bar = $("whatif-progress");
  const p = job.progress;
  bar.hidden = job.status === "done" || job.status === "failed";
  bar.max = Math.max(p.total, 1);
  bar.value = p.done;
  const what = { queued: "queued", replay: "events replayed", compare: "members compared" };
  return p.stage === "queued"
    ? `Run ${job.job_id}: queued.`
    : `Run ${job.job_id}: ${p.done} of ${p.total} ${what[p.stage] || p.stage}.`;
}

// What-if runs as a job: start it (202 and the job), then poll it until it is done.
$("whatif-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = $("whatif").querySelector("tbody");
  const note = $("whatif-note");
  body.replaceChildren();
  try {
    let job = await api("POST", "/v1/ops/what-if", {
      program_yaml: $("whatif-program").value,
      member_id: current,
    });
    while (job.status === "queued" || job.status === "running") {
      note.textContent = whatIfProgress(job);
      await sleep(250);
      job = await api("GET", `/v1/ops/what-if/${job.job_id}`);
    }
    whatIfProgress(job);
    if (job.status === "failed") {
      throw new Error(`what-if failed: ${job.error}`);
    }
    const report = job.result;
    for (const m of report.members) {
      const row = document.createElement("tr");
      cell(row, m.member_id);
      cell(row, m.actual, "num");
      cell(row, m.would_have, "num");
      cell(row, (m.difference > 0 ? "+" : "") + m.difference, "num");
      body.appendChild(row);
    }
    note.textContent = `Run ${report.run_id}: program ${report.program_version} ` +
      `instead of ${report.current_version}; ${report.replayed_events} events replayed.`;
  } catch (err) {
    $("whatif-progress").hidden = true;
    note.textContent = String(err.message || err);
  }
});
