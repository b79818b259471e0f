// The labelling page: plain JavaScript over the JSON API of jaxal.apps.label_server.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);
let state = null;          // the last /api/state
let round = -1;
let skipped = new Set();   // pool indices skipped in this round (the page's own)
let given = [];            // pool indices labelled in this page this round, in order
let busy = false;
let poller = null;

async function call(path, body) {
  const options = body === undefined ? {headers: {"X-Jaxal-Token": token}} : {
    method: "POST", body: JSON.stringify(body),
    headers: {"X-Jaxal-Token": token, "Content-Type": "application/json"}};
  const response = await fetch(path, options);
  const value = await response.json().catch(() => ({error: response.statusText}));
  if (!response.ok) {
    const error = new Error(value.error || response.statusText);
    error.status = response.status;
    throw error;
  }
  return value;
}

function imageUrl(kind, k) {
  return `image/${state.round}/${kind}/${k}?token=${encodeURIComponent(token)}`;
}

function say(text) { $("message").textContent = text || ""; }

async function load() {
  try {
    state = await call("api/state");
  } catch (e) {
    say(e.message);
    return;
  }
  if (state.round !== round) {
    round = state.round;
    skipped = new Set();
    given = [];
  }
  render();
  const t = state.training.state;
  if ((t === "training" || t === "scoring") && poller === null) {
    poller = setInterval(poll, 400);
  }
}

async function poll() {
  let s;
  try { s = await call("api/state"); } catch (e) { return; }
  const t = s.training.state;
  if (t === "training" || t === "scoring") {
    state = s;
    renderTraining();
    return;
  }
  clearInterval(poller);
  poller = null;
  await load();
  if (t === "error") say(s.training.message);
}

function currentItem() {
  if (!state) return null;
  return state.items.find((it) => it.label === null && !skipped.has(it.pool_index)) || null;
}

function keyOf(names) {
  // A class's first letter, where no other class starts with it.
  const first = names.map((n) => n.charAt(0).toLowerCase());
  return names.map((n, y) => (/^[a-z]$/.test(first[y]) &&
    first.filter((f) => f === first[y]).length === 1) ? first[y] : null);
}

function render() {
  $("session").textContent = state.session;
  const items = state.items;
  const labelled = items.filter((it) => it.label !== null).length;
  const item = currentItem();
  const k = item ? items.indexOf(item) + 1 : items.length;
  $("progress").textContent = items.length === 0 ? `${state.num_labels} labels so far` :
    `round ${state.round}: image ${k} of ${items.length}, ${labelled} labelled in this ` +
    `batch, ${state.num_labels} labels so far`;
  const training = ["training", "scoring"].includes(state.training.state);
  const image = $("image");
  if (item && !training) {
    image.hidden = false;
    image.src = imageUrl("batch", item.k);
    image.dataset.pool = item.pool_index;
    const score = item.score === null ? "" : `, score ${item.score.toFixed(3)}`;
    $("caption").textContent = `${item.name} (pool index ${item.pool_index}${score})`;
    const next = items.find((it) => it !== item && it.label === null &&
      !skipped.has(it.pool_index));
    if (next) new Image().src = imageUrl("batch", next.k);
  } else {
    image.hidden = true;
    image.removeAttribute("src");
    $("caption").textContent = "";
  }
  const keys = keyOf(state.classes);
  const classes = $("classes");
  classes.replaceChildren(...state.classes.map((name, y) => {
    const b = document.createElement("button");
    const hint = document.createElement("kbd");
    hint.textContent = [y < 9 ? String(y + 1) : null, keys[y]].filter(Boolean).join(" ");
    b.append(hint, name);
    b.dataset.label = y;
    b.disabled = !item || training;
    b.addEventListener("click", () => label(y));
    return b;
  }));
  $("model").replaceChildren(...(item ? item.top : []).map((t) => {
    const li = document.createElement("li");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(120 * (t.prob || 0))}px`;
    li.append(`${t.name} ${(t.prob || 0).toFixed(2)}`, bar);
    return li;
  }));
  $("undo").disabled = training || !items.some((it) => it.label !== null);
  $("skip").disabled = training || !item;
  const done = !item && items.length > 0 && !training;
  $("done").hidden = !done;
  if (done) {
    const skips = items.filter((it) => it.label === null).length;
    $("done-text").textContent = `Batch of round ${state.round} done: ${labelled} ` +
      `labelled` + (skips ? `, ${skips} skipped (they stay in the pool)` : "") + ".";
  }
  renderTraining();
  renderRun();
}

function renderTraining() {
  const t = state.training;
  const on = t.state === "training" || t.state === "scoring";
  $("training").hidden = !on;
  if (!on) return;
  const bar = $("training-bar");
  if (t.state === "scoring" || !t.steps) {
    bar.removeAttribute("value");
    $("training-text").textContent = t.state === "scoring" ?
      `Round ${t.round}: fitting the posterior and scoring the pool...` :
      `Round ${t.round}: starting...`;
  } else {
    bar.value = t.steps_done / t.steps;
    $("training-text").textContent =
      `Round ${t.round}: training step ${t.steps_done} of ${t.steps}`;
  }
}

function renderRun() {
  const curve = state.curve.filter((c) => c.labels !== null);
  const accuracy = curve.some((c) => c.val_accuracy !== null);
  const key = accuracy ? "val_accuracy" : "pool_entropy";
  $("curve-title").textContent = accuracy ? "Validation accuracy" :
    "Mean predictive entropy of the pool";
  const points = curve.filter((c) => c[key] !== null).map((c) => [c.labels, c[key]]);
  const svg = $("curve");
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const text = (x, y, s) => {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", x); t.setAttribute("y", y); t.textContent = s;
    svg.append(t);
  };
  if (points.length === 0) {
    text(10, 80, "no trained round yet");
  } else {
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
    const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
    const y0 = Math.min(...ys, accuracy ? 1 : 0), y1 = Math.max(...ys, y0 + 1e-6);
    const sx = (x) => 30 + 280 * (x - x0) / (x1 - x0);
    const sy = (y) => 140 - 125 * (y - y0) / (y1 - y0);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#2680c2");
    line.setAttribute("stroke-width", "2");
    svg.append(line);
    for (const p of points) {
      const c = document.createElementNS(ns, "circle");
      c.setAttribute("cx", sx(p[0])); c.setAttribute("cy", sy(p[1]));
      c.setAttribute("r", 3); c.setAttribute("fill", "#2680c2");
      svg.append(c);
    }
    text(2, 18, y1.toFixed(2)); text(2, 143, y0.toFixed(2));
    text(30, 156, `${x0} labels`); text(250, 156, `${x1}`);
  }
  const most = Math.max(1, ...state.label_counts);
  $("counts").replaceChildren(...state.classes.map((name, y) => {
    const div = document.createElement("div");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(120 * state.label_counts[y] / most)}px`;
    div.append(`${name}: ${state.label_counts[y]}`, bar);
    return div;
  }));
  const e = state.extremes;
  $("extremes-box").hidden = !e;
  for (const which of ["top", "bottom"]) {
    $(which).replaceChildren(...(e ? e[which] : []).map((x) => {
      const f = document.createElement("figure");
      const img = document.createElement("img");
      img.src = imageUrl(which, x.k);
      img.alt = `${which} ${x.k + 1}`;
      const cap = document.createElement("figcaption");
      cap.textContent = `${which} ${x.k + 1}: ${x.score === null ? "" : x.score.toFixed(3)}`;
      f.append(img, cap);
      return f;
    }));
  }
}

async function act(fn) {
  if (busy) return;
  busy = true;
  try {
    await fn();
    say("");
  } catch (e) {
    say(e.message);
    if (e.status === 409 || e.status === 400) await load();
  } finally {
    busy = false;
  }
}

function label(y) {
  const item = currentItem();
  if (!item) return;
  act(async () => {
    await call("api/label", {round: state.round, pool_index: item.pool_index, label: y});
    item.label = y;
    given.push(item.pool_index);
    await load();
  });
}

function undo() {
  act(async () => {
    let pool = given.pop();
    if (pool === undefined) {
      const last = [...state.items].reverse().find((it) => it.label !== null);
      if (!last) return;
      pool = last.pool_index;
    }
    await call("api/undo", {round: state.round, pool_index: pool});
    skipped.delete(pool);
    await load();
  });
}

function skip() {
  const item = currentItem();
  if (!item) return;
  skipped.add(item.pool_index);
  render();
}

function train() {
  act(async () => {
    await call("api/train", {round: state.round});
    await load();
  });
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || !state) return;
  const key = event.key;
  if (key === "Backspace") { event.preventDefault(); undo(); return; }
  if (key === " ") { event.preventDefault(); skip(); return; }
  if (key === "Enter") { if (!$("done").hidden) { event.preventDefault(); train(); } return; }
  if (/^[1-9]$/.test(key) && Number(key) <= state.classes.length) {
    label(Number(key) - 1);
    return;
  }
  const y = keyOf(state.classes).indexOf(key.toLowerCase());
  if (key.length === 1 && y >= 0) label(y);
});

document.addEventListener("DOMContentLoaded", () => {
  $("undo").addEventListener("click", undo);
  $("skip").addEventListener("click", skip);
  $("train").addEventListener("click", train);
  load();
});
