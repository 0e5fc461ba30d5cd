// Tally console: sign-in, a hash router and the views. Every number comes from the server's
// audit API (/v1/) or admin API (/admin/v1/); nothing is computed here but sums for display.
import * as api from "./api.js";
import { h, table, num, when, ago, csvDownload, downloadText, ownerText } from "./dom.js";

const $ = (id) => document.getElementById(id);
const browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

// state of the session and of the view on screen
const session = { role: null, canWrite: false };
let asOfTimer = null;
let renderSeq = 0;
// exposed for the browser test and for debugging from the developer tools
// (rendered counts the views rendered, so that a test knows a new one is on screen)
window.tally = { chart: null, series: null, rendered: 0 };

// ---- sign-in ----

async function signIn(secret) {
  const who = await api.get("/v1/whoami", { secret });
  api.setCredential(secret);
  session.role = who.role;
  session.canWrite = who.canWrite;
  if (who.role === "token") {
    api.forget();
    throw new api.ApiError(403, "This is an access token for the data-object API. Sign in with the admin token or a viewer credential.");
  }
}

function showSignIn(message) {
  api.forget();
  session.role = null;
  $("nav").hidden = true;
  $("who").hidden = true;
  $("view").hidden = true;
  $("signin").hidden = false;
  const err = $("signin-error");
  err.hidden = !message;
  err.textContent = message || "";
  $("credential").value = "";
  $("credential").focus();
}

$("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const secret = $("credential").value.trim();
  const btn = ev.target.querySelector("button");
  btn.disabled = true;
  try {
    await signIn(secret);
    $("credential").value = "";
    if (!location.hash || location.hash === "#/") location.hash = "#/overview";
    await route();
  } catch (e) {
    showSignIn(e.status === 401 ? "Sign-in refused: " + e.message : e.message);
  } finally {
    btn.disabled = false;
  }
});

$("signout").addEventListener("click", () => {
  showSignIn("");
  history.replaceState(null, "", "#/overview");
});

// ---- the frame of every view ----

function params() {
  const i = location.hash.indexOf("?");
  return new URLSearchParams(i < 0 ? "" : location.hash.slice(i + 1));
}

function setParams(view, values) {
  location.hash = "#/" + view + api.query(values);
}

function frame(view, title) {
  $("signin").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  $("role").textContent = session.role === "admin" ? "Admin" : "Viewer (read-only)";
  $("role").className = "role " + session.role;
  for (const a of $("nav").querySelectorAll("a")) a.classList.toggle("active", a.dataset.view === view);
  $("view").hidden = false;
  $("view").dataset.view = view;
  $("view-title").textContent = title;
  $("view-error").hidden = true;
  $("asof").textContent = "";
  clearInterval(asOfTimer);
  window.tally.chart = null;
  window.tally.series = null;
  const body = $("view-body");
  body.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  return body;
}

// asOf says which event-store position the view reflects and how long ago it was loaded.
function asOf(position) {
  const loaded = Date.now();
  const show = () => { $("asof").textContent = `As of event ${num(position)}, loaded ${ago(Date.now() - loaded)}`; };
  $("asof").dataset.position = position;
  show();
  clearInterval(asOfTimer);
  asOfTimer = setInterval(show, 1000);
}

function fail(e) {
  if (e.status === 401) {
    showSignIn("Your credential was refused: " + e.message + " Sign in again.");
    return;
  }
  const err = $("view-error");
  err.textContent = e.message;
  err.hidden = false;
  const body = $("view-body");
  if (body.firstChild && body.firstChild.textContent === "Loading…") body.replaceChildren();
}

// inline form errors (bad zone, too many periods) keep the controls on screen
function formError(box, e) {
  if (e.status === 401) return fail(e);
  box.textContent = e.message;
  box.hidden = false;
}

// ---- controls shared by the usage views ----

function isoDate(d) {
  return d.toISOString().slice(0, 10);
}

function defaultRange() {
  const to = new Date();
  const from = new Date(to.getTime() - 29 * 86400e3);
  return { from: isoDate(from), to: isoDate(to) };
}

let zoneList = null;
function zoneInput(value) {
  if (!zoneList) {
    zoneList = h("datalist", { id: "zones" }, (Intl.supportedValuesOf ? Intl.supportedValuesOf("timeZone") : ["UTC"]).map((z) => h("option", { value: z })));
    document.body.append(zoneList);
  }
  return h("input", { name: "tz", value, list: "zones", spellcheck: "false", size: 18, required: true });
}

function field(label, input) {
  return h("label", { class: "field" }, h("span", {}, label), input);
}

function select(name, options, value) {
  return h("select", { name }, options.map(([v, t]) => h("option", { value: v, selected: String(v) === String(value) }, t)));
}

// ---- views ----

const views = {
  async overview() {
    const body = frame("overview", "Overview");
    const tz = params().get("tz") || browserZone;
    const errBox = h("p", { class: "error", role: "alert", hidden: true, id: "form-error" });
    const form = h("form", { class: "controls", id: "overview-form" }, field("Days and months in", zoneInput(tz)), h("button", { type: "submit" }, "Show"));
    form.addEventListener("submit", (ev) => { ev.preventDefault(); setParams("overview", Object.fromEntries(new FormData(form).entries())); });
    let ov;
    try {
      ov = await api.get("/v1/overview" + api.query({ tz }));
    } catch (e) {
      body.replaceChildren(form, errBox);
      return formError(errBox, e);
    }
    asOf(ov.position);
    const cards = [
      ["Products", ov.products],
      ["License keys", ov.keys],
      ["Access tokens", ov.tokens, "live"],
      ["Data objects", ov.dataObjects, ov.removedDataObjects ? num(ov.removedDataObjects) + " removed" : ""],
      ["Uploads today", ov.uploadsToday, "committed, " + ov.timeZone],
      ["Uploads this month", ov.uploadsThisMonth, "committed, " + ov.timeZone],
      ["Entries applied", ov.entriesApplied, "from " + num(ov.uploadsCommitted) + " committed uploads"],
      ["Aborted uploads", ov.uploadsAborted, ov.uploadsPending ? num(ov.uploadsPending) + " pending" : ""],
      ["Refused uploads", ov.uploadsRefused, ov.refusalsRecorded ? "with repeats" : "none recorded"],
    ];
    body.replaceChildren(
      form,
      h("div", { class: "cards", id: "overview-cards" }, cards.map(([label, value, note]) =>
        h("div", { class: "card stat", dataset: { metric: label } }, h("div", { class: "stat-label" }, label), h("div", { class: "stat-value" }, num(value)), h("div", { class: "stat-note muted" }, note || "")))),
      h("div", { class: "actions" },
        h("a", { class: "button", href: "#/usage" }, "Usage over time"),
        h("a", { class: "button", href: "#/uploads" }, "Uploads"),
        h("button", { type: "button", id: "csv", onclick: () => csvDownload("tally-overview.csv", [["metric", "value"], ...cards.map(([l, v]) => [l, v])]) }, "Download CSV")));
  },

  async usage() {
    const body = frame("usage", "Usage over time");
    const p = params();
    const range = defaultRange();
    const q = {
      scope: p.get("scope") || "all", id: p.get("id") || "", from: p.get("from") || range.from, to: p.get("to") || range.to,
      by: p.get("by") || "day", tz: p.get("tz") || browserZone, time: p.get("time") || "usage",
    };
    const [products, keys, objects] = await Promise.all([api.get("/admin/v1/products"), api.get("/admin/v1/keys"), api.get("/v1/dataobjects")]);
    const targets = {
      all: [["", "—"]],
      product: products.products.map((x) => [x.id, `#${x.id} ${x.name}`]),
      key: keys.keys.map((x) => [x.id, `#${x.id} ${x.key}`]),
      object: objects.dataObjects.map((x) => [x.objectId, `#${x.objectId} ${x.name} (${ownerText(x.owner)})`]),
    };
    const scopeSel = select("scope", [["all", "Everything"], ["product", "Product"], ["key", "License key"], ["object", "Data object"]], q.scope);
    const idSel = select("id", targets[q.scope] || [], q.id);
    scopeSel.addEventListener("change", () => idSel.replaceChildren(...(targets[scopeSel.value] || []).map(([v, t]) => h("option", { value: v }, t))));
    const errBox = h("p", { class: "error", role: "alert", hidden: true, id: "form-error" });
    const form = h("form", { class: "controls", id: "usage-form" },
      field("Of", scopeSel), field("Which", idSel),
      field("From", h("input", { type: "date", name: "from", value: q.from, required: true })),
      field("To (inclusive)", h("input", { type: "date", name: "to", value: q.to, required: true })),
      field("By", select("by", [["hour", "Hour"], ["day", "Day"], ["month", "Month"]], q.by)),
      field("Time zone", zoneInput(q.tz)),
      field("Time axis", select("time", [["usage", "When used"], ["recorded", "When recorded"]], q.time)),
      h("button", { type: "submit", class: "primary" }, "Show"));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const f = new FormData(form);
      setParams("usage", Object.fromEntries(f.entries()));
    });
    const out = h("div", { id: "usage-out" });
    body.replaceChildren(form, errBox, out);
    const sel = q.scope === "all" || !q.id ? {} : { [q.scope]: q.id };
    const usageQuery = { from: q.from, to: q.to, by: q.by, tz: q.tz, time: q.time, ...sel };
    let s;
    try {
      s = await api.get("/v1/usage/series" + api.query(usageQuery));
    } catch (e) {
      formError(errBox, e);
      return;
    }
    asOf(s.position);
    out.replaceChildren(
      seriesChart(s, { title: "Net usage per " + s.by }),
      h("div", { class: "actions" },
        h("span", { class: "muted" }, `${num(s.points.length)} periods · ${num(s.objects)} data objects · totals: +${num(s.totals.increments)} −${num(s.totals.decrements)} corrections ${num(s.totals.corrections)} net ${num(s.totals.net)}`),
        h("button", { type: "button", id: "csv", onclick: async () => {
          try {
            downloadText("tally-usage.csv", await api.getText("/v1/usage" + api.query({ ...usageQuery, format: "csv" })));
          } catch (e) { formError(errBox, e); }
        } }, "Download CSV")),
      table([
        { label: "Period", value: (r) => r.period },
        { label: "Increments", value: (r) => num(r.increments), num: true },
        { label: "Decrements", value: (r) => num(r.decrements), num: true },
        { label: "Corrections", value: (r) => num(r.corrections), num: true },
        { label: "Net", value: (r) => num(r.net), num: true },
        { label: "Entries", value: (r) => num(r.entries), num: true },
        { label: "Closing", value: (r) => num(r.closing), num: true },
      ], s.points, { id: "usage-table" }),
      h("h2", {}, "By data object"),
      table([
        { label: "Object", value: (o) => h("a", { href: "#/object/" + o.objectId + api.query({ from: q.from, to: q.to, tz: q.tz }) }, `#${o.objectId} ${o.name}`) },
        { label: "Owner", value: (o) => ownerText(o.owner) + (o.key ? " · " + o.key : "") },
        { label: "Increments", value: (o) => num(o.increments), num: true },
        { label: "Decrements", value: (o) => num(o.decrements), num: true },
        { label: "Corrections", value: (o) => num(o.corrections), num: true },
        { label: "Net", value: (o) => num(o.net), num: true },
        { label: "Closing", value: (o) => num(o.closing), num: true },
      ], byObject(s.rows), { id: "usage-objects", empty: "No data object had usage in this range." }));
  },

  async limits() {
    const body = frame("limits", "Limits");
    const p = params();
    const range = defaultRange();
    const q = { from: p.get("from") || range.from, to: p.get("to") || range.to, tz: p.get("tz") || browserZone, limit: p.get("limit") || "10" };
    const lim = await api.get("/v1/limits");
    asOf(lim.position);
    const errBox = h("p", { class: "error", role: "alert", hidden: true, id: "form-error" });
    const form = h("form", { class: "controls", id: "top-form" },
      field("From", h("input", { type: "date", name: "from", value: q.from, required: true })),
      field("To (inclusive)", h("input", { type: "date", name: "to", value: q.to, required: true })),
      field("Time zone", zoneInput(q.tz)),
      field("Keys", h("input", { type: "number", name: "limit", value: q.limit, min: 1, max: 100 })),
      h("button", { type: "submit", class: "primary" }, "Show"));
    form.addEventListener("submit", (ev) => { ev.preventDefault(); setParams("limits", Object.fromEntries(new FormData(form).entries())); });
    const topBox = h("div", { id: "top-keys" });
    body.replaceChildren(
      h("h2", {}, "Near or over a feature lock"),
      h("p", { class: "muted" }, `Data objects whose value is at least ${Math.round(lim.near * 100)}% of the smallest feature lock of the live tokens that may change them.`),
      table([
        { label: "Object", value: (r) => h("a", { href: "#/object/" + r.objectId }, `#${r.objectId} ${r.name}`) },
        { label: "Owner", value: (r) => ownerText(r.owner) + (r.key ? " · " + r.key : "") },
        { label: "Value", value: (r) => num(r.intValue), num: true },
        { label: "Feature lock", value: (r) => num(r.featureLock), num: true },
        { label: "Tokens", value: (r) => num(r.tokens), num: true },
        { label: "Of lock", value: (r) => h("span", { class: "ratio" }, h("span", { class: "bar" + (r.over ? " over" : ""), dataset: { w: Math.min(100, Math.round(r.ratio * 100)) } }), Math.round(r.ratio * 100) + "%"), num: true },
        { label: "", value: (r) => r.over ? h("span", { class: "badge bad" }, "over") : h("span", { class: "badge warn" }, "near") },
      ], lim.limits, { id: "limits-table", empty: "No data object is near a feature lock." }),
      h("div", { class: "actions" }, h("button", { type: "button", id: "csv", onclick: () => csvDownload("tally-limits.csv",
        [["object_id", "name", "owner", "key", "value", "feature_lock", "tokens", "ratio", "over"], ...lim.limits.map((r) => [r.objectId, r.name, ownerText(r.owner), r.key || "", r.intValue, r.featureLock, r.tokens, r.ratio.toFixed(3), r.over])]) }, "Download CSV")),
      h("h2", {}, "Top keys by usage"), form, errBox, topBox);
    for (const b of body.querySelectorAll(".bar")) b.style.width = (b.dataset.w * 0.8) + "px";
    try {
      const top = await api.get("/v1/usage/top-keys" + api.query(q));
      topBox.replaceChildren(
        table([
          { label: "Key", value: (r) => h("a", { href: "#/usage" + api.query({ scope: "key", id: r.keyId, from: q.from, to: q.to, tz: q.tz }) }, r.key) },
          { label: "Product", value: (r) => r.productId, num: true },
          { label: "Increments", value: (r) => num(r.increments), num: true },
          { label: "Decrements", value: (r) => num(r.decrements), num: true },
          { label: "Net", value: (r) => num(r.net), num: true },
          { label: "Entries", value: (r) => num(r.entries), num: true },
        ], top.keys, { id: "top-table", empty: "No key had usage in this period." }),
        h("div", { class: "actions" }, h("span", { class: "muted" }, `${top.timeZone}, ${q.from} to ${q.to}`), h("button", { type: "button", onclick: () => csvDownload("tally-top-keys.csv",
          [["key_id", "key", "product_id", "increments", "decrements", "corrections", "net", "entries"], ...top.keys.map((r) => [r.keyId, r.key, r.productId, r.increments, r.decrements, r.corrections, r.net, r.entries])]) }, "Download CSV")));
    } catch (e) {
      formError(errBox, e);
    }
  },

  async objects() {
    const body = frame("objects", "Data objects");
    const list = await api.get("/v1/dataobjects");
    asOf(list.position);
    const filter = h("input", { type: "search", placeholder: "Filter by name, key or id", id: "filter", size: 30 });
    const render = () => {
      const f = filter.value.trim().toLowerCase();
      const rows = list.dataObjects.filter((o) => !f || o.name.toLowerCase().includes(f) || (o.key || "").toLowerCase().includes(f) || String(o.objectId) === f);
      box.replaceChildren(table([
        { label: "Id", value: (r) => r.objectId, num: true },
        { label: "Name", value: (r) => h("a", { href: "#/object/" + r.objectId }, r.name) },
        { label: "Owner", value: (r) => ownerText(r.owner) },
        { label: "Key", value: (r) => r.key || "" },
        { label: "Value", value: (r) => num(r.intValue), num: true },
        { label: "", value: (r) => r.removed ? h("span", { class: "badge" }, "removed") : "" },
      ], rows, { id: "objects-table" }));
    };
    const box = h("div");
    filter.addEventListener("input", render);
    body.replaceChildren(h("div", { class: "actions" }, filter, h("button", { type: "button", id: "csv", onclick: () => csvDownload("tally-data-objects.csv",
      [["object_id", "name", "owner_type", "owner_id", "product_id", "key_id", "key", "int_value", "string_value", "removed"], ...list.dataObjects.map((o) => [o.objectId, o.name, o.owner.type, o.owner.id, o.productId || "", o.keyId || "", o.key || "", o.intValue, o.stringValue, !!o.removed])]) }, "Download CSV")), box);
    render();
  },

  async object(id) {
    const body = frame("object", "Data object #" + id);
    const p = params();
    const range = defaultRange();
    const tz = p.get("tz") || browserZone;
    const from = p.get("from") || range.from;
    const to = p.get("to") || range.to;
    const status = await api.get("/v1/status");
    const hist = await api.get(`/v1/dataobjects/${encodeURIComponent(id)}/history`);
    asOf(status.position);
    $("view-title").textContent = `${hist.name} (#${hist.objectId})`;
    const valueNow = await api.get(`/v1/dataobjects/${encodeURIComponent(id)}/value`);
    const errBox = h("p", { class: "error", role: "alert", hidden: true, id: "form-error" });
    const valueBox = h("div", { class: "card stat", id: "value-at" });
    const showValue = async (at) => {
      try {
        const v = await api.get(`/v1/dataobjects/${encodeURIComponent(id)}/value` + api.query({ at: at.toISOString() }));
        valueBox.replaceChildren(h("div", { class: "stat-label", title: "what the ledger had recorded by then" }, "Value as of " + when(at, tz)),
          h("div", { class: "stat-value", id: "value-at-value" }, v.exists ? num(v.intValue) : "—"), h("div", { class: "stat-note muted" }, v.exists ? "" : "the object did not exist yet"));
      } catch (e) { formError(errBox, e); }
    };
    const rangeForm = h("form", { class: "controls", id: "object-form" },
      field("From", h("input", { type: "date", name: "from", value: from })),
      field("To (inclusive)", h("input", { type: "date", name: "to", value: to })),
      field("Time zone", zoneInput(tz)),
      h("button", { type: "submit" }, "Show"));
    rangeForm.addEventListener("submit", (ev) => { ev.preventDefault(); setParams("object/" + id, Object.fromEntries(new FormData(rangeForm).entries())); });
    const chartBox = h("div", { id: "object-chart" });
    const head = h("div", { class: "cards" },
      h("div", { class: "card stat" }, h("div", { class: "stat-label" }, "Current value"), h("div", { class: "stat-value", id: "current-value" }, num(valueNow.intValue))),
      h("div", { class: "card stat" }, h("div", { class: "stat-label" }, "Owner"), h("div", { class: "stat-value small" }, ownerText(hist.owner))),
      h("div", { class: "card stat" }, h("div", { class: "stat-label" }, "Events"), h("div", { class: "stat-value" }, num(hist.entries.length))),
      valueBox);
    valueBox.replaceChildren(h("div", { class: "stat-label" }, "Value as of…"), h("div", { class: "stat-note muted" }, "click a period on the chart"));
    body.replaceChildren(head, rangeForm, errBox, chartBox, correctionBox(id), h("h2", {}, "History ", h("span", { class: "muted small" }, "every event of the object, times in " + tz)), historyTable(hist, tz),
      h("div", { class: "actions" }, h("button", { type: "button", id: "csv", onclick: () => csvDownload(`tally-object-${id}-history.csv`,
        [["revision", "position", "type", "amount", "before", "after", "at", "recorded", "source", "upload_id", "layer", "log_timestamp", "anomaly", "upload_status", "counted", "correction", "token_id", "admin", "request_id"],
          ...hist.entries.map((e) => [e.revision, e.position, e.type, e.amount || "", e.before ?? "", e.after ?? "", e.at, e.recorded, e.uploadId ? "upload" : (e.correction ? "correction" : "direct"), e.uploadId || "", e.layer || "", e.logTimestamp || "", e.anomaly || "", e.uploadStatus || "", e.counted, e.correction || "", e.tokenId || "", !!e.admin, e.requestId || ""])]) }, "Download CSV")));
    try {
      const s = await api.get("/v1/usage/series" + api.query({ object: id, from, to, tz, by: "day" }));
      chartBox.replaceChildren(seriesChart(s, { title: "Net usage per day, click a day for the value at its end", onPick: (pt) => showValue(new Date(pt.end)) }));
    } catch (e) { formError(errBox, e); }
  },

  async uploads() {
    const body = frame("uploads", "Uploads");
    const tz = params().get("tz") || browserZone;
    const list = await api.get("/v1/uploads");
    asOf(list.position);
    const counts = {};
    for (const u of list.uploads) counts[u.status] = (counts[u.status] || 0) + 1;
    body.replaceChildren(
      h("div", { class: "actions" },
        h("span", { class: "muted" }, ["committed", "aborted", "refused", "pending"].map((s) => `${num(counts[s] || 0)} ${s}`).join(" · ") + ` · times in ${tz}`),
        h("button", { type: "button", id: "csv", onclick: () => csvDownload("tally-uploads.csv",
          [["upload_id", "status", "reason", "owner_type", "owner_id", "entries", "known", "objects", "prepared", "decided", "repeats", "token_id", "request_id"],
            ...list.uploads.map((u) => [u.id, u.status, u.reason || "", u.owner.type, u.owner.id, u.entries, u.known, u.objects, u.prepared, u.decided || "", u.repeats || 0, u.tokenId || "", u.requestId || ""])]) }, "Download CSV")),
      table([
        { label: "Prepared", value: (u) => when(u.prepared, tz) },
        { label: "Status", value: (u) => h("span", { class: "badge " + ({ committed: "ok", aborted: "warn", refused: "bad" }[u.status] || "") }, u.status) },
        { label: "Owner", value: (u) => ownerLink(u.owner) },
        { label: "Entries applied", value: (u) => u.status === "committed" ? num(u.entries) : "0", num: true },
        { label: "New entries", value: (u) => num(u.entries), num: true },
        { label: "Known", value: (u) => num(u.known), num: true },
        { label: "Reason", value: (u) => u.reason || "" },
        { label: "Token", value: (u) => u.tokenId ? u.tokenId.slice(0, 8) : "" },
        { label: "Request id", value: (u) => u.requestId || "" },
      ], list.uploads, { id: "uploads-table", empty: "No uploads yet." }));
  },
};

// access lists the access tokens and viewer credentials (never a secret) and lets the admin
// create a viewer credential, whose secret is shown once, in this view only.
views.access = async function access() {
  const body = frame("access", "Access");
  const [tokens, viewers, status] = await Promise.all([api.get("/admin/v1/tokens"), api.get("/admin/v1/viewers"), api.get("/v1/status")]);
  asOf(status.position);
  const lock = (n) => (n === 0 ? "—" : num(n));
  const viewersTable = (list) => table([
    { label: "Name", value: (v) => v.name },
    { label: "Id", value: (v) => h("code", {}, v.id) },
    { label: "Created", value: (v) => when(v.created, browserZone) },
    { label: "Expires", value: (v) => (v.expires ? when(v.expires, browserZone) : "never") },
    { label: "", value: (v) => (v.revoked ? h("span", { class: "badge bad" }, "revoked") : h("span", { class: "badge ok" }, "active")) },
  ], list, { id: "viewers-table", empty: "No viewer credentials yet." });
  const viewersBox = h("div", {}, viewersTable(viewers.viewers));
  const parts = [h("h2", {}, "Viewer credentials ", h("span", { class: "muted small" }, "read everything, change nothing")), viewersBox];
  if (session.canWrite) {
    const msg = h("p", { class: "error", role: "alert", hidden: true, id: "viewer-error" });
    const shown = h("div", { id: "new-viewer" });
    const form = h("form", { class: "controls", id: "viewer-form" },
      field("Name", h("input", { type: "text", name: "name", required: true, maxlength: 100, size: 24, placeholder: "billing" })),
      field("Valid for (days, empty: until revoked)", h("input", { type: "number", name: "days", min: 1, max: 3650 })),
      h("button", { type: "submit", class: "primary" }, "Create viewer credential"), msg);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = new FormData(form);
      const req = { name: f.get("name") };
      if (f.get("days")) req.expires = new Date(Date.now() + Number(f.get("days")) * 86400e3).toISOString();
      try {
        const v = await api.post("/admin/v1/viewers", req);
        form.reset();
        shown.replaceChildren(h("div", { class: "note secret" },
          h("strong", {}, `Viewer credential “${v.name}” created. `), "Its secret is shown only now; copy it and hand it over safely:",
          h("code", { id: "new-viewer-secret" }, v.secret)));
        viewersBox.replaceChildren(viewersTable((await api.get("/admin/v1/viewers")).viewers));
      } catch (e) {
        formError(msg, e);
      }
    });
    parts.push(h("details", { class: "card" }, h("summary", {}, "Create a viewer credential"), form), shown);
  }
  parts.push(
    h("h2", {}, "Access tokens ", h("span", { class: "muted small" }, "of the data-object API; secrets are never shown")),
    table([
      { label: "Name", value: (t) => t.name || "" },
      { label: "Id", value: (t) => h("code", {}, t.id.slice(0, 8)) },
      { label: "Methods", value: (t) => t.methods.join(", "), cls: () => "wrap" },
      { label: "Product lock", value: (t) => lock(t.productLock), num: true },
      { label: "Key lock", value: (t) => (t.keyLock < 0 ? "…ToKey only" : lock(t.keyLock)), num: true },
      { label: "Feature lock", value: (t) => lock(t.featureLock), num: true },
      { label: "", value: (t) => (t.revoked ? h("span", { class: "badge bad" }, "revoked") : h("span", { class: "badge ok" }, "active")) },
    ], tokens.tokens, { id: "tokens-table", empty: "No access tokens yet." }),
    h("div", { class: "actions" }, h("button", { type: "button", id: "csv", onclick: () => csvDownload("tally-access.csv",
      [["kind", "id", "name", "methods", "product_lock", "key_lock", "feature_lock", "expires", "revoked", "created"],
        ...viewers.viewers.map((v) => ["viewer", v.id, v.name, "", "", "", "", v.expires || "", v.revoked, v.created]),
        ...tokens.tokens.map((t) => ["token", t.id, t.name || "", t.methods.join(" "), t.productLock, t.keyLock, t.featureLock, "", t.revoked, t.created])]) }, "Download CSV")));
  body.replaceChildren(...parts);
};

// ownerLink shows an owner, linked to its usage when it is a product or a key.
function ownerLink(o) {
  const scope = { 1: "product", 2: "key" }[o.type];
  return scope ? h("a", { href: "#/usage" + api.query({ scope, id: o.id }) }, ownerText(o)) : ownerText(o);
}

// byObject sums a report's rows per data object (rows come ordered by object, then period), so
// that each number of the chart can be opened down to its objects and their histories.
function byObject(rows) {
  const out = new Map();
  for (const r of rows) {
    const o = out.get(r.objectId) || { ...r, increments: 0, decrements: 0, corrections: 0, net: 0 };
    o.increments += r.increments;
    o.decrements += r.decrements;
    o.corrections += r.corrections;
    o.net += r.net;
    o.closing = r.closing;
    out.set(r.objectId, o);
  }
  return [...out.values()];
}

// correctionBox is the correction form (admin) or says why there is none (viewer).
function correctionBox(id) {
  if (!session.canWrite) {
    return h("p", { class: "note", id: "correction-readonly" }, "Corrections need the admin token: you are signed in with a read-only viewer credential.");
  }
  const msg = h("p", { class: "error", role: "alert", hidden: true, id: "correction-error" });
  const form = h("form", { class: "controls correction", id: "correction-form" },
    field("Correction (±)", h("input", { type: "number", name: "amount", required: true, step: 1 })),
    field("Reason", h("input", { type: "text", name: "reason", required: true, maxlength: 1000, size: 40 })),
    h("button", { type: "submit", class: "primary" }, "Post correction"), msg);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    try {
      await api.post(`/v1/dataobjects/${encodeURIComponent(id)}/corrections`, { amount: Number(f.get("amount")), reason: f.get("reason") });
      await route();
    } catch (e) {
      formError(msg, e);
    }
  });
  return h("details", { class: "card", open: true }, h("summary", {}, "Post a correction"), form);
}

function historyTable(hist, tz) {
  const source = (e) => {
    if (e.uploadId) {
      return h("span", { class: "source upload" }, "upload layer ", h("code", { title: e.layer }, e.layer.slice(0, 12)),
        " · log ", h("span", { class: "nowrap" }, when(e.logTimestamp, tz)), e.anomaly ? h("span", { class: "badge warn", title: e.anomaly }, "anomaly: " + e.anomaly) : "");
    }
    if (e.correction) return h("span", { class: "source correction" }, "correction: ", e.correction);
    if (e.type === "DataObjectAdded" || e.type === "IntValueSet" || e.type === "StringValueSet" || e.type === "DataObjectRemoved" || e.amount) return h("span", { class: "source" }, "direct call");
    return "";
  };
  return table([
    { label: "Rev", value: (e) => e.revision, num: true },
    { label: "Recorded", value: (e) => when(e.recorded, tz) },
    { label: "Event", value: (e) => e.type },
    { label: "Amount", value: (e) => e.amount ? (e.amount > 0 ? "+" : "") + num(e.amount) : "", num: true },
    { label: "Before → after", value: (e) => (e.before !== undefined ? num(e.before) + " → " : "") + (e.after !== undefined ? num(e.after) : ""), num: true },
    { label: "Source", value: source, cls: () => "wrap" },
    { label: "Status", value: (e) => e.uploadStatus ? h("span", { class: "badge " + (e.uploadStatus === "committed" ? "ok" : "warn") }, e.uploadStatus) : (e.counted ? "" : "not counted") },
    { label: "By · request", value: (e) => h("span", { class: "who", title: [e.tokenId ? "token " + e.tokenId : "", e.requestId ? "request " + e.requestId : "", e.clientAddr || ""].filter(Boolean).join("\n") },
      e.admin ? "admin" : (e.tokenId ? "token " + e.tokenId.slice(0, 8) : ""), e.requestId ? h("span", { class: "muted" }, " · " + e.requestId.slice(0, 8)) : "") },
  ], hist.entries, { id: "history-table" });
}

// seriesChart draws a usage series with uPlot: one bar per period (gap-filled by the server),
// the times in the series' zone.
function seriesChart(s, { title, onPick } = {}) {
  const box = h("div", { class: "card chart" }, h("div", { class: "chart-head" }, h("strong", {}, title), h("span", { class: "muted zone", id: "chart-zone" }, "Times in " + s.timeZone)));
  const plot = h("div", { class: "plot", id: "chart" });
  box.append(plot);
  const xs = s.points.map((p) => Date.parse(p.start) / 1000);
  const ys = s.points.map((p) => p.net);
  plot.dataset.points = String(xs.length);
  const width = Math.max(320, Math.min(1100, (document.getElementById("main").clientWidth || 1000) - 48));
  // Half a period of room on each side, so that the first and last bars are whole.
  const half = xs.length > 1 ? (xs[1] - xs[0]) / 2 : 1800;
  const opts = {
    width, height: 260,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), s.timeZone),
    legend: { show: true, live: true },
    cursor: { drag: { x: false, y: false }, points: { show: false }, y: false },
    scales: {
      x: { time: true, range: (u, min, max) => [min - half, max + half] },
      y: { range: (u, min, max) => [Math.min(0, min), Math.max(1, max) * 1.1] },
    },
    axes: [{ stroke: "#5b6473", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e2e5ea" } }, { stroke: "#5b6473", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e2e5ea" }, size: 56 }],
    series: [
      { label: s.by, value: (u, v, si, i) => (i === null || i === undefined ? "—" : s.points[i].period) },
      { label: "net", stroke: "#2563eb", fill: "rgba(37,99,235,0.55)", width: 0, paths: uPlot.paths.bars({ size: [0.7, 48], align: 0 }), points: { show: false }, value: (u, v) => (v === null || v === undefined ? "—" : num(v)) },
    ],
  };
  const chart = new uPlot(opts, [xs, ys], plot);
  if (onPick) {
    plot.addEventListener("click", () => {
      const i = chart.cursor.idx;
      if (i !== null && i !== undefined) onPick(s.points[i]);
    });
    plot.classList.add("pickable");
  }
  window.tally.chart = chart;
  window.tally.series = s;
  return box;
}

// ---- router ----

async function route() {
  const seq = ++renderSeq;
  if (!api.credential()) return showSignIn("");
  if (!session.role) {
    try {
      await signIn(api.credential());
    } catch (e) {
      return showSignIn(e.status === 401 ? "Your credential was refused: " + e.message : e.message);
    }
  }
  const path = location.hash.replace(/^#\/?/, "").split("?")[0];
  const [name, arg] = path.split("/");
  const view = arg !== undefined && name === "object" ? () => views.object(arg) : views[name || "overview"];
  try {
    if (!view) throw new api.ApiError(404, `There is no page “${path}”.`);
    await view();
  } catch (e) {
    if (seq === renderSeq) fail(e);
  }
  window.tally.rendered++;
}

window.addEventListener("hashchange", route);
route();
