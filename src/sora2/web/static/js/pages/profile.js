// The profile: nickname, password change, balance and the history of credits.
import { api } from "../api.js";
import { startPage } from "../common.js";
import { clearDraft, keepDraft, onSubmit, setBusy, showFieldError, showStatus } from "../forms.js";
import { credits, dateTime, signedCredits } from "../format.js";
import { normalizeBalance, normalizePage, normalizeTransaction, normalizeUser } from "../models.js";

const PAGE_SIZE = 10;
const TYPE_LABELS = {
  gift: "Welcome gift",
  consume: "Video",
  refund: "Refund",
  recharge: "Top-up",
  admin: "Adjustment",
  admin_adjust: "Adjustment",
};

const statusLine = document.querySelector("[data-profile-status]");
const nicknameForm = document.getElementById("nickname-form");
const passwordForm = document.getElementById("password-form");
const txBody = document.querySelector("[data-transactions]");
const txPager = document.querySelector("[data-tx-pager]");
let txPage = 1;

function text(selector, value) {
  document.querySelector(selector).textContent = value;
}

async function loadProfile() {
  const user = normalizeUser(await api.get("users/profile"));
  text("[data-profile-email]", user.email);
  // For password managers: which account the new password belongs to.
  document.querySelector("[data-profile-username]").value = user.email;
  text("[data-profile-since]", dateTime(user.createdAt));
  if (!nicknameForm.elements.nickname.value) nicknameForm.elements.nickname.value = user.nickname;
}

function transactionRow(tx) {
  const row = document.createElement("tr");
  const what = document.createElement("td");
  what.textContent = TYPE_LABELS[tx.type] ?? tx.type;
  if (tx.videoId) {
    const link = document.createElement("a");
    link.href = `/videos/${encodeURIComponent(tx.videoId)}`;
    link.textContent = "video";
    what.append(" (", link, ")");
  }
  const cells = [dateTime(tx.createdAt), null, signedCredits(tx.amount), tx.balanceAfter ?? ""];
  for (const value of cells) {
    if (value === null) {
      row.append(what);
      continue;
    }
    const cell = document.createElement("td");
    cell.textContent = String(value);
    row.append(cell);
  }
  row.dataset.type = tx.type;
  return row;
}

async function loadCredits() {
  text("[data-profile-balance]", credits(normalizeBalance(await api.get("credits/balance"))));
  const result = normalizePage(await api.get("credits/transactions", { page: txPage, limit: PAGE_SIZE }));
  const rows = result.items.map(normalizeTransaction).map(transactionRow);
  if (rows.length === 0) {
    const row = document.createElement("tr");
    const cell = document.createElement("td");
    cell.colSpan = 4;
    cell.textContent = "No transactions yet.";
    row.append(cell);
    rows.push(row);
  }
  txBody.replaceChildren(...rows);
  txPager.hidden = result.pages <= 1;
  txPager.querySelector("[data-tx-label]").textContent = `Page ${result.page} of ${result.pages}`;
  txPager.querySelector("[data-tx-prev]").disabled = result.page <= 1;
  txPager.querySelector("[data-tx-next]").disabled = result.page >= result.pages;
}

async function loadAll() {
  try {
    await Promise.all([loadProfile(), loadCredits()]);
    statusLine.hidden = true;
  } catch (error) {
    statusLine.textContent = error.outage ? "Waiting for the connection…" : error.message;
  }
}

keepDraft(nicknameForm);

onSubmit(nicknameForm, {
  check: (values) => {
    if (values.nickname.trim()) return true;
    showFieldError(nicknameForm, "nickname", "A nickname cannot be empty.");
    return false;
  },
  send: async (values) => {
    await api.put("users/profile", { nickname: values.nickname.trim() });
    clearDraft(nicknameForm);
    setBusy(nicknameForm, false);
    showStatus(nicknameForm, "Nickname saved.", "ok");
  },
});

onSubmit(passwordForm, {
  check: (values) => {
    if (values.newPassword.length < 8) {
      showFieldError(passwordForm, "newPassword", "Use at least 8 characters.");
      return false;
    }
    if (values.confirm !== values.newPassword) {
      showFieldError(passwordForm, "confirm", "The two passwords differ: type the same one twice.");
      return false;
    }
    return true;
  },
  send: async (values) => {
    await api.put("users/password", { currentPassword: values.currentPassword, newPassword: values.newPassword });
    for (const name of ["currentPassword", "newPassword", "confirm"]) passwordForm.elements[name].value = "";
    setBusy(passwordForm, false);
    showStatus(passwordForm, "Password changed. Your other devices are signed out.", "ok");
  },
});

txPager.querySelector("[data-tx-prev]").addEventListener("click", () => {
  txPage = Math.max(1, txPage - 1);
  loadCredits().catch(() => {});
});
txPager.querySelector("[data-tx-next]").addEventListener("click", () => {
  txPage += 1;
  loadCredits().catch(() => {});
});
window.addEventListener("sora:reconnected", loadAll);

startPage(loadAll);
