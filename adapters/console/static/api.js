// The console's calls to the server it was loaded from. The credential lives in
// sessionStorage (this tab only, gone when it closes) and travels in the Authorization header,
// never in a URL.

const KEY = "tally.credential";

export function credential() {
  return sessionStorage.getItem(KEY);
}

export function setCredential(secret) {
  sessionStorage.setItem(KEY, secret);
}

export function forget() {
  sessionStorage.removeItem(KEY);
}

// ApiError carries the HTTP status and the server's message.
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function request(method, path, { secret = credential(), body, accept = "application/json" } = {}) {
  const headers = { Accept: accept };
  if (secret) headers.Authorization = "Bearer " + secret;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, "The server cannot be reached: " + e.message);
  }
  if (!resp.ok) {
    let msg = resp.status + " " + resp.statusText;
    try {
      const j = await resp.json();
      if (j && j.error) msg = j.error;
    } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, msg);
  }
  return accept === "application/json" ? resp.json() : resp.text();
}

export const get = (path, opts) => request("GET", path, opts);
export const post = (path, body, opts) => request("POST", path, { ...opts, body });
export const getText = (path) => request("GET", path, { accept: "text/csv" });

// query builds a query string from the set values of an object.
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return s ? "?" + s : "";
}
