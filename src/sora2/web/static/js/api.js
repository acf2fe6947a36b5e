// Every data call the browser makes goes through here, to the proxy at /api/proxy/…, with the
// session cookie (HttpOnly: this code never sees a token). It turns answers into values or
// ApiErrors, renews an expired session once, and tells the connection banner what it learns.

import { isProxyOutage, reportHealthy, reportNetworkFailure, reportOutage } from "./connection.js";

export const API_BASE = "/api/proxy";

export class ApiError extends Error {
  constructor(status, body, response = null) {
    const message = body?.message || `The request failed (HTTP ${status}).`;
    super(message);
    this.status = status;
    this.title = body?.error || "Request failed";
    this.details = body?.details && typeof body.details === "object" ? body.details : {};
    this.requestId = body?.requestId || response?.headers.get("X-Request-ID") || "";
    this.retryAfter = retryAfterSeconds(response, this.details);
    this.outage = status === 0 || isProxyOutage(status, body);
  }
}

function retryAfterSeconds(response, details) {
  const header = Number.parseInt(response?.headers.get("Retry-After") ?? "", 10);
  if (Number.isFinite(header)) return header;
  const fromBody = Number(details.retryAfterSeconds);
  return Number.isFinite(fromBody) ? Math.ceil(fromBody) : null;
}

export function apiUrl(path, query = {}) {
  const url = new URL(`${API_BASE}/${path.replace(/^\/+/, "")}`, window.location.origin);
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, String(value));
  }
  return url.pathname + url.search;
}

async function send(method, path, { body, query, headers: extra } = {}) {
  const headers = { Accept: "application/json", ...extra };
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (body instanceof FormData) {
    init.body = body; // multipart: the browser writes the Content-Type with its boundary
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  try {
    return await fetch(apiUrl(path, query), init);
  } catch {
    reportNetworkFailure();
    throw new ApiError(0, {
      error: "No connection",
      message: "The request could not be sent: the web server did not answer.",
    });
  }
}

async function readBody(response) {
  if (response.status === 204) return null;
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return { message: text.slice(0, 300) };
  }
}

// One renewal at a time, however many requests found the session expired together.
let refreshing = null;

async function refreshSession() {
  refreshing ??= send("POST", "auth/refresh")
    .then((response) => response.ok)
    .catch(() => false)
    .finally(() => {
      refreshing = null;
    });
  return refreshing;
}

const NO_RENEWAL = new Set(["auth/login", "auth/register", "auth/refresh", "auth/logout"]);

/** Send a request; resolve with the parsed body, or reject with an ApiError. */
export async function request(method, path, options = {}) {
  let response = await send(method, path, options);
  if (response.status === 401 && !NO_RENEWAL.has(path) && (await refreshSession())) {
    response = await send(method, path, options);
  }
  const body = await readBody(response);
  if (response.status === 401 && !NO_RENEWAL.has(path)) {
    // The session ended (expired, revoked, signed out elsewhere): the page decides what to do.
    window.dispatchEvent(new CustomEvent("sora:session-ended"));
  }
  if (isProxyOutage(response.status, body)) {
    reportOutage(body);
  } else {
    reportHealthy();
  }
  if (!response.ok) throw new ApiError(response.status, body, response);
  return body;
}

/**
 * A fresh Idempotency-Key: 128 random bits in hex. (crypto.randomUUID exists only in secure
 * contexts, and the app may be reached over plain http on a LAN address.)
 */
export function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

export const api = {
  get: (path, query) => request("GET", path, { query }),
  post: (path, body) => request("POST", path, { body }),
  /** A POST the api deduplicates: the same key again answers the first result, charged once.
   * `body` may be FormData (sent as multipart/form-data, e.g. with an image). */
  postOnce: (path, body, idempotencyKey) =>
    request("POST", path, { body, headers: { "Idempotency-Key": idempotencyKey } }),
  put: (path, body) => request("PUT", path, { body }),
  delete: (path) => request("DELETE", path),
};
