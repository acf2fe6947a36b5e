// Form behaviour shared by every page: drafts that survive an outage or a reload, inline errors
// next to the field they concern, a busy state, and a countdown when the api says "wait".

const DRAFT_PREFIX = "sora2:draft:";

function draftKey(form) {
  return DRAFT_PREFIX + form.dataset.draft;
}

function draftFields(form) {
  // Passwords are never written anywhere, not even to this tab's storage.
  // Files cannot be put back into an input (and are too big for storage): never kept.
  const kept = (field) => field.name && !["password", "submit", "file"].includes(field.type);
  return [...form.elements].filter(kept);
}

/** Keep what the user types in this tab's sessionStorage, and put it back after a reload. */
export function keepDraft(form) {
  if (!form.dataset.draft) return;
  let saved = {};
  try {
    saved = JSON.parse(sessionStorage.getItem(draftKey(form)) || "{}");
  } catch {
    saved = {};
  }
  for (const field of draftFields(form)) {
    if (typeof saved[field.name] === "string" && saved[field.name] !== "") {
      field.value = saved[field.name];
      field.dispatchEvent(new Event("input", { bubbles: true }));
    }
  }
  form.addEventListener("input", () => saveDraft(form));
  form.addEventListener("change", () => saveDraft(form));
}

function saveDraft(form) {
  const values = Object.fromEntries(draftFields(form).map((field) => [field.name, field.value]));
  try {
    sessionStorage.setItem(draftKey(form), JSON.stringify(values));
  } catch {
    // Storage full or disabled: the text stays in the form, which is what matters most.
  }
}

export function clearDraft(form) {
  if (form.dataset.draft) sessionStorage.removeItem(draftKey(form));
}

export function formValues(form) {
  return Object.fromEntries(new FormData(form).entries());
}

export function setBusy(form, busy) {
  form.setAttribute("aria-busy", String(busy));
  for (const button of form.querySelectorAll("button[type=submit]")) button.disabled = busy;
}

export function showStatus(form, message, kind = "error") {
  const status = form.querySelector("[data-form-status]");
  if (!status) return;
  status.textContent = message;
  status.className = `form-status form-status-${kind}`;
  status.hidden = !message;
}

export function clearErrors(form) {
  showStatus(form, "");
  for (const element of form.querySelectorAll("[data-error-for]")) {
    element.hidden = true;
    element.textContent = "";
  }
  for (const field of form.querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
}

/** Field name → message, from the api's `details.fields` ([{field, message}]). */
function fieldMessages(details) {
  const messages = {};
  for (const item of Array.isArray(details.fields) ? details.fields : []) {
    if (item?.field && item?.message) messages[String(item.field)] = String(item.message);
  }
  return messages;
}

/** Put a message under one field and mark it invalid for assistive technology. */
export function showFieldError(form, name, message) {
  const element = form.querySelector(`[data-error-for="${name}"]`);
  const field = form.elements.namedItem(name);
  if (!element) return false;
  element.textContent = message;
  element.hidden = false;
  if (field && "setAttribute" in field) {
    field.setAttribute("aria-invalid", "true");
    if (element.id) field.setAttribute("aria-describedby", element.id);
  }
  return true;
}

/** "is required" reads as "Prompt is required" under the field it concerns. */
function sentenceFor(form, name, message) {
  if (!/^[a-z]/.test(message)) return message;
  const field = form.elements.namedItem(name);
  const label = field?.id ? form.querySelector(`label[for="${field.id}"]`)?.textContent?.trim() : "";
  return label ? `${label} ${message}.`.replace(/\.\.$/, ".") : message;
}

/** Show an ApiError on the form: next to its fields when it names them, else at the top. */
export function showError(form, error) {
  const messages = fieldMessages(error.details ?? {});
  let placed = false;
  for (const [name, message] of Object.entries(messages)) {
    placed = showFieldError(form, name, sentenceFor(form, name, message)) || placed;
  }
  if (error.outage) {
    showStatus(
      form,
      `Not sent: ${error.message} What you typed is kept here; send it again once the connection is back.`,
    );
  } else if (!placed) {
    // A failure on our side: the request id lets support find it in the logs.
    const reference = error.status >= 500 && error.requestId ? ` (Request ID: ${error.requestId})` : "";
    showStatus(form, error.message + reference);
  }
  // The status is a live region and is announced by itself; a field in error takes the focus.
  form.querySelector("[aria-invalid=true]")?.focus();
}

/**
 * While the api asks us to wait (429), keep the submit button disabled and count down in the
 * form's status: "… Try again in 42 s."
 */
export function waitOut(form, seconds, lead) {
  const until = Date.now() + seconds * 1000;
  const buttons = [...form.querySelectorAll("button[type=submit]")];
  let timer = 0;
  const tick = () => {
    const left = Math.ceil((until - Date.now()) / 1000);
    if (left <= 0) {
      clearInterval(timer);
      for (const button of buttons) button.disabled = false;
      showStatus(form, `${lead} You can try again now.`, "info");
      return;
    }
    for (const button of buttons) button.disabled = true;
    showStatus(form, `${lead} Try again in ${left} s.`);
  };
  timer = setInterval(tick, 1000);
  tick();
}

/** The common end of a failed submit: a rate limit counts down, anything else is shown. */
export function handleSubmitError(form, error, rateLimitLead = "Too many attempts.") {
  if (error.status === 429) {
    waitOut(form, error.retryAfter ?? 60, rateLimitLead);
    return;
  }
  showError(form, error);
}

/**
 * The submit flow every form shares: clear old errors; `check(values)` marks the fields it refuses
 * (focus goes to the first); the form is busy while `send(values)` works. On failure the form is
 * usable again and the error is explained, unless `explain(error)` did it and returned true.
 */
export function onSubmit(form, { check = () => true, send, explain = () => false, rateLimitLead }) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const values = formValues(form);
    if (!check(values)) {
      form.querySelector("[aria-invalid=true]")?.focus();
      return;
    }
    setBusy(form, true);
    try {
      await send(values);
    } catch (error) {
      setBusy(form, false);
      if (!explain(error)) handleSubmitError(form, error, rateLimitLead);
    }
  });
}
