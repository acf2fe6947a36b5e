// One video: live progress over server-sent events (reconnecting, through the proxy), then the
// player, the download, and the actions its state allows: cancel (refund shown), regenerate,
// remix (for models that offer it), delete. A remix links to its source; a video made from an
// image shows it.
import { api, ApiError, apiUrl, newIdempotencyKey } from "../api.js";
import { startPage } from "../common.js";
import { credits, dateTime, statusLabel } from "../format.js";
import { isFinal, normalizeModel, normalizeVideo } from "../models.js";
import { refreshBalance } from "../session.js";
import { renderShare } from "../share-ui.js";

const root = document.querySelector("[data-video-id]");
const videoId = root.dataset.videoId;
const $ = (name) => root.querySelector(`[data-${name}]`);

const RECONNECT_FIRST_MS = 1000;
const RECONNECT_MAX_MS = 5000;
// The api sends `progress` on every change and `done` at a final state, each with the whole
// video; `deleted` when it is gone.
const EVENT_NAMES = ["progress", "done"];

let video = null;
let source = null;
let models = null; // the catalog, for what each model allows (remix)
let reconnectAttempt = 0;
let reconnectTimer = 0;

function show(name, visible) {
  $(name).hidden = !visible;
}

function renderStatus() {
  const badge = $("video-status");
  badge.textContent = statusLabel(video.status);
  badge.dataset.status = video.status;
  const running = !isFinal(video.status);
  show("progress-wrap", running);
  $("progress").value = video.progress;
  $("progress-text").textContent = `${Math.round(video.progress)}%`;
  show("cancel", running);
  show("regenerate", isFinal(video.status));
  show("remix", video.status === "completed" && canRemix(video.model));
  show("delete", isFinal(video.status));
  const failed = video.status === "failed";
  $("video-error").textContent = failed
    ? `Rendering failed: ${video.errorMessage || "the provider gave no reason"}. Your ${credits(video.cost)} were refunded.`
    : "";
  show("video-error", failed);
  renderPlayer();
  renderShare(video);
}

function render() {
  show("video-status-text", false);
  show("video-body", true);
  $("video-prompt").textContent = video.prompt;
  document.title = `${video.prompt.slice(0, 60)} · Sora2`;
  $("video-meta").textContent = [
    video.model,
    `${video.seconds} s`,
    video.size,
    credits(video.cost),
    dateTime(video.createdAt),
  ]
    .filter(Boolean)
    .join(" · ");
  renderSources();
  renderStatus();
}

function canRemix(modelId) {
  return Boolean(models?.find((model) => model.id === modelId)?.remix);
}

/** Where this video came from: the video it remixes, the image it started from. */
function renderSources() {
  show("remix-source", Boolean(video.remixOf));
  if (video.remixOf) $("remix-source-link").href = `/videos/${encodeURIComponent(video.remixOf)}`;
  show("input-reference", Boolean(video.inputReferenceUrl));
  if (video.inputReferenceUrl) $("input-reference-image").src = apiUrl(`videos/${videoId}/input_reference`);
}

function renderPlayer() {
  const player = $("player");
  const download = $("download");
  const ready = video.status === "completed";
  show("player", ready);
  download.hidden = !ready;
  if (!ready || player.querySelector("video")) return;
  const element = document.createElement("video");
  element.controls = true;
  element.preload = "metadata";
  element.playsInline = true;
  element.poster = apiUrl(`videos/${videoId}/thumbnail`);
  element.src = apiUrl(`videos/${videoId}/content`);
  element.setAttribute("aria-label", `Video: ${video.prompt.slice(0, 120)}`);
  player.append(element);
  download.href = apiUrl(`videos/${videoId}/content`, { download: 1 });
}

function setLiveState(text) {
  $("live-state").textContent = text;
}

/** Show the video an event carries; at a final state, stop following it. */
function applyEvent(snapshot) {
  video = normalizeVideo(snapshot);
  renderStatus();
  if (isFinal(video.status)) stopFollowing();
}

function stopFollowing() {
  clearTimeout(reconnectTimer);
  if (source) {
    source.close();
    source = null;
  }
  setLiveState("");
}

function follow() {
  stopFollowing();
  if (isFinal(video.status)) return;
  source = new EventSource(apiUrl(`videos/${videoId}/events`));
  setLiveState("Live");
  const onEvent = (event) => {
    try {
      applyEvent(JSON.parse(event.data));
    } catch {
      // A malformed event: the next one, or the reload after the stream ends, corrects it.
    }
  };
  for (const name of EVENT_NAMES) source.addEventListener(name, onEvent);
  source.addEventListener("deleted", showGone);
  source.addEventListener("open", () => {
    reconnectAttempt = 0;
    setLiveState("Live");
  });
  source.addEventListener("error", () => {
    if (source?.readyState === EventSource.CLOSED) {
      // The proxy or the api answered with an error: the browser gives up, we do not.
      source.close();
      source = null;
      scheduleReconnect();
    } else {
      setLiveState("Reconnecting…");
    }
  });
}

function scheduleReconnect() {
  clearTimeout(reconnectTimer);
  const base = Math.min(RECONNECT_MAX_MS, RECONNECT_FIRST_MS * 2 ** reconnectAttempt);
  reconnectAttempt += 1;
  setLiveState("Connection lost; reconnecting…");
  reconnectTimer = setTimeout(reload, base / 2 + Math.random() * (base / 2));
}

/** Fetch the video again (this is also what shows the banner during an outage), then follow it. */
async function reload() {
  try {
    video = normalizeVideo(await api.get(`videos/${videoId}`));
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return showGone();
    if (error instanceof ApiError && error.outage) return scheduleReconnect();
    $("video-status-text").textContent = error.message;
    return;
  }
  render();
  if (!isFinal(video.status) && source === null) follow();
}

function showGone() {
  stopFollowing();
  show("video-body", false);
  const status = $("video-status-text");
  status.hidden = false;
  status.textContent = "This video does not exist, or it is not yours.";
}

function notice(text) {
  $("video-notice").textContent = text;
  show("video-notice", Boolean(text));
}

function confirmAction(title, text, okLabel) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
  });
}

async function runAction(button, action) {
  button.disabled = true;
  notice("");
  try {
    await action();
  } catch (error) {
    $("video-error").textContent = error.outage
      ? `Not done: ${error.message} Try again once the connection is back.`
      : error.message;
    show("video-error", true);
  } finally {
    button.disabled = false;
  }
}

$("cancel").addEventListener("click", (event) =>
  runAction(event.currentTarget, async () => {
    stopFollowing();
    video = normalizeVideo(await api.post(`videos/${videoId}/cancel`));
    render();
    // A cancel refunds the whole charge (the api does it in the same transaction).
    const balance = await refreshBalance();
    notice(
      `Cancelled. ${credits(video.cost)} refunded` + (balance === null ? "." : `; your balance is ${credits(balance)}.`),
    );
  }),
);

// Regenerating is one request however often it is sent from this page: a click after a lost
// answer repeats it (one new video, charged once); success leaves the page.
const regenerateKey = newIdempotencyKey();

$("regenerate").addEventListener("click", (event) =>
  runAction(event.currentTarget, async () => {
    const ok = await confirmAction(
      "Regenerate this video?",
      `A new video is rendered from the same prompt and settings, for ${credits(video.cost)}.`,
      "Regenerate",
    );
    if (!ok) return;
    const created = normalizeVideo(await api.postOnce(`videos/${videoId}/regenerate`, undefined, regenerateKey));
    window.location.assign(`/videos/${encodeURIComponent(created.id)}`);
  }),
);

// A remix is one request per new prompt, however often it is sent from this page.
let remixAttempt = { prompt: "", key: "" };

function askForRemixPrompt() {
  const dialog = $("remix-dialog");
  const field = dialog.querySelector("textarea");
  field.value = video.prompt;
  $("remix-text").textContent =
    `A new ${video.model} video of ${video.seconds} s at ${video.size}, made from this one with your new words, for ${credits(video.cost)}.`;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => resolve(dialog.returnValue === "remix" ? field.value.trim() : ""),
      { once: true },
    );
  });
}

$("remix").addEventListener("click", (event) =>
  runAction(event.currentTarget, async () => {
    const prompt = await askForRemixPrompt();
    if (!prompt) return;
    if (remixAttempt.prompt !== prompt) remixAttempt = { prompt, key: newIdempotencyKey() };
    const created = normalizeVideo(await api.postOnce(`videos/${videoId}/remix`, { prompt }, remixAttempt.key));
    window.location.assign(`/videos/${encodeURIComponent(created.id)}`);
  }),
);

$("delete").addEventListener("click", (event) =>
  runAction(event.currentTarget, async () => {
    const ok = await confirmAction("Delete this video?", "The video and its files are removed for good.", "Delete");
    if (!ok) return;
    await api.delete(`videos/${videoId}`);
    window.location.assign("/gallery?deleted=1");
  }),
);

window.addEventListener("sora:reconnected", () => {
  if (video && !isFinal(video.status) && source === null) reload();
});

startPage(async () => {
  try {
    models = ((await api.get("models"))?.items ?? []).map(normalizeModel);
  } catch {
    models = []; // without the catalog no Remix is offered; the rest of the page works
  }
  await reload();
});
