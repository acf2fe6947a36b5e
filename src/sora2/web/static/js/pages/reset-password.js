// Reset password with the token from the mail's link. The token leaves the address bar at once
// (history, screenshots); on success every session has ended, so the next stop is sign-in.
import { api } from "../api.js";
import { startPage } from "../common.js";
import { onSubmit, showFieldError, showStatus } from "../forms.js";

const form = document.getElementById("reset-form");
const token = new URLSearchParams(window.location.search).get("token") || "";
if (token) window.history.replaceState(null, "", window.location.pathname);
if (!token) showStatus(form, "This page needs the link from the reset mail. Ask for a new link below.");

function check(values) {
  let ok = Boolean(token);
  if (!values.password) ok = !showFieldError(form, "password", "Enter a new password.") && ok;
  if (values.password !== values.confirm) ok = !showFieldError(form, "confirm", "The two passwords differ.") && ok;
  return ok;
}

onSubmit(form, {
  check,
  send: async (values) => {
    await api.post("auth/password/reset", { token, password: values.password });
    window.location.assign("/login?password_reset=1");
  },
  explain: (error) => {
    if (error.status !== 400) return false;
    showStatus(form, error.message);
    return true;
  },
  rateLimitLead: "Too many attempts.",
});

startPage(async () => {});
