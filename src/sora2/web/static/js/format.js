// How numbers, dates and states read on the page.

const STATUS_LABELS = {
  queued: "Queued",
  in_progress: "Rendering",
  completed: "Ready",
  failed: "Failed",
  cancelled: "Cancelled",
};

export function statusLabel(status) {
  return STATUS_LABELS[status] ?? status;
}

export function credits(amount) {
  return `${amount} credit${Math.abs(amount) === 1 ? "" : "s"}`;
}

export function signedCredits(amount) {
  return `${amount > 0 ? "+" : ""}${amount}`;
}

export function dateTime(value) {
  if (!value) return "";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/** The server's choices and prices, from the page's data-choices attribute. */
export function choices() {
  try {
    return JSON.parse(document.body.dataset.choices || "{}");
  } catch {
    return {};
  }
}

let apiPrices = null;

/** The api's own price table (credits per second by model) wins over the page's copy. */
export function usePrices(prices) {
  if (prices && typeof prices === "object") apiPrices = prices;
}

export function costOf(model, seconds) {
  const perSecond = (apiPrices ?? choices().creditsPerSecond ?? {})[model];
  return perSecond === undefined ? null : perSecond * Number(seconds);
}
