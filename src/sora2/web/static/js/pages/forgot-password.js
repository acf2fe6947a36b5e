// Forgot password: ask for a reset link. The api answers the same for every email, so the page
// does too: it never says whether an account exists.
import { api } from "../api.js";
import { startPage } from "../common.js";
import { clearDraft, keepDraft, onSubmit, setBusy, showFieldError } from "../forms.js";

const form = document.getElementById("forgot-form");
const sent = document.querySelector("[data-forgot-sent]");

keepDraft(form);

onSubmit(form, {
  check: (values) => Boolean(values.email.trim()) || !showFieldError(form, "email", "Enter the email address you registered with."),
  send: async (values) => {
    const answer = await api.post("auth/password/forgot", { email: values.email.trim() });
    clearDraft(form);
    setBusy(form, false);
    sent.textContent = `${answer.message} Check your inbox (and the spam folder).`;
    sent.hidden = false;
  },
  rateLimitLead: "Too many reset requests.",
});

startPage(async () => {});
