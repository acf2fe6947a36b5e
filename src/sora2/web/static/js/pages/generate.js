// Generate: the prompt with its counter, the model picker built from the api's catalog
// (GET /api/models: names, lengths, sizes, prices), an optional image to start from with a
// preview of its crop, the cost against the balance, and on submit the new video's page.
// What is typed survives an outage and a reload (a draft; the image does not).
import { api, newIdempotencyKey } from "../api.js";
import { startPage } from "../common.js";
import { clearDraft, keepDraft, onSubmit, showFieldError, showStatus } from "../forms.js";
import { choices, costOf, credits, usePrices } from "../format.js";
import { normalizeModel, normalizeVideo } from "../models.js";
import { loadCredits } from "../session.js";

const form = document.getElementById("generate-form");
const prompt = form.elements.prompt;
const counter = form.querySelector("[data-counter]");
const costLine = form.querySelector("[data-cost]");
const fileInput = form.elements.input_reference;
const dropzone = form.querySelector("[data-dropzone]");
const preview = form.querySelector("[data-crop-preview]");
const previewFigure = form.querySelector("[data-crop-figure]");
const previewCaption = form.querySelector("[data-crop-caption]");
const clearImage = form.querySelector("[data-clear-image]");
const imageUnavailable = form.querySelector("[data-image-unavailable]");
const maxChars = choices().promptMaxChars ?? Number(prompt.maxLength);
const PREVIEW_LONG_SIDE = 320;
let balance = null;
// The page's copy of the catalog until the api's own answer arrives.
let models = (choices().models ?? []).map(normalizeModel);
let image = null; // { file, bitmap }

function updateCounter() {
  const used = prompt.value.length;
  counter.textContent = `${used} / ${maxChars}`;
  counter.classList.toggle("counter-near", used > maxChars * 0.9);
}

function currentModel() {
  return models.find((model) => model.id === form.elements.model.value) ?? null;
}

function updateCost() {
  const cost = costOf(form.elements.model.value, form.elements.seconds.value);
  const submit = form.querySelector("button[type=submit]");
  if (cost === null) {
    costLine.textContent = "";
    return;
  }
  if (balance === null) {
    costLine.textContent = `This video costs ${credits(cost)}.`;
    costLine.classList.remove("cost-short");
    return;
  }
  const short = cost > balance;
  costLine.textContent = short
    ? `This video costs ${credits(cost)}, but your balance is ${credits(balance)}. Choose a shorter length or a cheaper model.`
    : `This video costs ${credits(cost)}. Your balance: ${credits(balance)}, ${credits(balance - cost)} after this one.`;
  costLine.classList.toggle("cost-short", short);
  submit.disabled = short;
}

/** Fill a select with `values`, keeping the current choice when it is still offered. */
function fillSelect(select, values, label) {
  const kept = select.value;
  select.replaceChildren(
    ...values.map((value) => {
      const option = document.createElement("option");
      option.value = String(value);
      option.textContent = label(value);
      return option;
    }),
  );
  if (values.map(String).includes(kept)) select.value = kept;
}

function showModels() {
  fillSelect(
    form.elements.model,
    models.map((model) => model.id),
    (id) => {
      const model = models.find((item) => item.id === id);
      return `${model.name} · ${credits(model.creditsPerSecond)}/s`;
    },
  );
  showModelChoices();
}

/** Lengths, sizes and whether an image is taken are the chosen model's own. */
function showModelChoices() {
  const model = currentModel();
  if (!model) return;
  fillSelect(form.elements.seconds, model.seconds, (s) => `${s} seconds`);
  fillSelect(form.elements.size, model.sizes, (size) => size);
  dropzone.hidden = !model.imageInput;
  const taking = models.filter((item) => item.imageInput).map((item) => item.name);
  imageUnavailable.hidden = model.imageInput;
  imageUnavailable.textContent = model.imageInput
    ? ""
    : `${model.name} starts from words only` + (taking.length ? `; ${taking.join(", ")} can start from an image.` : ".");
  drawPreview();
}

// --- the image and its crop preview ---

function imageError(message) {
  const element = form.querySelector('[data-error-for="input_reference"]');
  element.textContent = message;
  element.hidden = !message;
}

async function useFile(file) {
  imageError("");
  if (!file) return forgetImage();
  if (!["image/jpeg", "image/png", "image/webp"].includes(file.type)) {
    forgetImage();
    imageError(`${file.name} is not a JPEG, PNG or WebP image.`);
    return;
  }
  try {
    // The browser applies the EXIF orientation, as the api does.
    image = { file, bitmap: await createImageBitmap(file) };
  } catch {
    forgetImage();
    imageError(`${file.name} could not be read as an image.`);
    return;
  }
  drawPreview();
}

function forgetImage() {
  image?.bitmap.close?.();
  image = null;
  fileInput.value = "";
  drawPreview();
}

/** What the api will make of the image: scaled to cover the chosen size, cropped around its centre. */
function drawPreview() {
  const visible = Boolean(image) && !dropzone.hidden;
  previewFigure.hidden = !visible;
  clearImage.hidden = !image;
  if (!visible) return;
  const [width, height] = form.elements.size.value.split("x").map(Number);
  const scale = PREVIEW_LONG_SIDE / Math.max(width, height);
  preview.width = Math.round(width * scale);
  preview.height = Math.round(height * scale);
  const { bitmap } = image;
  const cover = Math.max(preview.width / bitmap.width, preview.height / bitmap.height);
  const drawnWidth = bitmap.width * cover;
  const drawnHeight = bitmap.height * cover;
  const context = preview.getContext("2d");
  context.clearRect(0, 0, preview.width, preview.height);
  context.drawImage(bitmap, (preview.width - drawnWidth) / 2, (preview.height - drawnHeight) / 2, drawnWidth, drawnHeight);
  preview.dataset.size = `${width}x${height}`;
  previewCaption.textContent = `${image.file.name}, cropped to ${width}×${height}`;
}

fileInput.addEventListener("change", () => useFile(fileInput.files?.[0] ?? null));
clearImage.addEventListener("click", forgetImage);
for (const name of ["dragenter", "dragover"]) {
  dropzone.addEventListener(name, (event) => {
    event.preventDefault();
    dropzone.classList.add("dropzone-over");
  });
}
for (const name of ["dragleave", "drop"]) {
  dropzone.addEventListener(name, () => dropzone.classList.remove("dropzone-over"));
}
dropzone.addEventListener("drop", (event) => {
  event.preventDefault();
  const file = event.dataTransfer?.files?.[0];
  if (file) useFile(file);
});

prompt.addEventListener("input", updateCounter);
form.elements.model.addEventListener("change", showModelChoices);
form.elements.size.addEventListener("change", drawPreview);
form.addEventListener("change", updateCost);
keepDraft(form);
showModelChoices();
updateCounter();
updateCost();

if (new URLSearchParams(window.location.search).has("welcome")) {
  const gift = choices().signupCredits;
  showStatus(form, gift ? `Welcome! Your account comes with ${credits(gift)} free.` : "Welcome!", "ok");
}

// One key per distinct request: submitting the same form again after a lost answer repeats that
// request (the api answers the first video and charges once); a changed form is a new request.
let attempt = { request: "", key: "" };

function idempotencyKeyFor(request) {
  const text = JSON.stringify(request);
  if (attempt.request !== text) attempt = { request: text, key: newIdempotencyKey() };
  return attempt.key;
}

function multipart(request, file) {
  const body = new FormData();
  for (const [name, value] of Object.entries(request)) body.append(name, String(value));
  body.append("input_reference", file, file.name);
  return body;
}

onSubmit(form, {
  check: (values) => {
    if (values.prompt.trim()) return true;
    showFieldError(form, "prompt", "Describe the video you want: the prompt cannot be empty.");
    return false;
  },
  send: async (values) => {
    const request = {
      prompt: values.prompt.trim(),
      model: values.model,
      seconds: Number(values.seconds),
      size: values.size,
    };
    const withImage = image && currentModel()?.imageInput ? image.file : null;
    const identity = withImage
      ? { ...request, image: [withImage.name, withImage.size, withImage.lastModified] }
      : request;
    const body = withImage ? multipart(request, withImage) : request;
    const created = normalizeVideo(await api.postOnce("videos", body, idempotencyKeyFor(identity)));
    clearDraft(form);
    window.location.assign(`/videos/${encodeURIComponent(created.id)}`);
  },
  explain: () => {
    updateCost(); // the submit button stays off while the balance is short
    return false;
  },
  rateLimitLead: "Too many videos requested at once.",
});

startPage(async () => {
  const [catalog, account] = await Promise.allSettled([api.get("models"), loadCredits()]);
  if (catalog.status === "fulfilled" && Array.isArray(catalog.value?.items) && catalog.value.items.length) {
    models = catalog.value.items.map(normalizeModel);
    usePrices(Object.fromEntries(models.map((model) => [model.id, model.creditsPerSecond])));
    showModels();
  }
  if (account.status === "fulfilled") {
    balance = account.value.balance;
    usePrices(account.value.prices);
  } else {
    balance = null; // the cost alone is still shown; the api checks the balance anyway
  }
  updateCost();
});
