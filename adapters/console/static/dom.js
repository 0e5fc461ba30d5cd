// Small DOM helpers: elements are built with textContent, never from HTML strings, so that
// names and reasons coming from the ledger are shown as text.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

// table builds a table from column definitions {label, value(row), num?, cls?(row)}.
export function table(columns, rows, { id, empty = "Nothing to show." } = {}) {
  if (!rows.length) return h("p", { class: "muted empty", id }, empty);
  return h("div", { class: "table-wrap" },
    h("table", { id },
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : "" }, c.label)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, columns.map((c) => h("td", { class: (c.num ? "num " : "") + (c.cls ? c.cls(r) : "") }, c.value(r))))))));
}

export const fmt = new Intl.NumberFormat("en-US");

export function num(n) {
  return n === undefined || n === null ? "" : fmt.format(n);
}

// when formats an instant in a zone: 2025-03-30 14:05:09.
export function when(t, zone) {
  if (!t) return "";
  const d = new Date(t);
  const p = Object.fromEntries(new Intl.DateTimeFormat("en-CA", {
    timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
  }).formatToParts(d).map((x) => [x.type, x.value]));
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}`;
}

export function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

// csvDownload offers rows (arrays of cells) as a CSV file.
export function csvDownload(name, rows) {
  const cell = (v) => {
    const s = v === undefined || v === null ? "" : String(v);
    return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  };
  downloadText(name, rows.map((r) => r.map(cell).join(",")).join("\r\n") + "\r\n");
}

export function downloadText(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv;charset=utf-8" }));
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function ownerText(o) {
  switch (o.type) {
    case 0: return "account";
    case 1: return "product " + o.id;
    case 2: return "key " + o.id;
  }
  return "owner " + o.type + "." + o.id;
}
