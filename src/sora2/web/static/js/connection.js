// The connection banner: shown when the proxy says the api is unreachable (502/503/504 with
// its JSON: message + suggestion) or when the web server itself cannot be reached; it retries
// with backoff and vanishes once the backend answers its health check again. Pages listen for
// the "sora:reconnected" event to reload what they could not fetch.

const HEALTH_URL = "/api/proxy/health";
const FIRST_DELAY_MS = 1000;
// Capped low: a health check through the proxy costs next to nothing while the api is down
// (the proxy answers it at once), and people want the app back as soon as the api is.
const MAX_DELAY_MS = 5000;

let outage = null; // { title, message, suggestion } while the banner is up
let attempt = 0;
let retryTimer = 0;
let countdownTimer = 0;
let nextRetryAt = 0;
let checking = false;

function banner() {
  return document.getElementById("connection-banner");
}

function part(name) {
  return banner()?.querySelector(`[data-banner-${name}]`) ?? null;
}

/** Whether a failed response is the proxy speaking about the backend (not the api's own 503). */
export function isProxyOutage(status, body) {
  if (![502, 503, 504].includes(status)) return false;
  const details = body && typeof body === "object" ? body.details : null;
  return Boolean(details && typeof details === "object" && ("suggestion" in details || "apiUrl" in details));
}

export function isDown() {
  return outage !== null;
}

/** Show the banner for `info` ({error, message, details: {suggestion}}) and start retrying. */
export function reportOutage(info) {
  const fresh = outage === null;
  outage = {
    title: info?.error || "The API is unreachable",
    message: info?.message || "The app cannot reach its API right now.",
    suggestion: info?.details?.suggestion || "",
  };
  render();
  if (fresh) {
    attempt = 0;
    scheduleCheck();
  }
}

/** The web server itself did not answer (network error): a different message, same retries. */
export function reportNetworkFailure() {
  reportOutage({
    error: "No connection",
    message: "The Sora2 web server did not answer. Your network or the web server may be down.",
    details: { suggestion: "Check your connection, or start the app: sora2 dev (or make dev)." },
  });
}

/** A response arrived from the backend: nothing is wrong any more. */
export function reportHealthy() {
  if (outage === null) return;
  outage = null;
  clearTimeout(retryTimer);
  clearInterval(countdownTimer);
  render();
  window.dispatchEvent(new CustomEvent("sora:reconnected"));
}

function render() {
  const element = banner();
  if (!element) return;
  if (outage === null) {
    element.hidden = true;
    return;
  }
  part("title").textContent = outage.title + ".";
  part("message").textContent = outage.message;
  part("suggestion").textContent = outage.suggestion;
  element.hidden = false;
}

function backoffDelay() {
  // Exponential with jitter, so many open tabs do not all knock at the same instant.
  const base = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** attempt);
  return Math.round(base / 2 + Math.random() * (base / 2));
}

function scheduleCheck() {
  clearTimeout(retryTimer);
  const delay = backoffDelay();
  attempt += 1;
  nextRetryAt = Date.now() + delay;
  retryTimer = setTimeout(checkNow, delay);
  updateCountdown();
  clearInterval(countdownTimer);
  countdownTimer = setInterval(updateCountdown, 500);
}

function updateCountdown() {
  const element = part("countdown");
  if (!element) return;
  const seconds = Math.max(0, Math.ceil((nextRetryAt - Date.now()) / 1000));
  element.textContent = checking ? "Checking…" : `Retrying in ${seconds} s`;
}

async function checkNow() {
  if (outage === null || checking) return;
  checking = true;
  updateCountdown();
  try {
    const response = await fetch(HEALTH_URL, { headers: { Accept: "application/json" }, cache: "no-store" });
    if (response.ok) {
      checking = false;
      reportHealthy();
      return;
    }
    const body = await response.json().catch(() => null);
    if (body && body.message) reportOutage(body);
  } catch {
    reportNetworkFailure();
  }
  checking = false;
  scheduleCheck();
}

export function initBanner() {
  part("retry")?.addEventListener("click", () => {
    attempt = 0;
    clearTimeout(retryTimer);
    checkNow();
  });
  // Coming back online is the best moment to look again.
  window.addEventListener("online", () => {
    if (outage !== null) checkNow();
  });
}
