// Who is signed in, as far as the api says: the page never holds a token, only asks /auth/me.

import { api, ApiError } from "./api.js";
import { credits } from "./format.js";
import { normalizeBalance, normalizeUser } from "./models.js";

let current;

function showFor(signedIn) {
  for (const element of document.querySelectorAll("[data-when]")) {
    element.hidden = (element.dataset.when === "signed-in") !== signedIn;
  }
}

/** The signed-in user, or null; an outage rejects (the caller waits for reconnection). */
export async function loadSession() {
  try {
    current = normalizeUser(await api.get("auth/me"));
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401) throw error;
    current = null;
  }
  showFor(current !== null);
  for (const link of document.querySelectorAll("[data-admin-link]")) link.hidden = current?.role !== "admin";
  if (current !== null) refreshBalance();
  return current;
}

export function currentUser() {
  return current ?? null;
}

/** Where a signed-out visitor is sent: the login page, coming back here afterwards. */
export function loginUrl() {
  const next = window.location.pathname + window.location.search;
  return `/login?next=${encodeURIComponent(next)}`;
}

/** The user for a signed-in-only page; a visitor without a session goes to the login page. */
export async function requireSession() {
  const user = await loadSession();
  if (user === null) {
    window.location.assign(loginUrl());
    return new Promise(() => {}); // the page is leaving; nothing after this should run
  }
  return user;
}

/** A same-site path to continue to after signing in; anything else falls back to /generate. */
export function safeNext(value) {
  if (typeof value !== "string" || !value.startsWith("/") || value.startsWith("//") || value.includes("\\")) {
    return "/generate";
  }
  return value;
}

/** The balance (and the api's price table, when it sends one), shown in the header too. */
export async function loadCredits() {
  const answer = await api.get("credits/balance");
  const balance = normalizeBalance(answer);
  const badge = document.querySelector("[data-balance-badge]");
  if (badge) badge.textContent = credits(balance);
  return { balance, prices: answer?.prices ?? null };
}

/** The balance after a change, or null when it cannot be read right now. */
export async function refreshBalance() {
  try {
    return (await loadCredits()).balance;
  } catch {
    return null;
  }
}

export async function signOut() {
  try {
    await api.post("auth/logout");
  } catch (error) {
    // Already signed out is fine; an outage is not: the cookie would survive.
    if (error instanceof ApiError && error.outage) return false;
  }
  current = null;
  window.location.assign("/login?signed_out=1");
  return true;
}
