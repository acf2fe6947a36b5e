// Sign in: errors inline (a wrong password, a rate limit with its countdown), then on to where
// the visitor was going.
import { api } from "../api.js";
import { startPage } from "../common.js";
import { clearDraft, keepDraft, onSubmit, showFieldError, showStatus } from "../forms.js";
import { safeNext } from "../session.js";

const form = document.getElementById("login-form");
const params = new URLSearchParams(window.location.search);
const next = safeNext(params.get("next"));

keepDraft(form);
if (params.has("signed_out")) showStatus(form, "You are signed out.", "info");
if (params.has("password_changed")) showStatus(form, "Password changed. Sign in with the new one.", "info");
if (params.has("password_reset")) showStatus(form, "Your password was reset. Sign in with the new one.", "info");

function checkFilledIn(values) {
  let ok = true;
  if (!values.email.trim()) ok = !showFieldError(form, "email", "Enter the email address you registered with.");
  if (!values.password) ok = !showFieldError(form, "password", "Enter your password.") && ok;
  return ok;
}

onSubmit(form, {
  check: checkFilledIn,
  send: async (values) => {
    await api.post("auth/login", { email: values.email.trim(), password: values.password });
    clearDraft(form);
    window.location.assign(next);
  },
  explain: (error) => {
    if (error.status !== 401) return false;
    form.elements.password.value = "";
    showStatus(form, error.message || "Wrong email or password.");
    form.elements.password.focus();
    return true;
  },
  rateLimitLead: "Too many sign-in attempts.",
});

startPage(async (user) => {
  // Already signed in: nothing to do here. (Only a real session redirects, so no loop.)
  if (user) window.location.replace(next);
});
