// Create an account, then start a session and go to the generate page.
import { api, ApiError } from "../api.js";
import { startPage } from "../common.js";
import { clearDraft, keepDraft, onSubmit, showFieldError } from "../forms.js";

const form = document.getElementById("register-form");
const MIN_PASSWORD = 8;

keepDraft(form);

function checkValues(values) {
  const problems = [];
  if (!/^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(values.email.trim())) {
    problems.push(["email", "Enter an email address such as ada@example.com."]);
  }
  if (!values.nickname.trim()) problems.push(["nickname", "Choose a nickname: it is how the app greets you."]);
  if (values.password.length < MIN_PASSWORD) {
    problems.push(["password", `Use at least ${MIN_PASSWORD} characters.`]);
  } else if (/^[\p{L}]+$/u.test(values.password) || /^\d+$/.test(values.password)) {
    problems.push(["password", "Mix letters with digits or symbols."]);
  }
  if (values.confirm !== values.password) problems.push(["confirm", "The two passwords differ: type the same one twice."]);
  for (const [name, message] of problems) showFieldError(form, name, message);
  return problems.length === 0;
}

async function startSession(email, password) {
  // The api may or may not sign a new account in; ask, and sign in if it did not.
  try {
    await api.get("auth/me");
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401) throw error;
    await api.post("auth/login", { email, password });
  }
}

onSubmit(form, {
  check: checkValues,
  send: async (values) => {
    const email = values.email.trim();
    await api.post("auth/register", { email, password: values.password, nickname: values.nickname.trim() });
    clearDraft(form);
    await startSession(email, values.password);
    window.location.assign("/generate?welcome=1");
  },
  rateLimitLead: "Too many accounts created from here.",
});

startPage(async (user) => {
  if (user) window.location.replace("/generate");
});
