// The api's JSON turned into the few shapes the pages use, in one place: the pages never reach
// into raw responses, so a renamed field is a one-line change here.

const FINAL_STATUSES = new Set(["completed", "failed", "cancelled"]);

function first(object, ...names) {
  for (const name of names) {
    if (object && object[name] !== undefined && object[name] !== null) return object[name];
  }
  return undefined;
}

export function isFinal(status) {
  return FINAL_STATUSES.has(status);
}

export function normalizeVideo(raw) {
  const video = raw?.video ?? raw ?? {};
  const error = first(video, "error");
  return {
    id: String(first(video, "id") ?? ""),
    prompt: String(first(video, "prompt") ?? ""),
    model: first(video, "model") ?? "",
    seconds: Number(first(video, "seconds", "duration") ?? 0),
    size: first(video, "size") ?? "",
    status: first(video, "status") ?? "queued",
    progress: Math.max(0, Math.min(100, Number(first(video, "progress") ?? 0))),
    cost: Number(first(video, "cost", "creditsCost", "credits_cost") ?? 0),
    errorMessage:
      (error && typeof error === "object" ? error.message : error) ??
      first(video, "errorMessage", "error_message") ??
      "",
    createdAt: first(video, "createdAt", "created_at") ?? null,
    hasThumbnail: Boolean(first(video, "thumbnailUrl", "thumbnail_url", "hasThumbnail", "has_thumbnail")),
  };
}

/** A page of items from any of the api's list answers, with what is needed to page it. */
export function normalizePage(raw, itemsKey) {
  const items = first(raw, "items", itemsKey, "data", "results") ?? (Array.isArray(raw) ? raw : []);
  const paging = first(raw, "pagination", "paging", "meta") ?? raw ?? {};
  const total = Number(first(paging, "total", "totalItems", "total_items", "count") ?? items.length);
  const pageSize = Number(first(paging, "pageSize", "page_size", "limit", "perPage", "per_page") ?? items.length);
  const page = Number(first(paging, "page", "currentPage") ?? 1);
  const pages = Number(
    first(paging, "pages", "totalPages", "total_pages") ?? (pageSize > 0 ? Math.ceil(total / pageSize) : 1),
  );
  return { items, total, page, pages: Math.max(1, pages) };
}

export function normalizeUser(raw) {
  const user = raw?.user ?? raw ?? {};
  return {
    id: String(first(user, "id") ?? ""),
    email: first(user, "email") ?? "",
    nickname: first(user, "nickname", "name") ?? "",
    credits: first(user, "credits", "balance"),
    createdAt: first(user, "createdAt", "created_at") ?? null,
  };
}

export function normalizeBalance(raw) {
  return Number(first(raw, "balance", "credits") ?? 0);
}

export function normalizeTransaction(raw) {
  return {
    id: String(first(raw, "id") ?? ""),
    type: first(raw, "type", "kind") ?? "",
    amount: Number(first(raw, "amount") ?? 0),
    balanceAfter: first(raw, "balanceAfter", "balance_after"),
    description: first(raw, "description", "reason") ?? "",
    videoId: first(raw, "videoId", "video_id", "relatedVideoId", "related_video_id") ?? null,
    createdAt: first(raw, "createdAt", "created_at") ?? null,
  };
}
