// The parallelize dashboard page: polls /api/calls every second and updates each call's card in place (open
// details stay open). Everything from the server is shown as text, never as HTML: a task's repr or traceback can
// hold anything.
"use strict";

const POLL_MS = 1000;
const cards = new Map();
let ownProcess = "";  // a call's process is named only when it is another one (a connected process)
const STATE_LABELS = {running: "running", done: "done", failed: "failed", cancelled: "cancelled",
                      silent: "no news"};

function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const mm = String(m).padStart(h ? 2 : 1, "0"), ss = String(r).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

function short(seconds) {
  if (seconds >= 1) return seconds.toFixed(2) + " s";
  if (seconds >= 1e-3) return (seconds * 1e3).toFixed(1) + " ms";
  return (seconds * 1e6).toFixed(0) + " µs";
}

function rate(perSecond) {
  if (!perSecond) return "";
  if (perSecond >= 1) return `${perSecond.toFixed(perSecond >= 100 ? 0 : 1)} tasks/s`;
  return `${(1 / perSecond).toFixed(1)} s/task`;
}

function text(parent, selector, value) {
  const node = parent.querySelector(selector);
  if (node.textContent !== value) node.textContent = value;
  return node;
}

function card(call) {
  let node = cards.get(call.id);
  if (!node) {
    node = document.getElementById("call-template").content.firstElementChild.cloneNode(true);
    node.dataset.callId = call.id;
    cards.set(call.id, node);
  }
  node.className = `call state-${call.state}`;
  text(node, ".badge", STATE_LABELS[call.state] || call.state);
  text(node, ".name", call.name);
  text(node, ".head .process", call.process === ownProcess ? "" : call.process);
  const where = text(node, ".where", call.site.split("/").pop());
  where.title = call.site;
  text(node, ".code", call.code);

  const bar = node.querySelector(".bar");
  if (call.total) {
    bar.max = call.total;
    bar.value = call.done;
  } else if (call.state === "running") {
    bar.removeAttribute("value");  // indeterminate: the total is not known yet
  } else {
    bar.max = 1;
    bar.value = 1;
  }
  const pct = call.total ? ` (${Math.floor(100 * call.done / call.total)}%)` : "";
  text(node, ".count", call.total === null ? `${call.done} tasks` : `${call.done}/${call.total} tasks${pct}`);
  text(node, ".rate", rate(call.rate));
  text(node, ".elapsed", `elapsed ${duration(call.elapsed)}`);
  text(node, ".eta", call.eta === null ? "" : `ETA ${duration(call.eta)}`);
  text(node, ".failed", call.failed ? `${call.failed} failed` : "");

  const error = node.querySelector(".error");
  error.hidden = !call.error;
  if (call.error) {
    text(error, ".error-title", `${call.error.type}: ${call.error.message}`);
    const notes = error.querySelector(".notes");
    notes.replaceChildren(...call.error.notes.map((note) => {
      const item = document.createElement("li");
      item.textContent = note;
      return item;
    }));
    text(error, ".traceback", call.error.traceback);
  }
  insights(node, call.insights);
  return node;
}

function insights(node, data) {
  const box = node.querySelector(".insights");
  box.hidden = !data;
  if (!data) return;
  const rows = data.workers.map((w, i) => {
    const row = document.createElement("tr");
    for (const value of [String(i), String(w.tasks), short(w.start_up), short(w.init), short(w.waiting),
                         short(w.working), short(w.exit)]) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.append(cell);
    }
    return row;
  });
  box.querySelector("tbody").replaceChildren(...rows);
  box.querySelector(".slowest").replaceChildren(...data.slowest.map(([seconds, args]) => {
    const item = document.createElement("li");
    item.textContent = `${short(seconds)}: called with ${args}`;
    return item;
  }));
}

function show(data) {
  const p = data.process;
  ownProcess = `pid ${p.pid} on ${p.host}`;
  document.getElementById("process").textContent =
    `${ownProcess} · started ${new Date(p.started * 1000).toLocaleString()}`;
  const list = document.getElementById("calls");
  const seen = new Set();
  data.calls.forEach((call, index) => {
    seen.add(call.id);
    const node = card(call);
    if (list.children[index] !== node) list.insertBefore(node, list.children[index] || null);
  });
  for (const [id, node] of cards) {
    if (!seen.has(id)) {
      node.remove();
      cards.delete(id);
    }
  }
  document.getElementById("empty").hidden = data.calls.length > 0;
}

function status(message, kind) {
  const node = document.getElementById("status");
  node.textContent = message;
  node.className = `status ${kind}`;
}

async function poll() {
  try {
    const response = await fetch("/api/calls", {cache: "no-store", credentials: "same-origin"});
    if (response.status === 403) {
      status("not authorised: open the URL with the token that was printed when the dashboard started", "bad");
      return;  // a new token needs a new visit: polling on would only repeat this
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    show(await response.json());
    status(`live · ${new Date().toLocaleTimeString()}`, "good");
  } catch (error) {
    status(`disconnected (${error.message}): retrying`, "bad");
  }
  setTimeout(poll, POLL_MS);
}

poll();
