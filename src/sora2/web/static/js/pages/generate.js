// Generate: the prompt with its counter, the choices, the cost against the balance, and on
// submit the new video's page. What is typed survives an outage and a reload (a draft).
import { api, newIdempotencyKey } from "../api.js";
import { startPage } from "../common.js";
import { clearDraft, keepDraft, onSubmit, showFieldError, showStatus } from "../forms.js";
import { choices, costOf, credits, usePrices } from "../format.js";
import { normalizeVideo } from "../models.js";
import { loadCredits } from "../session.js";

const form = document.getElementById("generate-form");
const prompt = form.elements.prompt;
const counter = form.querySelector("[data-counter]");
const costLine = form.querySelector("[data-cost]");
const maxChars = choices().promptMaxChars ?? Number(prompt.maxLength);
let balance = null;

function updateCounter() {
  const used = prompt.value.length;
  counter.textContent = `${used} / ${maxChars}`;
  counter.classList.toggle("counter-near", used > maxChars * 0.9);
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

/** Fill a select with `values`, keeping the current choice when the new model offers it too. */
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

/** Lengths and sizes are the chosen model's own (the catalog's entry for it). */
function showModelChoices() {
  const model = (choices().models ?? []).find((item) => item.id === form.elements.model.value);
  if (!model) return;
  fillSelect(form.elements.seconds, model.seconds, (s) => `${s} seconds`);
  fillSelect(form.elements.size, model.sizes, (size) => size);
}

prompt.addEventListener("input", updateCounter);
form.elements.model.addEventListener("change", showModelChoices);
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
    const created = normalizeVideo(await api.postOnce("videos", request, idempotencyKeyFor(request)));
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
  try {
    const answer = await loadCredits();
    balance = answer.balance;
    usePrices(answer.prices);
  } catch {
    balance = null; // the cost alone is still shown; the api checks the balance anyway
  }
  updateCost();
});
