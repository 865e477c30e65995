// The groker dashboard: renders each Broker.snapshot() that /dashboard/events sends.
"use strict";

const WINDOW_SECONDS = 300; // the rate chart's span once the page has been open that long
const MIN_SPAN_SECONDS = 60; // and before that, so a new page's first points are not a speck
const RATE_SECONDS = 5; // the rates shown as numbers average over this, to steady them
const TOTALS = ["accepted", "published", "delivered", "failed", "removed"];

// {t, accepted, delivered} from every snapshot of the last WINDOW_SECONDS, oldest first.
// The broker keeps no history, so the chart starts when the page is opened.
let history = [];

const $ = (id) => document.getElementById(id);

function connect() {
  const source = new EventSource("/dashboard/events");
  source.onopen = () => setState("live");
  source.onmessage = (event) => render(JSON.parse(event.data));
  source.onerror = () => {
    setState("disconnected");
    // EventSource reconnects by itself after a dropped stream, but gives up for good after
    // an answer that is not an event stream (a proxy's 502, say): start over then.
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
  };
}

function setState(state) {
  const badge = $("connection");
  badge.textContent = state;
  badge.className = `state ${state}`;
  document.body.dataset.state = state;
}

function render(snapshot) {
  const stats = snapshot.stats;
  setState(stats.draining ? "draining" : "live");
  $("updated").textContent = `updated ${new Date(snapshot.time * 1000).toLocaleTimeString()}`;
  $("queue-length").textContent = stats.queue_length;
  $("oldest-age").textContent = stats.queue_length ? duration(stats.oldest_queued_age) : "–";
  $("subscriber-count").textContent = stats.subscribers;
  for (const name of TOTALS) $(name).textContent = stats[name];

  record(snapshot.time, stats);
  drawRates();
  // Each subscriber's lane names the replica that delivers for it; a broker alone holds
  // every lane (its subscribers name none).
  const holding = (r) =>
    r.role === "alone"
      ? stats.subscribers
      : snapshot.subscribers.filter((s) => s.replica === r.name).length;
  fill(
    "replicas",
    (snapshot.replicas ?? []).map((r) => [
      [r.name, r.name === stats.replica ? "mono this" : "mono"],
      [r.role],
      [holding(r), "num"],
      [`${r.seen_ago.toFixed(1)} s ago`, "num"],
    ]),
    "no replica has reported",
  );
  fill(
    "subscribers",
    snapshot.subscribers.map((s) => [
      [s.callback, "mono"],
      [s.replica ?? "", "mono"],
      [s.backlog, "num"],
      [s.delivered, "num"],
      [s.failed, s.failed ? "num failed" : "num"],
      [new Date(s.created_at * 1000).toLocaleString()],
    ]),
    "no subscribers: messages wait in the queue",
  );
  fill(
    "recent",
    snapshot.recent.map((m) => [
      [m.seq, "num"],
      [m.id, "mono"],
      [m.status],
      [m.delivered ?? "", "num"],
      [m.failed ?? "", m.failed ? "num failed" : "num"],
    ]),
    "no messages yet",
  );
}

// Rebuild a table body from [text, className] cells; textContent, never innerHTML, since
// callbacks and ids come from whoever called the API.
function fill(id, rows, emptyText) {
  const body = $(id);
  const trs = rows.map((cells) => {
    const tr = document.createElement("tr");
    for (const [text, className] of cells) {
      const td = tr.insertCell();
      td.textContent = text;
      if (className) td.className = className;
    }
    return tr;
  });
  if (!trs.length) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = tr.insertCell();
    td.colSpan = body.parentElement.tHead.rows[0].cells.length;
    td.textContent = emptyText;
    trs.push(tr);
  }
  body.replaceChildren(...trs);
}

function record(t, stats) {
  const last = history[history.length - 1];
  // Counters falling means the broker restarted and counts from zero again: a delta
  // across that would be nonsense, so the chart starts over.
  if (last && (stats.accepted < last.accepted || stats.delivered < last.delivered)) history = [];
  history.push({ t, accepted: stats.accepted, delivered: stats.delivered });
  history = history.filter((h) => h.t >= t - WINDOW_SECONDS);
}

// Per second between two recorded snapshots, using the broker's clock for the interval.
function rate(from, to, key) {
  const dt = to.t - from.t;
  return dt > 0 ? (to[key] - from[key]) / dt : 0;
}

function drawRates() {
  const now = history[history.length - 1];
  const since = history.find((h) => h.t >= now.t - RATE_SECONDS) || now;
  $("publish-rate").textContent = rate(since, now, "accepted").toFixed(1);
  $("delivery-rate").textContent = rate(since, now, "delivered").toFixed(1);

  const samples = history.slice(1).map((h, i) => ({
    t: h.t,
    publish: rate(history[i], h, "accepted"),
    deliver: rate(history[i], h, "delivered"),
  }));
  const canvas = $("rates");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = width * ratio; // drawn at device resolution so the lines stay sharp
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);

  const span = Math.min(WINDOW_SECONDS, Math.max(MIN_SPAN_SECONDS, now.t - history[0].t));
  const left = 44;
  const right = width - 6;
  const bottom = height - 18;
  const top = niceCeiling(Math.max(1, ...samples.flatMap((s) => [s.publish, s.deliver])));
  const x = (t) => right - ((now.t - t) / span) * (right - left);
  const y = (v) => bottom - (v / top) * (bottom - 6);
  const css = getComputedStyle(document.documentElement);

  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = css.getPropertyValue("--muted");
  ctx.strokeStyle = css.getPropertyValue("--line");
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const v of [0, top / 2, top]) {
    ctx.beginPath();
    ctx.moveTo(left, y(v));
    ctx.lineTo(width, y(v));
    ctx.stroke();
    ctx.fillText(`${+v.toFixed(1)}/s`, left - 6, y(v));
  }
  ctx.textBaseline = "bottom";
  const step = span > 120 ? 60 : 10;
  for (let ago = 0; ago <= span; ago += step) {
    ctx.textAlign = ago ? "center" : "right";
    const label = step === 60 ? `-${ago / 60}m` : `-${ago}s`;
    ctx.fillText(ago ? label : "now", x(now.t - ago), height);
  }

  // Publish drawn wider, under delivery: the two are often equal, and both stay visible.
  const lines = [["publish", "--publish", 4], ["deliver", "--deliver", 1.5]];
  for (const [key, color, lineWidth] of lines) {
    ctx.strokeStyle = css.getPropertyValue(color);
    ctx.lineWidth = lineWidth;
    ctx.beginPath();
    samples.forEach((s, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, x(s.t), y(s[key])));
    ctx.stroke();
    const newest = samples[samples.length - 1];
    if (newest) {
      // A dot on the newest value, so a single sample shows too.
      ctx.fillStyle = ctx.strokeStyle;
      ctx.beginPath();
      ctx.arc(x(newest.t), y(newest[key]), 3, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
}

// The smallest 1, 2 or 5 times a power of ten at or above v: round numbers on the axis.
function niceCeiling(v) {
  const power = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * power).find((n) => n >= v);
}

function duration(seconds) {
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} m ${Math.floor(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} m`;
}

window.addEventListener("resize", () => history.length && drawRates());
connect();
