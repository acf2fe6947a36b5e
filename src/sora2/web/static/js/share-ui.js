// The video page's share panel: make a link (shown once, with Copy), then "shared" with Revoke
// and "New link" (which ends the old one). The api keeps only a hash of the token, so a link
// that was not copied is gone: "New link" makes another.
import { api } from "./api.js";
import { dateTime } from "./format.js";

const panel = document.querySelector("[data-share]");
const part = (name) => panel.querySelector(`[data-share-${name}]`);

let videoId = null;
let state = null; // {shared, createdAt} once asked
let freshUrl = "";
let asking = false;

/** Show the panel for a completed video (hide it otherwise); called at each render. */
export function renderShare(video) {
  if (!panel) return;
  videoId = video.id;
  panel.hidden = video.status !== "completed";
  if (!panel.hidden && state === null && !asking) loadState();
}

async function loadState() {
  asking = true;
  try {
    state = await api.get(`videos/${videoId}/share`);
    draw();
  } catch (error) {
    showError(error);
  } finally {
    asking = false;
  }
}

function draw() {
  const shared = Boolean(state?.shared);
  part("state").textContent = shared
    ? `Shared: anyone with the link can watch this video (since ${dateTime(state.createdAt)}).`
    : "Not shared. A link lets anyone watch this video, without an account.";
  part("new").hidden = !freshUrl;
  part("url").value = freshUrl;
  part("copied").textContent = "";
  part("create").hidden = shared;
  part("renew").hidden = !shared;
  part("revoke").hidden = !shared;
}

function showError(error) {
  const element = part("error");
  element.textContent = error ? error.message : "";
  element.hidden = !error;
}

async function act(button, work) {
  button.disabled = true;
  showError(null);
  try {
    await work();
    draw();
  } catch (error) {
    showError(error);
  } finally {
    button.disabled = false;
  }
}

async function makeLink() {
  const made = await api.post(`videos/${videoId}/share`);
  freshUrl = made.url;
  state = { shared: true, createdAt: made.createdAt };
}

async function copyLink() {
  const field = part("url");
  try {
    await navigator.clipboard.writeText(field.value);
  } catch {
    // No clipboard permission: select the text so Ctrl+C does it.
    field.select();
    part("copied").textContent = "Press Ctrl+C (⌘C) to copy the selected link.";
    return;
  }
  part("copied").textContent = "Copied.";
}

if (panel) {
  part("create").addEventListener("click", (event) => act(event.currentTarget, makeLink));
  part("renew").addEventListener("click", (event) => act(event.currentTarget, makeLink));
  part("revoke").addEventListener("click", (event) =>
    act(event.currentTarget, async () => {
      await api.delete(`videos/${videoId}/share`);
      freshUrl = "";
      state = { shared: false, createdAt: null };
    }),
  );
  part("copy").addEventListener("click", copyLink);
}
