// The vtwatch dashboard: reads the API (/v1/) with the key kept in this tab's sessionStorage,
// and stays current from event streams — the tenant's (GET /v1/events: watches registered,
// ended, webhook attempts) and the shown watch's (polls) — never by reloading on a timer.
// Every value from the API is put on the page as text (textContent), never as HTML.
"use strict";

const KEY = "vtwatch.apiKey";
const STATES = ["pending", "completed", "error", "timeout", "cancelled"];
const PAGE = 50;
const WATCH_ID = /^[A-Za-z0-9_-]{1,64}$/;
const $ = (id) => document.getElementById(id);

const view = {
  key: sessionStorage.getItem(KEY),
  filter: "", // a state, or "" for all
  rows: new Map(), // watch id -> the Watch shown in the list
  cursor: null,
  shown: null, // the Watch in the detail pane
  livePolls: [], // polls of the shown watch seen on its stream: {at, attempts, text}
  deliveries: [],
  detailStream: null, // AbortController of the shown watch's stream
  feed: null, // AbortController of the tenant's stream
  showing: 0, // the latest `show` call: an older one that answers later is dropped
};

class AuthError extends Error {}

class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
  }
}

function headers() {
  return view.key ? { Authorization: `Bearer ${view.key}` } : {};
}

async function api(path, method = "GET") {
  const response = await fetch(path, { method, headers: headers() });
  if (response.status === 401) throw new AuthError();
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json().catch(() => null) : null;
  if (!response.ok) throw new ApiError(response.status, body && body.detail);
  return body;
}

// Server-Sent Events over fetch (EventSource cannot send an Authorization header).
async function* events(path, signal) {
  const response = await fetch(path, { headers: headers(), signal });
  if (response.status === 401) throw new AuthError();
  if (!response.ok) throw new ApiError(response.status, null);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { event: "message", data: "" };
      for (const line of block.split("\n")) {
        const colon = line.indexOf(":");
        if (colon <= 0) continue; // a comment (heartbeat) or nothing
        const field = line.slice(0, colon);
        const text = line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") event.data += text;
        else if (field === "event" || field === "id") event[field] = text;
      }
      if (event.data) yield { ...event, data: JSON.parse(event.data) };
    }
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function element(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "text") node.textContent = value;
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

const badge = (state) => element("span", { className: `badge ${state}`, text: state });
const time = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "—");
const when = (iso) => element("time", { datetime: iso || "", text: time(iso), title: iso || "" });

// -- the URL keeps the filter and the watch on show ------------------------------------------

function readUrl() {
  const params = new URLSearchParams(location.search);
  const state = params.get("state") || "";
  view.filter = STATES.includes(state) ? state : "";
  return params.get("watch");
}

function writeUrl() {
  const params = new URLSearchParams();
  if (view.filter) params.set("state", view.filter);
  if (view.shown) params.set("watch", view.shown.id);
  const query = params.toString();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
}

// -- counts and list -----------------------------------------------------------------------

let countsDue = null;

function refreshCounts() {
  // Many events in a burst cost one read of the counts.
  if (countsDue) return;
  countsDue = setTimeout(async () => {
    countsDue = null;
    try {
      renderCounts(await api("/v1/status"));
    } catch (error) {
      report(error);
    }
  }, 250);
}

function renderCounts(summary) {
  const all = element("a", { href: "?", "data-state": "" },
    element("span", { className: "n", text: String(summary.total) }), "all");
  const cards = STATES.map((state) =>
    element("a", { href: `?state=${state}`, "data-state": state },
      element("span", { className: "n", text: String(summary.by_state[state] ?? 0) }), state));
  for (const card of [all, ...cards]) {
    card.addEventListener("click", (click) => {
      click.preventDefault();
      setFilter(card.dataset.state);
    });
  }
  $("counts").replaceChildren(all, ...cards);
  markFilter();
  const hooks = summary.webhooks;
  $("webhooks").textContent =
    `Webhooks: ${hooks.pending} pending, ${hooks.delivered} delivered, ${hooks.failed} failed`;
}

async function loadList() {
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (view.filter) query.set("state", view.filter);
  if (view.cursor) query.set("cursor", view.cursor);
  const page = await api(`/v1/watches?${query}`);
  if (!view.cursor) {
    view.rows.clear();
    $("list").tBodies[0].replaceChildren();
  }
  for (const watch of page.items) putRow(watch, false);
  view.cursor = page.next_cursor;
  $("more").hidden = !view.cursor;
  $("empty").hidden = view.rows.size > 0;
}

function row(watch) {
  const name = watch.metadata && Object.keys(watch.metadata).length
    ? JSON.stringify(watch.metadata).slice(0, 80) : "";
  const label = element("td", { className: "id" }, element("div", { text: watch.id }));
  if (name) label.append(element("div", { className: "muted", text: name }));
  const webhook = watch.webhook_url && watch.webhook.state !== "none" ? watch.webhook.state : "—";
  const tr = element("tr", { "data-id": watch.id, "data-state": watch.state },
    element("td", {}, badge(watch.state)),
    label,
    element("td", { text: String(watch.attempts) }),
    element("td", { text: webhook }),
    element("td", {}, when(watch.updated_at)));
  tr.setAttribute("aria-selected", String(view.shown?.id === watch.id));
  tr.addEventListener("click", () => show(watch.id));
  return tr;
}

// Show `watch` in the list where it belongs (ids sort by creation: newest first), or take
// it out if it no longer matches the filter.
function putRow(watch, live = true) {
  const body = $("list").tBodies[0];
  const old = body.querySelector(`tr[data-id="${CSS.escape(watch.id)}"]`);
  if (view.filter && watch.state !== view.filter) {
    if (old) old.remove();
    view.rows.delete(watch.id);
  } else if (old) {
    old.replaceWith(row(watch));
    view.rows.set(watch.id, watch);
  } else if (!live || !view.cursor || watch.id > lastId()) {
    // A live one older than the last row loaded comes with "Load more" instead.
    const next = [...body.rows].find((tr) => tr.dataset.id < watch.id);
    body.insertBefore(row(watch), next || null);
    view.rows.set(watch.id, watch);
  }
  $("empty").hidden = view.rows.size > 0;
}

function lastId() {
  const rows = $("list").tBodies[0].rows;
  return rows.length ? rows[rows.length - 1].dataset.id : "";
}

async function setFilter(state) {
  view.filter = state;
  view.cursor = null;
  writeUrl();
  markFilter();
  try {
    await loadList();
  } catch (error) {
    report(error);
  }
}

function markFilter() {
  for (const card of $("counts").children) {
    card.setAttribute("aria-current", String(card.dataset.state === view.filter));
  }
}

// -- one watch -----------------------------------------------------------------------------

function stopDetailStream() {
  if (view.detailStream) view.detailStream.abort();
  view.detailStream = null;
}

function markSelected(id) {
  for (const tr of $("list").tBodies[0].rows) {
    tr.setAttribute("aria-selected", String(tr.dataset.id === id));
  }
}

async function show(id) {
  stopDetailStream();
  const ticket = ++view.showing;
  if (!WATCH_ID.test(id)) return report(new Error(`"${id.slice(0, 80)}" is not a watch id.`));
  try {
    const watch = await api(`/v1/watches/${encodeURIComponent(id)}`);
    if (ticket !== view.showing) return; // another watch was asked for meanwhile
    if (!watch || watch.id !== id) throw new Error(`No watch ${id} here.`);
    view.shown = watch;
    view.livePolls = [];
    view.deliveries = [];
    writeUrl();
    renderDetail();
    await loadDeliveries();
    if (watch.state === "pending") followShown(watch.id);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      report(new Error(`No watch ${id} here.`));
    } else if (error instanceof ApiError && error.status === 422) {
      report(new Error(`"${id}" is not a watch id.`));
    } else report(error);
  }
}

function hide() {
  stopDetailStream();
  view.shown = null;
  $("detail").hidden = true;
  writeUrl();
  markSelected(null);
}

async function loadDeliveries() {
  const watch = view.shown;
  if (!watch || !watch.webhook_url || watch.state === "pending") return;
  const deliveries = await api(`/v1/watches/${encodeURIComponent(watch.id)}/deliveries`);
  if (view.shown && view.shown.id === watch.id) {
    view.deliveries = deliveries.items;
    renderDetail();
  }
}

// The shown watch's own stream: its polls as they happen, then its end.
async function followShown(id) {
  const control = new AbortController();
  view.detailStream = control;
  let lastEventId = null;
  for (let failures = 0; failures < 20 && !control.signal.aborted; failures++) {
    const resume = lastEventId ? `?last_event_id=${encodeURIComponent(lastEventId)}` : "";
    try {
      for await (const event of events(`/v1/watches/${encodeURIComponent(id)}/events${resume}`,
        control.signal)) {
        lastEventId = event.id || lastEventId;
        failures = 0;
        if (!view.shown || view.shown.id !== id) return;
        const watch = event.data;
        if (event.event === "poll") addPoll(watch);
        view.shown = watch;
        putRow(watch);
        renderDetail();
        if (watch.state !== "pending") {
          await loadDeliveries();
          return;
        }
      }
    } catch (error) {
      if (control.signal.aborted || error instanceof AuthError) return;
    }
    await sleep(1000);
  }
}

function webhookState(watch) {
  return watch.webhook.state === "none" ? "sent when it ends" : watch.webhook.state;
}

const polls = (n) => `${n} ${n === 1 ? "poll" : "polls"}`;

// A poll of the shown watch, once (its own stream and the tenant's may both bring it).
function addPoll(watch) {
  if (!view.livePolls.some((poll) => poll.attempts === watch.attempts)) {
    view.livePolls.push(pollEntry(watch));
  }
}

function pollEntry(watch) {
  let text = watch.last_error ? `failed: ${watch.last_error}` : (watch.last_result || "answered");
  if (watch.progress !== null && watch.progress !== undefined) text += `, ${watch.progress} %`;
  return { at: watch.last_polled_at, attempts: watch.attempts, text };
}

function renderDetail() {
  const watch = view.shown;
  if (!watch) return;
  $("detail").hidden = false;
  $("detail-title").textContent = watch.id;
  markSelected(watch.id);
  const facts = [
    ["state", badge(watch.state)],
    ["status URL", watch.status_url],
    ["webhook", watch.webhook_url ? `${watch.webhook_url} (${webhookState(watch)})` : "none"],
    ["polls", String(watch.attempts)],
    ["next poll", watch.next_poll_at ? time(watch.next_poll_at) : "—"],
    ["deadline", new Date(watch.deadline).toLocaleString()],
    ["metadata", JSON.stringify(watch.metadata)],
  ];
  if (watch.reason) facts.splice(1, 0, ["reason", watch.reason]);
  $("facts").replaceChildren(...facts.flatMap(([name, value]) =>
    [element("dt", { text: name }), element("dd", {}, value)]));
  $("cancel").hidden = watch.state !== "pending";
  $("resend").hidden = watch.state === "pending" || !watch.webhook_url;
  $("timeline").replaceChildren(...timeline(watch).map(([at, kind, text]) =>
    element("li", { className: kind }, when(at), element("span", {}, element("b", { text: kind }),
      ` ${text}`))));
}

function timeline(watch) {
  const entries = [[watch.created_at, "registered", `every ${describePolicy(watch.policy)}`]];
  const seen = view.livePolls;
  const earlier = watch.attempts - seen.length;
  if (earlier > 0 && watch.last_polled_at && !seen.length) {
    const last = pollEntry(watch);
    entries.push([last.at, "poll", `#${last.attempts}: ${last.text}` +
      (earlier > 1 ? ` (the last of ${polls(earlier)})` : "")]);
  } else if (earlier > 0) {
    entries.push([seen[0].at, "poll", `${polls(earlier)} before this page opened`]);
  }
  for (const poll of seen) entries.push([poll.at, "poll", `#${poll.attempts}: ${poll.text}`]);
  if (watch.finished_at) {
    entries.push([watch.finished_at, watch.state, watch.reason || "the watch ended"]);
  }
  for (const attempt of view.deliveries) {
    const outcome = attempt.error || `HTTP ${attempt.status_code}`;
    const next = attempt.next_attempt_at ? `; next try ${time(attempt.next_attempt_at)}` : "";
    entries.push([attempt.at, "webhook", `${outcome} in ${attempt.latency_ms} ms${next}`]);
  }
  return entries.sort((a, b) => String(a[0]).localeCompare(String(b[0])));
}

function describePolicy(policy) {
  return `${policy.initial_wait_time}s ×${policy.backoff_factor} up to ${policy.max_interval}s,` +
    ` for at most ${policy.max_wait_time}s`;
}

async function cancelShown() {
  const watch = view.shown;
  if (!watch || !confirm(`Cancel watch ${watch.id}?`)) return;
  try {
    view.shown = await api(`/v1/watches/${encodeURIComponent(watch.id)}`, "DELETE");
    putRow(view.shown);
    renderDetail();
    refreshCounts();
  } catch (error) {
    report(error);
  }
}

async function resendShown() {
  const watch = view.shown;
  if (!watch) return;
  try {
    await api(`/v1/watches/${encodeURIComponent(watch.id)}/deliveries/retry`, "POST");
    say(`Webhook of ${watch.id} queued; its attempt shows here when it is made.`);
  } catch (error) {
    report(error);
  }
}

// -- the tenant's stream keeps counts, list and the shown watch current ----------------------

function applyWatch(watch) {
  putRow(watch);
  refreshCounts();
  if (view.shown && view.shown.id === watch.id) {
    if (watch.attempts > view.shown.attempts && view.shown.state === "pending") addPoll(watch);
    view.shown = watch;
    renderDetail();
    loadDeliveries().catch(report);
  }
}

async function followTenant() {
  if (view.feed) view.feed.abort(); // one feed per page, whatever logged in again
  const control = new AbortController();
  view.feed = control;
  for (let delay = 500; !control.signal.aborted; delay = Math.min(delay * 2, 10000)) {
    setLive("connecting");
    try {
      for await (const event of events("/v1/events", control.signal)) {
        delay = 500;
        if (event.event === "ready" || event.event === "resync") {
          // Subscribed (or behind): what is stored now, then every change after it.
          view.cursor = null;
          await Promise.all([loadList(), api("/v1/status").then(renderCounts)]);
          setLive("live");
        } else if (event.event === "watch") {
          applyWatch(event.data);
        }
      }
    } catch (error) {
      if (control.signal.aborted) return;
      if (error instanceof AuthError) return report(error);
    }
    setLive("reconnecting");
    await sleep(delay);
  }
}

function setLive(state) {
  $("live").dataset.live = state;
  $("live").textContent = state === "live" ? "live" : `${state}…`;
}

// -- messages, login, start ------------------------------------------------------------------

function report(error) {
  if (error instanceof AuthError) return askForKey("That key was refused.");
  $("message").textContent = error.message || String(error);
}

function say(text) {
  $("message").textContent = text;
}

function askForKey(why = "") {
  if (view.feed) view.feed.abort();
  sessionStorage.removeItem(KEY);
  view.key = null;
  $("app").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = why;
  $("key").focus();
}

async function start() {
  try {
    await api("/v1/status");
  } catch (error) {
    if (error instanceof AuthError) {
      return askForKey(view.key ? "That key was refused." : "");
    }
    say(`The API did not answer: ${error.message}`);
  }
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = !view.key;
  const watchId = readUrl();
  followTenant();
  if (watchId) show(watchId);
}

function wire() {
  $("login").addEventListener("submit", (submit) => {
    submit.preventDefault();
    view.key = $("key").value.trim();
    sessionStorage.setItem(KEY, view.key);
    $("key").value = "";
    start();
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    location.reload();
  });
  $("find").addEventListener("submit", (submit) => {
    submit.preventDefault();
    const id = $("find-id").value.trim();
    say("");
    if (id) show(id);
  });
  $("more").addEventListener("click", () => loadList().catch(report));
  $("close").addEventListener("click", hide);
  $("cancel").addEventListener("click", cancelShown);
  $("resend").addEventListener("click", resendShown);
}

wire();
start();
