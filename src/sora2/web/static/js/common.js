// What every page does first: the connection banner, the header for the session, sign-out.

import { initBanner } from "./connection.js";
import { loadSession, loginUrl, requireSession, signOut } from "./session.js";

let started = false;

function initSignOut() {
  for (const button of document.querySelectorAll("[data-sign-out]")) {
    button.addEventListener("click", async () => {
      button.disabled = true;
      const done = await signOut();
      if (!done) button.disabled = false;
    });
  }
}

/**
 * Start the page: `run(user)` gets the signed-in user (or null on public pages) once the api
 * has answered. If the api is down, the banner says so and `run` waits until it is back. Forms
 * and handlers are set up by the page module itself, before this, so they work meanwhile.
 */
export function startPage(run) {
  const signedInOnly = document.body.dataset.signedInOnly === "true";
  if (!started) {
    initBanner();
    initSignOut();
    if (signedInOnly) {
      // Whatever the page was doing, without a session it can do nothing: sign in again and
      // come back (drafts are kept in this tab).
      window.addEventListener("sora:session-ended", () => window.location.assign(loginUrl()), { once: true });
    }
    started = true;
  }
  const attempt = async () => {
    let user;
    try {
      user = signedInOnly ? await requireSession() : await loadSession();
    } catch (error) {
      if (error?.outage) {
        window.addEventListener("sora:reconnected", attempt, { once: true });
        return;
      }
      throw error;
    }
    await run(user);
  };
  return attempt();
}
