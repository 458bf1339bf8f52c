// FlmCluster dashboard: the cluster map and jobs list (#/), and a job's page (#/jobs/ID). Read-only; live through
// server-sent events (/api/stream/...), which push what changed a few hundred milliseconds after it happened.
"use strict";

const app = document.getElementById("app");
const live = document.getElementById("live");
// Open charts by name, for people poking at the page from the console (and the browser tests).
window.flmCharts = {};

// ---- formatting -------------------------------------------------------------------------------------------------

const fmt = {
  num: (v, d = 0) => v == null || Number.isNaN(v) ? "–" : v.toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d }),
  loss: v => v == null ? "–" : Number(v).toFixed(4),
  pct: v => v == null ? "–" : (100 * v).toFixed(1) + " %",
  time: t => new Date(t).toLocaleTimeString("en-GB", { hour12: false }),
  silo: a => String(a).replace(/^S/, "").replace(/:\d+$/, ""), // "S10.0.0.1:11111:123456789" → "10.0.0.1:11111"
  esc: s => String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])),
};

const state = s => `<span class="state ${fmt.esc(s)}">${fmt.esc(s)}</span>`;

// The jobs list's columns, in order. A job figure the server adds to JobRow (DashboardData.RowOf) shows as a
// column by one more entry here; the job page's figures (JOB_STATS) are listed the same way.
const JOB_COLUMNS = [
  { title: "job", html: j => `<a href="#/jobs/${encodeURIComponent(j.id)}">${fmt.esc(j.id)}</a>` },
  { title: "name", html: j => fmt.esc(j.name) },
  { title: "state", html: j => state(j.state) },
  { title: "step", num: true, html: j => `${j.step}/${j.totalSteps}` },
  { title: "stage", html: j => fmt.esc(j.stage) },
  { title: "loss", num: true, html: j => fmt.loss(j.loss) },
  { title: "tokens/s", num: true, html: j => fmt.num(j.tokensPerSecond) },
  { title: "ETTR", num: true, html: j => j.ettr == null ? "–" : fmt.pct(j.ettr) },
  { title: "layout", html: j => fmt.esc(j.layout) },
  { title: "priority", num: true, html: j => j.priority },
  { title: "submitted (UTC)", html: j => fmt.esc(j.submittedAt.replace("T", " ").slice(0, 19)) },
];

const JOB_STATS = [
  { title: "state", html: (j, last) => state(j.state) },
  { title: "step", html: (j, last) => `${j.step} / ${j.totalSteps}` },
  { title: "stage", html: (j, last) => fmt.esc(j.stage) },
  { title: "loss", html: (j, last) => fmt.loss(last?.point.loss ?? j.loss) },
  { title: "tokens/s", html: (j, last) => fmt.num(last?.point.tokensPerSecond ?? j.tokensPerSecond) },
  { title: "MFU", html: (j, last) => last?.mfu == null ? "–" : fmt.pct(last.mfu) },
  { title: "step time", html: (j, last) => last ? fmt.num(last.point.stepMs, 1) + " ms" : "–" },
  { title: "ETTR", html: (j, last) => j.ettr == null ? "–" : fmt.pct(j.ettr) },
  { title: "layout", html: (j, last) => fmt.esc(j.layout) },
];

function table(columns, rows) {
  const head = columns.map(c => `<th class="${c.num ? "num" : ""}">${c.title}</th>`).join("");
  const body = rows.map(r => `<tr>${columns.map(c => `<td class="${c.num ? "num" : ""}">${c.html(r)}</td>`).join("")}</tr>`).join("");
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

// ---- live streams -----------------------------------------------------------------------------------------------

let stream = null;

function closeStream() {
  if (stream) stream.close();
  stream = null;
  live.classList.remove("on");
}

// Opens a server-sent-event stream; after an error it reopens from where the page stands (url() is asked again).
function openStream(url, handlers) {
  closeStream();
  const source = new EventSource(url());
  stream = source;
  source.onopen = () => live.classList.add("on");
  for (const [name, handle] of Object.entries(handlers))
    source.addEventListener(name, e => handle(JSON.parse(e.data)));
  source.onerror = () => {
    if (stream !== source) return;
    closeStream();
    setTimeout(() => { if (stream === null && current === url.route) openStream(url, handlers); }, 1000);
  };
}

async function getJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status} ${(await response.text()).slice(0, 200)}`);
  return response.json();
}

// ---- the cluster page -------------------------------------------------------------------------------------------

function renderCluster(page) {
  const nodes = page.nodes.map(n => `
    <div class="node ${n.status === "active" ? "" : "dead"}" data-node="${fmt.esc(n.node)}">
      <div class="title"><b>${fmt.esc(n.node)}</b><span class="dim">${fmt.esc(n.status)} · ${fmt.esc(fmt.silo(n.address))}</span></div>
      ${n.gpus.length === 0 ? `<div class="dim">control plane (no devices)</div>` : ""}
      <div class="gpus">${n.gpus.map(g => `
        <div class="gpu ${fmt.esc(g.state)}" data-worker="${fmt.esc(g.worker)}" title="${fmt.esc(g.detail ?? "")}">
          <div class="name">${fmt.esc(g.worker.split("/")[1])} <span class="dim">${fmt.esc(g.device)}</span></div>
          <div>${fmt.esc(g.state)}</div>
          ${g.job ? `<div><a href="#/jobs/${encodeURIComponent(g.job)}">${fmt.esc(g.job)}</a></div>
                     <div class="dim">rank ${g.rank}${g.coords ? ` · ${fmt.esc(g.coords)}` : ""}</div>` : `<div class="dim">free</div>`}
          <div class="bar" title="compute share of the last step"><div style="width:${Math.round(100 * (g.utilization ?? 0))}%"></div></div>
        </div>`).join("")}
      </div>
    </div>`).join("");
  const free = page.nodes.filter(n => n.status === "active").flatMap(n => n.gpus).filter(g => !g.job).length;
  const total = page.nodes.filter(n => n.status === "active").flatMap(n => n.gpus).length;
  app.innerHTML = `
    <h2>Cluster map <span class="dim">· ${free} of ${total} GPUs free · ${page.queue.length} queued</span></h2>
    <div class="nodes" id="nodes">${nodes}</div>
    <h2>Jobs</h2>
    <div class="panel" id="jobs">${page.jobs.length ? table(JOB_COLUMNS, page.jobs) : `<span class="dim">no jobs yet</span>`}</div>`;
}

async function showCluster() {
  app.innerHTML = `<span class="dim">loading…</span>`;
  const url = () => "/api/stream/cluster";
  url.route = current;
  renderCluster(await getJson("/api/cluster"));
  openStream(url, { cluster: renderCluster });
}

// ---- the job page -----------------------------------------------------------------------------------------------

class JobView {
  constructor(id) {
    this.id = id;
    this.steps = new Map(); // step → record (the latest of each step)
    this.events = [];
    this.nextStep = 0;
    this.nextEvent = 0;
    this.job = null;
  }

  async load() {
    this.job = await getJson(`/api/jobs/${encodeURIComponent(this.id)}`);
    // Whole pages until one is not full; the stream brings the rest.
    const max = 2000;
    for (;;) {
      const page = await getJson(`/api/jobs/${encodeURIComponent(this.id)}/history?sinceStep=${this.nextStep}&sinceEvent=${this.nextEvent}&max=${max}`);
      this.merge(page);
      if (page.steps.length < max && page.events.length < max) break;
    }
  }

  merge(page) {
    for (const s of page.steps) this.steps.set(s.point.step, s);
    this.events.push(...page.events);
    this.nextStep = Math.max(this.nextStep, page.nextStep);
    this.nextEvent = Math.max(this.nextEvent, page.nextEvent);
  }

  sorted() { return [...this.steps.values()].sort((a, b) => a.point.step - b.point.step); }

  render() {
    const j = this.job.job;
    app.innerHTML = `
      <h1>${fmt.esc(j.name)} <span class="dim">${fmt.esc(j.id)}</span></h1>
      <div class="stats" id="stats"></div>
      ${j.error ? `<div class="error">${fmt.esc(j.error)}</div>` : ""}
      <div class="grid2">
        <div class="panel"><h2>Loss</h2><div id="loss-chart"></div>
          <div class="legend">dashed lines: growth transitions; predicted: the held-out loss 'flm predict-loss' predicted (its prediction.json in the job's checkpoint folder)</div></div>
        <div class="panel"><h2>Throughput and MFU</h2><div id="speed-chart"></div></div>
      </div>
      <div class="panel" style="margin-top:14px"><h2>Per-rank compute time</h2>
        <canvas id="heatmap" class="heatmap"></canvas>
        <div class="legend">each column a step (newest right), each row a rank; colour: the rank's compute time over the step's median across ranks
          (green = median, red ≥ 1.5×): a straggler is a red row.</div></div>
      <div class="grid2" style="margin-top:14px">
        <div class="panel"><h2>Events</h2><div class="timeline" id="timeline"></div></div>
        <div>
          <div class="panel"><h2>Checkpoints</h2><div id="checkpoints"></div></div>
          <div class="panel" style="margin-top:14px"><h2>Layout</h2><div id="layout"></div></div>
        </div>
      </div>`;
    this.charts();
    this.update();
  }

  charts() {
    const width = () => Math.max(300, document.getElementById("loss-chart").clientWidth - 4);
    const growth = u => {
      // Growth transitions: where the stage changes between consecutive steps.
      const steps = this.sorted();
      const ctx = u.ctx;
      ctx.save();
      ctx.strokeStyle = "#e0a43a";
      ctx.setLineDash([5, 4]);
      for (let i = 1; i < steps.length; i++) {
        if (steps[i].point.stage === steps[i - 1].point.stage) continue;
        const x = u.valToPos(steps[i].point.step, "x", true);
        ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
      }
      ctx.restore();
    };
    const axis = { stroke: "#8c9ab3", grid: { stroke: "#263049" }, ticks: { stroke: "#263049" } };
    flmCharts.loss = new uPlot({
      width: width(), height: 260, scales: { x: { time: false } },
      axes: [{ ...axis, label: "step" }, { ...axis, label: "loss" }],
      series: [{ label: "step" }, { label: "loss", stroke: "#4f8fe0", width: 1.5, points: { show: false } },
        { label: "predicted", stroke: "#e0a43a", width: 1.5, dash: [6, 4], spanGaps: true, points: { show: true, size: 4 } }],
      hooks: { draw: [growth] },
    }, [[], [], []], document.getElementById("loss-chart"));
    flmCharts.speed = new uPlot({
      width: width(), height: 260, scales: { x: { time: false }, mfu: { range: [0, null] } },
      axes: [{ ...axis, label: "step" }, { ...axis, label: "tokens/s" }, { ...axis, scale: "mfu", side: 1, label: "MFU %", grid: { show: false } }],
      series: [{ label: "step" }, { label: "tokens/s", stroke: "#3fb27f", width: 1.5, points: { show: false } },
        { label: "MFU %", scale: "mfu", stroke: "#e0a43a", width: 1.5, points: { show: false } }],
    }, [[], [], []], document.getElementById("speed-chart"));
  }

  update() {
    const steps = this.sorted();
    const last = steps.at(-1);
    const j = this.job.job;
    document.getElementById("stats").innerHTML =
      JOB_STATS.map(s => `<div class="stat"><div class="v">${s.html(j, last)}</div><div class="k">${s.title}</div></div>`).join("");
    const x = steps.map(s => s.point.step);
    // The prediction where it has a point at a step the job committed: one x per committed step.
    const predicted = new Map((this.job.prediction ?? []).map(p => [p.step, p.loss]));
    flmCharts.loss.setData([x, steps.map(s => s.point.loss), x.map(step => predicted.get(step) ?? null)]);
    flmCharts.speed.setData([x, steps.map(s => s.point.tokensPerSecond), steps.map(s => s.mfu == null ? null : 100 * s.mfu)]);
    this.heatmap(steps.slice(-120));
    document.getElementById("timeline").innerHTML = this.events.slice().reverse().map(e => `
      <div class="ev" data-kind="${fmt.esc(e.kind)}"><span class="dim">${fmt.time(e.at)}</span><span class="kind ${fmt.esc(e.kind)}">${fmt.esc(e.kind)}</span>
        <span>${fmt.esc(e.message)}</span></div>`).join("");
    const page = this.job;
    document.getElementById("checkpoints").innerHTML = page.checkpoints.length === 0
      ? `<span class="dim">${page.checkpointDir ? "none yet in " + fmt.esc(page.checkpointDir) : "the job has no checkpoint.dir"}</span>`
      : table([
          { title: "checkpoint", html: c => fmt.esc(c.name) },
          { title: "step", num: true, html: c => c.step },
          { title: "valid", html: c => c.valid ? "yes" : `<span class="error">no</span>` },
          { title: "problem", html: c => fmt.esc(c.problem ?? "") },
        ], page.checkpoints) +
        `<div class="legend">in-memory replicas at step ${page.lastReplicaStep ?? "–"}</div>`;
    document.getElementById("layout").innerHTML = `<div class="dim" style="margin-bottom:6px">${fmt.esc(j.layout)}</div>` + table([
      { title: "rank", num: true, html: r => r.rank },
      { title: "worker", html: r => fmt.esc(r.worker) },
      { title: "dp", num: true, html: r => r.dp },
      { title: "tp", num: true, html: r => r.tp },
      { title: "pp", num: true, html: r => r.pp },
    ], page.ranks);
  }

  heatmap(steps) {
    const canvas = document.getElementById("heatmap");
    const ranks = Math.max(1, ...steps.map(s => s.ranks.length));
    const rowHeight = 14, labelWidth = 56;
    canvas.width = canvas.clientWidth || 900;
    canvas.height = ranks * rowHeight + 4;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#171e2e";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.font = "11px system-ui";
    const cell = steps.length ? (canvas.width - labelWidth) / steps.length : 0;
    for (let r = 0; r < ranks; r++) {
      ctx.fillStyle = "#8c9ab3";
      ctx.fillText(`rank ${r}`, 4, r * rowHeight + 11);
    }
    steps.forEach((s, i) => {
      const times = s.ranks.map(r => r.computeMs).sort((a, b) => a - b);
      const median = times[Math.floor(times.length / 2)] || 1;
      for (const r of s.ranks) {
        const t = Math.min(1, Math.max(0, (r.computeMs / median - 1) / 0.5)); // 1× → 0, 1.5× and more → 1
        ctx.fillStyle = `rgb(${Math.round(63 + t * (224 - 63))}, ${Math.round(178 - t * (178 - 88))}, ${Math.round(127 - t * (127 - 79))})`;
        ctx.fillRect(labelWidth + i * cell, r.rank * rowHeight + 1, Math.max(1, cell - 1), rowHeight - 2);
      }
    });
  }
}

async function showJob(id) {
  app.innerHTML = `<span class="dim">loading…</span>`;
  const view = new JobView(id);
  await view.load();
  if (current !== `#/jobs/${id}`) return;
  view.render();
  let pending = false;
  const redraw = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; view.update(); });
  };
  const url = () => `/api/stream/jobs/${encodeURIComponent(id)}?sinceStep=${view.nextStep}&sinceEvent=${view.nextEvent}`;
  url.route = current;
  openStream(url, {
    history: page => { view.merge(page); redraw(); },
    job: page => { view.job = page; redraw(); },
    status: row => { view.job = { ...view.job, job: row }; redraw(); },
  });
}

// ---- routing ----------------------------------------------------------------------------------------------------

let current = null;

async function route() {
  current = location.hash || "#/";
  closeStream();
  const match = current.match(/^#\/jobs\/(.+)$/);
  try {
    if (match) await showJob(decodeURIComponent(match[1]));
    else await showCluster();
  } catch (e) {
    app.innerHTML = `<div class="error">${fmt.esc(e.message)}</div>`;
  }
}

window.addEventListener("hashchange", route);
route();

// A secure silo says who signed in (an open one has no sessions, no role): then the header offers to sign out.
fetch("/api/session").then(r => (r.ok ? r.json() : null)).then(session => {
  if (!session || !session.role) return;
  const form = document.getElementById("signout");
  form.querySelector(".who").textContent = session.role;
  form.hidden = false;
}).catch(() => {});
