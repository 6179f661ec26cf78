// The operators' dashboard: one page app over the service's own routes (service/ui.py). Every value from the
// service is inserted as text (textContent), never as HTML. The admin token lives in sessionStorage only.
"use strict";

const TOKEN_KEY = "reco-admin-token";
const page = document.getElementById("page");
const message = document.getElementById("message");
const tokenForm = document.getElementById("token-form");
let refreshTimer = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "onclick" || key === "onsubmit") node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function render(...nodes) {
  page.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined));
}

function show(text, kind = "error") {
  message.textContent = text;
  message.className = kind === "info" ? "info" : "";
  message.hidden = !text;
}

class ApiError extends Error {
  constructor(status, text) {
    super(text);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { Accept: "application/json", ...(options.body ? { "Content-Type": "application/json" } : {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (e) {
    throw new ApiError(0, `the service did not answer (${e.message})`);
  }
  const text = await response.text();
  if (response.status === 401 || response.status === 403) {
    askForToken(response.status === 403 ? "That token was refused." : "");
    throw new ApiError(response.status, "sign in with the admin token");
  }
  if (!response.ok) {
    let detail = text;
    try { detail = JSON.parse(text).message || text; } catch (_) { /* plain text */ }
    throw new ApiError(response.status, `${response.status}: ${detail}`);
  }
  if (path === "/metrics") return text;
  return text ? JSON.parse(text) : {};
}

function askForToken(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  tokenForm.hidden = false;
  document.getElementById("forget-token").hidden = true;
  render();
  show(why || "");
  document.getElementById("token").focus();
}

tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value);
  document.getElementById("token").value = "";
  tokenForm.hidden = true;
  route();
});

document.getElementById("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  askForToken("Token forgotten.");
});

function go(path) {
  history.pushState(null, "", path);
  route();
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href^='/ui']");
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
  event.preventDefault();
  go(link.getAttribute("href"));
});
window.addEventListener("popstate", route);

const fmt = (x, digits = 4) => (typeof x === "number" ? x.toFixed(digits) : x ?? "–");
const when = (seconds) => (seconds ? new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) : "–");
const itemLink = (id, title) => el("a", { href: `/ui/items/${encodeURIComponent(id)}` }, title || id);

function table(headers, rows, numeric = []) {
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, headers.map((h, i) => el("th", { class: numeric.includes(i) ? "num" : null }, h)))),
    el("tbody", {}, rows.map((row) => el("tr", {}, row.map((cell, i) => el("td", { class: numeric.includes(i) ? "num" : null }, cell))))),
  );
}

function card(label, value) {
  return el("div", { class: "card" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value));
}

// --- Overview ----------------------------------------------------------------------------------------------

function parseMetrics(text) {
  const out = { requests: 0, stages: {} };
  for (const line of text.split("\n")) {
    if (line.startsWith("reco_http_requests_total{")) out.requests += Number(line.split(" ").pop());
    const m = line.match(/^reco_stage_duration_seconds_(sum|count)\{stage="([a-z_]+)"\} (\S+)$/);
    if (m) (out.stages[m[2]] ??= { sum: 0, count: 0 })[m[1]] = Number(m[3]);
  }
  out.at = performance.now() / 1000;
  return out;
}

async function overviewPage() {
  const [info, ready] = await Promise.all([api("/admin/overview"), api("/readyz")]);
  const validation = info.validation || {};
  const rows = Object.entries(validation).map(([model, m]) => [
    model, fmt(m["ndcg@10"]), fmt(m["recall@10"]), fmt(m["hit_rate@10"]), fmt(m["coverage@10"]), m.users ?? "–",
  ]);
  const live = el("div", {}, el("p", { class: "muted" }, "Measuring the request rate…"));
  render(
    el("h1", {}, "Overview"),
    el(
      "div",
      { class: "cards" },
      card("Bundle", info.bundle_version),
      card("Built", info.created_at.slice(0, 19).replace("T", " ")),
      card("Users / trained items", `${info.n_users} / ${info.n_trained_items}`),
      card("Items in the index", info.n_items),
      card("Index", `${info.index.type || "?"}`),
      card("ONNX Runtime", `${info.onnx_provider} (${info.onnx_precision})`),
      card("FAISS", info.faiss_device),
      card("Cache / database", `${ready.cache_status ?? "–"} / ${ready.database_status ?? "–"}`),
    ),
    el("h2", {}, "Validation (the bundle's manifest: held-out positives, seen items excluded)"),
    rows.length ? table(["model", "NDCG@10", "Recall@10", "HitRate@10", "Coverage@10", "users"], rows, [1, 2, 3, 4, 5])
      : el("p", { class: "muted" }, "This bundle records no validation metrics."),
    el("h2", {}, "Live (from /metrics, refreshed every 5 s)"),
    live,
  );
  let before = parseMetrics(await api("/metrics"));
  const tick = async () => {
    const now = parseMetrics(await api("/metrics"));
    const dt = now.at - before.at;
    const stageRows = Object.entries(now.stages).map(([stage, s]) => {
      const b = before.stages[stage] || { sum: 0, count: 0 };
      const n = s.count - b.count;
      const total = s.count > 0 ? fmt((s.sum / s.count) * 1000, 2) : "–";
      return [stage, n, n > 0 ? fmt(((s.sum - b.sum) / n) * 1000, 2) : "–", s.count, total];
    });
    live.replaceChildren(
      el("p", {}, `Requests: ${fmt((now.requests - before.requests) / dt, 1)} per second`),
      table(["stage", "requests (5 s)", "mean ms (5 s)", "requests (since start)", "mean ms (since start)"], stageRows, [1, 2, 3, 4]),
    );
    before = now;
  };
  refreshTimer = setInterval(() => tick().catch((e) => show(e.message)), 5000);
  setTimeout(() => tick().catch((e) => show(e.message)), 1000);
}

// --- Users ---------------------------------------------------------------------------------------------------

function lookupForm(label, placeholder, prefix) {
  return el(
    "form",
    {
      onsubmit: (event) => {
        event.preventDefault();
        const id = event.target.elements.id.value.trim();
        if (id) go(`${prefix}${encodeURIComponent(id)}`);
      },
    },
    el("label", {}, label, el("input", { name: "id", placeholder, required: true })),
    el("button", { type: "submit" }, "Look up"),
  );
}

async function postEvent(userId, itemId, eventType) {
  await api("/v1/events", { method: "POST", body: JSON.stringify({ events: [{ user_id: userId, item_id: itemId, event_type: eventType }] }) });
}

async function userPage(userId) {
  const form = lookupForm("User id", "e.g. 42", "/ui/users/");
  if (!userId) {
    render(el("h1", {}, "Users"), form);
    return;
  }
  const [user, recs] = await Promise.all([
    api(`/admin/users/${encodeURIComponent(userId)}`),
    api("/v1/recommendations", { method: "POST", body: JSON.stringify({ user_id: userId, k: 10, explain: true }) }),
  ]);
  const act = (itemId, type) => async () => {
    try {
      await postEvent(userId, itemId, type);
      await userPage(userId);
      show(`Posted a ${type} of ${itemId}: the list above is the next recommendation.`, "info");
    } catch (e) { show(e.message); }
  };
  const recRows = recs.items.map((it, n) => [
    n + 1,
    itemLink(it.item_id, it.title),
    fmt(it.retrieval_score),
    fmt(it.ranking_score),
    it.because ? el("span", {}, itemLink(it.because.item_id, it.because.title), ` (${fmt(it.because.similarity, 2)})`) : "–",
    el("span", {}, el("button", { type: "button", onclick: act(it.item_id, "like") }, "like"), " ",
      el("button", { type: "button", onclick: act(it.item_id, "dislike") }, "dislike")),
  ]);
  const testForm = el(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        const f = event.target.elements;
        await act(f.item.value.trim(), f.type.value)();
      },
    },
    el("label", {}, "Item id", el("input", { name: "item", required: true })),
    el("label", {}, "Event", el("select", { name: "type" }, ["click", "view", "like", "purchase", "dislike"].map((t) => el("option", {}, t)))),
    el("button", { type: "submit" }, "Post a test event"),
  );
  render(
    el("h1", {}, `User ${user.user_id}`),
    form,
    el("p", { class: "muted" }, user.known_to_bundle
      ? `Known to the bundle: ${user.history_length} interactions trained on.`
      : "Not in the bundle: personalised from their events alone (or the cold-start list)."),
    recs.fallback ? el("p", { class: "muted" }, `Fallback: ${recs.fallback}`) : null,
    el("h2", {}, `Recommendations (bundle ${recs.bundle_version})`),
    table(["#", "item", "retrieval", "ranking", "because you liked", ""], recRows, [0, 2, 3]),
    testForm,
    el("h2", {}, `Recent events (${user.fresh.length})`),
    user.fresh.length
      ? table(["item", "kind"], user.fresh.map((e) => [itemLink(e.item_id, e.title), e.disliked ? "dislike" : "interaction"]))
      : el("p", { class: "muted" }, "None."),
    el("h2", {}, `History in the bundle (latest ${user.history.length} of ${user.history_length}, oldest first)`),
    user.history.length ? table(["item"], user.history.map((h) => [itemLink(h.item_id, h.title)])) : el("p", { class: "muted" }, "None."),
  );
}

// --- Items ---------------------------------------------------------------------------------------------------

function addItemForm() {
  return el(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        const f = event.target.elements;
        const id = f.item_id.value.trim();
        const body = {
          title: f.title.value.trim(),
          genres: f.genres.value.split(",").map((g) => g.trim()).filter(Boolean),
          year: f.year.value ? Number(f.year.value) : null,
          description: f.description.value,
        };
        try {
          const done = await api(`/v1/items/${encodeURIComponent(id)}`, { method: "PUT", body: JSON.stringify(body) });
          go(`/ui/items/${encodeURIComponent(id)}`);
          show(`${done.created ? "Added" : "Already there:"} ${id} (${done.n_items} items in the index).`, "info");
        } catch (e) { show(e.message); }
      },
    },
    el("label", {}, "Item id", el("input", { name: "item_id", required: true })),
    el("label", {}, "Title", el("input", { name: "title", required: true })),
    el("label", {}, "Genres (comma separated)", el("input", { name: "genres" })),
    el("label", {}, "Year", el("input", { name: "year", type: "number", min: 1800, max: 2100 })),
    el("label", {}, "Description", el("input", { name: "description" })),
    el("button", { type: "submit" }, "Add item live"),
  );
}

async function itemPage(itemId) {
  const form = lookupForm("Item id", "e.g. 50", "/ui/items/");
  if (!itemId) {
    render(el("h1", {}, "Items"), form, el("h2", {}, "Add an item"), addItemForm());
    return;
  }
  const [item, similar] = await Promise.all([
    api(`/admin/items/${encodeURIComponent(itemId)}`),
    api(`/v1/items/${encodeURIComponent(itemId)}/similar?k=10&explain=true`),
  ]);
  const rows = similar.items.map((s, n) => [
    n + 1,
    itemLink(s.item_id, s.title),
    fmt(s.score),
    s.reason ? fmt(s.reason.embedding_cosine) : "–",
    s.reason ? fmt(s.reason.co_consumption) : "–",
  ]);
  render(
    el("h1", {}, item.title),
    form,
    el(
      "div",
      { class: "cards" },
      card("Item id", item.item_id),
      card("Source", item.trained ? "trained" : "added live"),
      card("Genres", item.genres.join(", ") || "–"),
      card("Year", item.year ?? "–"),
      card("Popularity (log, scaled)", fmt(item.log_popularity, 3)),
    ),
    item.description ? el("p", {}, item.description) : null,
    el("h2", {}, `Similar items (${similar.method || "blend"})`),
    table(["#", "item", "score", "embedding cosine", "co-consumption"], rows, [0, 2, 3, 4]),
    el("h2", {}, "Add an item"),
    addItemForm(),
  );
}

// --- Bundles -------------------------------------------------------------------------------------------------

async function bundlesPage() {
  const [view, guard] = await Promise.all([api("/admin/bundles"), api("/admin/guard")]);
  const publish = (version, override) => async () => {
    try {
      await api(`/admin/bundles/${encodeURIComponent(version)}/publish`, { method: "POST", body: JSON.stringify({ override_gate: override }) });
      await bundlesPage();
      show(`Published ${version}: every process follows within ${view.sync_s} s.`, "info");
    } catch (e) { show(e.message); }
  };
  const rollback = async () => {
    try {
      const done = await api("/admin/bundles/rollback", { method: "POST" });
      await bundlesPage();
      show(`Rolled back ${done.previous}; published ${done.published}.`, "info");
    } catch (e) { show(e.message); }
  };
  const rows = view.bundles.map((b) => {
    const cand = b.metrics.candidate || {};
    const pub = b.metrics.published || {};
    const action = b.status === "published" ? "–"
      : el("button", { type: "button", onclick: publish(b.version, b.gate === "failed") }, b.gate === "failed" ? "publish (override gate)" : "publish");
    return [
      b.version + (b.version === view.serving ? " (served here)" : ""),
      el("span", { class: `status-${b.status}` }, b.status),
      b.gate,
      fmt(cand["ndcg@10"]),
      fmt(pub["ndcg@10"]),
      fmt(cand["recall@10"]),
      fmt(pub["recall@10"]),
      when(b.created_at),
      b.on_disk ? action : "not on disk",
    ];
  });
  render(
    el("h1", {}, "Bundles"),
    el("p", {}, `Serving ${view.serving}; the registry publishes ${view.published ?? "nothing yet"} (every process follows every ${view.sync_s} s).`),
    el("p", { id: "guard", class: guard.regression ? "status-rejected" : "muted" },
      `Post-publish guard: ${guard.regression ? "live CTR significantly below" : "compared with"} ${guard.previous ?? "no earlier bundle"}: ${guard.reason}.`),
    el("button", { type: "button", onclick: rollback, disabled: !view.published }, "Roll back to the bundle published before"),
    el("h2", {}, "Registry"),
    view.bundles.length
      ? table(["version", "status", "gate", "NDCG@10", "vs published", "Recall@10", "vs published", "created", ""], rows, [3, 4, 5, 6])
      : el("p", { class: "muted" }, "No bundle registered yet: python -m model_export retrain builds and registers one."),
    el("h2", {}, "Retrain runs"),
    view.retrains.length
      ? table(["finished", "result", "version", "seconds", "message"],
        view.retrains.map((r) => [when(r.finished_at), r.result, r.version ?? "–", fmt(r.finished_at - r.started_at, 0), r.message]), [3])
      : el("p", { class: "muted" }, "None yet."),
  );
}

// --- Experiments -------------------------------------------------------------------------------------------

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

const COLOURS = ["#0b5cad", "#c2410c", "#2b7a0b", "#7e22ce", "#a4161a", "#0f766e"];

function ctrChart(series, variants) {
  const width = 640, height = 220, pad = 36;
  const points = series.flatMap((p) => variants.map((v) => p.variants[v]?.ctr).filter((x) => typeof x === "number"));
  const top = Math.max(0.01, ...points) * 1.1;
  const x = (j) => pad + (series.length > 1 ? (j / (series.length - 1)) * (width - 2 * pad) : 0);
  const y = (ctr) => height - pad - (ctr / top) * (height - 2 * pad);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": "cumulative CTR by variant" });
  chart.append(svg("line", { x1: pad, y1: height - pad, x2: width - pad, y2: height - pad, stroke: "#999" }));
  chart.append(svg("line", { x1: pad, y1: pad, x2: pad, y2: height - pad, stroke: "#999" }));
  const label = svg("text", { x: 4, y: pad - 8, "font-size": 11 });
  label.textContent = `CTR ${top.toFixed(3)}`;
  chart.append(label);
  variants.forEach((v, n) => {
    const path = series.map((p, j) => [j, p.variants[v]?.ctr]).filter(([, c]) => typeof c === "number")
      .map(([j, c], i) => `${i ? "L" : "M"}${x(j).toFixed(1)},${y(c).toFixed(1)}`).join(" ");
    if (path) chart.append(svg("path", { d: path, fill: "none", stroke: COLOURS[n % COLOURS.length], "stroke-width": 2, "data-variant": v }));
    const key = svg("text", { x: width - pad - 120, y: pad + 14 * n, "font-size": 12, fill: COLOURS[n % COLOURS.length] });
    key.textContent = v;
    chart.append(key);
  });
  return chart;
}

async function experimentsPage(name) {
  if (name) return experimentPage(name);
  const listed = await api("/admin/experiments");
  const act = (n, what) => async () => {
    try {
      await api(`/admin/experiments/${encodeURIComponent(n)}/${what}`, { method: "POST" });
      await experimentsPage("");
      show(`Experiment ${n}: ${what === "start" ? "started" : "stopped"} (every process follows within seconds).`, "info");
    } catch (e) { show(e.message); }
  };
  const create = async (event) => {
    event.preventDefault();
    const form = event.target;
    try {
      const variants = JSON.parse(form.variants.value);
      await api("/admin/experiments", { method: "POST", body: JSON.stringify({ name: form.name.value, variants }) });
      await experimentsPage("");
      show(`Created ${form.name.value}.`, "info");
    } catch (e) { show(e.message); }
  };
  const example = JSON.stringify([{ name: "popular", share: 0.5, ordering: "popular" }, { name: "model", share: 0.5, exploration: 0.1 }]);
  render(
    el("h1", {}, "Experiments"),
    listed.length
      ? table(["name", "status", "variants", "created", "started", "stopped", ""], listed.map((x) => [
        el("a", { href: `/ui/experiments/${encodeURIComponent(x.name)}` }, x.name),
        x.status,
        x.variants.map((v) => `${v.name} ${(v.share * 100).toFixed(0)} %${v.ordering === "popular" ? " popular" : ""}${v.exploration ? ` explore ${v.exploration}` : ""}${v.diversity ? ` diversity ${v.diversity}` : ""}${v.bundle ? ` bundle ${v.bundle}` : ""}`).join(", "),
        when(x.created_at), when(x.started_at), when(x.stopped_at),
        x.status === "created" ? el("button", { type: "button", onclick: act(x.name, "start") }, "start")
          : x.status === "running" ? el("button", { type: "button", onclick: act(x.name, "stop") }, "stop") : "–",
      ]))
      : el("p", { class: "muted" }, "No experiment yet."),
    el("h2", {}, "New experiment"),
    el("form", { id: "experiment-form", onsubmit: create },
      el("label", {}, "Name", el("input", { name: "name", required: true, pattern: "[A-Za-z0-9._-]+" })),
      el("label", {}, "Variants (JSON; the first is the control)", el("input", { name: "variants", required: true, size: 80, value: example })),
      el("button", { type: "submit" }, "Create")),
  );
}

async function experimentPage(name) {
  const found = await api(`/admin/experiments/${encodeURIComponent(name)}/results?k=10&bucket_s=60`);
  const names = Object.keys(found.variants);
  const rows = names.map((v) => {
    const r = found.variants[v];
    const c = r.against_control?.ctr;
    return [v, r.lists, fmt(r.ctr), fmt(r.clicks_per_list), fmt(r.like_rate), fmt(r.purchase_rate), fmt(r.coverage),
      c ? `${fmt(c.difference)} [${fmt(c.always_valid_interval[0])}, ${fmt(c.always_valid_interval[1])}]` : "control",
      c ? fmt(c.always_valid_p_value) : "–",
      c ? el("span", { class: c.significant ? "status-published" : "muted" }, c.significant ? "significant" : "not yet") : "–"];
  });
  render(
    el("h1", {}, `Experiment ${found.experiment.name} (${found.experiment.status})`),
    table(["variant", "lists", "CTR@10", "clicks/list", "like rate", "purchase rate", "coverage", "CTR vs control (always-valid 95 %)", "p", ""], rows, [1, 2, 3, 4, 5, 6, 8]),
    el("h2", {}, "Cumulative CTR@10, per minute"),
    found.series.length ? ctrChart(found.series, names) : el("p", { class: "muted" }, "No lists served yet."),
    el("p", { class: "muted" }, "The always-valid test stays valid however often this page is read; the fixed-horizon p-values and intervals are in the JSON (GET /admin/experiments/{name}/results)."),
  );
  if (found.experiment.status === "running") refreshTimer = setInterval(() => experimentPage(name).catch((e) => show(e.message)), 10000);
}

// --- Routing -------------------------------------------------------------------------------------------------

async function route() {
  clearInterval(refreshTimer);
  show("");
  const path = decodeURI(location.pathname).replace(/\/+$/, "");
  const [, , kind, ...rest] = path.split("/");
  const id = rest.length ? decodeURIComponent(location.pathname.split("/").slice(3).join("/")) : "";
  const name = { users: "user", items: "item", bundles: "bundles", experiments: "experiments" }[kind] || "overview";
  for (const link of document.querySelectorAll("header nav a")) link.classList.toggle("active", link.dataset.page === name);
  document.title = `reco-service: ${name}${id ? ` ${id}` : ""}`;
  tokenForm.hidden = true;
  document.getElementById("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
  render(el("p", { class: "muted" }, "Loading…"));
  try {
    if (name === "user") await userPage(id);
    else if (name === "item") await itemPage(id);
    else if (name === "bundles") await bundlesPage();
    else if (name === "experiments") await experimentsPage(id);
    else await overviewPage();
  } catch (e) {
    if (e.status === 401 || e.status === 403) return;
    render(el("p", { class: "muted" }, "Nothing to show."));
    show(e.message);
  }
}

route();
