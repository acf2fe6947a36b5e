// The api's JSON (camelCase, see /api-docs) turned into the few shapes the pages use, in one
// place: the pages never reach into raw responses, so a renamed field is a one-line change here.

const FINAL_STATUSES = new Set(["completed", "failed", "cancelled"]);

export function isFinal(status) {
  return FINAL_STATUSES.has(status);
}

function clampProgress(value) {
  return Math.max(0, Math.min(100, Number(value ?? 0)));
}

export function normalizeVideo(video) {
  return {
    id: String(video.id ?? ""),
    prompt: String(video.prompt ?? ""),
    model: video.model ?? "",
    seconds: Number(video.seconds ?? 0),
    size: video.size ?? "",
    status: video.status ?? "queued",
    progress: clampProgress(video.progress),
    cost: Number(video.cost ?? 0),
    errorMessage: video.errorMessage ?? "",
    createdAt: video.createdAt ?? null,
    remixOf: video.remixOf ?? null,
    inputReferenceUrl: video.inputReferenceUrl ?? null,
  };
}

/** A catalog model from `GET /api/models` (DESIGN's snake_case shape). */
export function normalizeModel(model) {
  return {
    id: String(model.id ?? ""),
    name: String(model.name ?? model.id ?? ""),
    seconds: Array.isArray(model.seconds) ? model.seconds.map(Number) : [],
    sizes: Array.isArray(model.sizes) ? model.sizes.map(String) : [],
    creditsPerSecond: Number(model.credits_per_second ?? 0),
    imageInput: Boolean(model.image_input),
    remix: Boolean(model.remix),
  };
}

/** A page of a list answer ({items, page, limit, total}) with what is needed to page it. */
export function normalizePage(answer) {
  const items = Array.isArray(answer?.items) ? answer.items : [];
  const total = Number(answer?.total ?? items.length);
  const limit = Number(answer?.limit ?? items.length);
  return {
    items,
    total,
    page: Number(answer?.page ?? 1),
    pages: Math.max(1, limit > 0 ? Math.ceil(total / limit) : 1),
  };
}

export function normalizeUser(user) {
  return {
    id: String(user.id ?? ""),
    email: user.email ?? "",
    nickname: user.nickname ?? "",
    role: user.role ?? "user",
    createdAt: user.createdAt ?? null,
  };
}

export function normalizeBalance(answer) {
  return Number(answer?.balance ?? 0);
}

export function normalizeTransaction(transaction) {
  return {
    type: transaction.type ?? "",
    amount: Number(transaction.amount ?? 0),
    balanceAfter: transaction.balanceAfter ?? "",
    videoId: transaction.videoId ?? null,
    createdAt: transaction.createdAt ?? null,
  };
}
