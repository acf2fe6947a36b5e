// The gallery: the user's videos with status and thumbnail, a status filter and pages, kept up
// to date while any of them is still rendering.
import { api, ApiError, apiUrl } from "../api.js";
import { startPage } from "../common.js";
import { dateTime, statusLabel } from "../format.js";
import { isFinal, normalizePage, normalizeVideo } from "../models.js";

const PAGE_SIZE = 12;
// One poll of the list rather than an event stream per video: a browser opens at most six
// connections to a host, and a page of running videos would use them all.
const POLL_MS = 2000;

const list = document.querySelector("[data-gallery-list]");
const statusLine = document.querySelector("[data-gallery-status]");
const filter = document.getElementById("status-filter");
const pager = document.querySelector("[data-pager]");
const params = new URLSearchParams(window.location.search);

let page = Math.max(1, Number.parseInt(params.get("page") ?? "1", 10) || 1);
let pollTimer = 0;
// Said once, after a delete sent the user here; the address forgets it so a reload does not.
let notice = params.has("deleted") ? "Video deleted. " : "";
filter.value = params.get("status") ?? "";

function card(video) {
  const item = document.createElement("li");
  item.className = "video-card";
  item.dataset.status = video.status;
  item.dataset.videoId = video.id;
  const link = document.createElement("a");
  link.href = `/videos/${encodeURIComponent(video.id)}`;
  const frame = document.createElement("div");
  frame.className = "thumb";
  if (video.status === "completed") {
    const image = document.createElement("img");
    image.src = apiUrl(`videos/${video.id}/thumbnail`);
    image.alt = "";
    image.loading = "lazy";
    image.addEventListener("error", () => image.remove());
    frame.append(image);
  } else if (!isFinal(video.status)) {
    const progress = document.createElement("progress");
    progress.max = 100;
    progress.value = video.progress;
    progress.setAttribute("aria-label", `Progress ${Math.round(video.progress)}%`);
    frame.append(progress);
  } else {
    const note = document.createElement("span");
    note.className = "thumb-note";
    note.textContent = video.status === "failed" ? "Rendering failed" : "Cancelled before it was ready";
    frame.append(note);
  }
  const title = document.createElement("span");
  title.className = "video-card-prompt";
  title.textContent = video.prompt;
  const meta = document.createElement("span");
  meta.className = "video-card-meta";
  const badge = document.createElement("span");
  badge.className = "status-badge";
  badge.dataset.status = video.status;
  badge.textContent = statusLabel(video.status);
  meta.append(badge, ` ${video.seconds} s · ${video.size} · ${dateTime(video.createdAt)}`);
  link.append(frame, title, meta);
  item.append(link);
  const tags = originTags(video);
  if (tags) item.append(tags);
  return item;
}

/** "From an image", "Remix of …" (linking to the source): outside the card's own link. */
function originTags(video) {
  if (!video.inputReferenceUrl && !video.remixOf) return null;
  const tags = document.createElement("p");
  tags.className = "video-card-tags";
  if (video.inputReferenceUrl) {
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.dataset.origin = "image";
    tag.textContent = "From an image";
    tags.append(tag);
  }
  if (video.remixOf) {
    const tag = document.createElement("a");
    tag.className = "tag";
    tag.dataset.origin = "remix";
    tag.href = `/videos/${encodeURIComponent(video.remixOf)}`;
    tag.textContent = "Remix: see the source";
    tags.append(tag);
  }
  return tags;
}

function syncAddress() {
  const query = new URLSearchParams();
  if (filter.value) query.set("status", filter.value);
  if (page > 1) query.set("page", String(page));
  const search = query.toString();
  history.replaceState(null, "", search ? `?${search}` : window.location.pathname);
}

function renderPager(result) {
  pager.hidden = result.pages <= 1;
  pager.querySelector("[data-page-label]").textContent = `Page ${result.page} of ${result.pages}`;
  pager.querySelector("[data-page-prev]").disabled = result.page <= 1;
  pager.querySelector("[data-page-next]").disabled = result.page >= result.pages;
}

function emptyMessage() {
  return filter.value
    ? `No ${statusLabel(filter.value).toLowerCase()} videos.`
    : "No videos yet. Generate your first one!";
}

async function load() {
  clearTimeout(pollTimer);
  let result;
  try {
    result = normalizePage(await api.get("videos", { page, limit: PAGE_SIZE, status: filter.value }));
  } catch (error) {
    statusLine.textContent = error instanceof ApiError && error.outage ? "Waiting for the connection…" : error.message;
    return; // "sora:reconnected" loads again
  }
  const videos = result.items.map(normalizeVideo);
  list.replaceChildren(...videos.map(card));
  const count = videos.length === 0 ? emptyMessage() : `${result.total} video${result.total === 1 ? "" : "s"}`;
  statusLine.textContent = notice + count;
  if (notice) {
    notice = "";
    syncAddress();
  }
  renderPager(result);
  if (videos.some((video) => !isFinal(video.status))) pollTimer = setTimeout(load, POLL_MS);
}

filter.addEventListener("change", () => {
  page = 1;
  syncAddress();
  load();
});
pager.querySelector("[data-page-prev]").addEventListener("click", () => {
  page = Math.max(1, page - 1);
  syncAddress();
  load();
});
pager.querySelector("[data-page-next]").addEventListener("click", () => {
  page += 1;
  syncAddress();
  load();
});
window.addEventListener("sora:reconnected", load);

startPage(load);
