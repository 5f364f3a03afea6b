// Keeps the live part of a dashboard page (`#live`, with the address of its fresh copy in
// `data-live`) up to date: fetched every two seconds and swapped in when it changed, but never
// under a pointer that is pressing or a control that has focus, so a click lands on the button
// that was under it. Forms marked `data-confirm` ask first. A lost session goes back to sign-in.
"use strict";
(() => {
  document.addEventListener("submit", (event) => {
    const question = event.target.dataset && event.target.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });

  const live = document.getElementById("live");
  if (!live) return;
  const updated = document.getElementById("updated");
  let last = null;
  let pressing = false;
  live.addEventListener("pointerdown", () => { pressing = true; });
  document.addEventListener("pointerup", () => { setTimeout(() => { pressing = false; }, 300); });

  const busy = () => {
    const focused = document.activeElement;
    return pressing || (focused && focused !== document.body && live.contains(focused));
  };
  const stamp = (text, stale) => {
    document.body.classList.toggle("stale", stale);
    if (updated) updated.textContent = text;
  };

  const refresh = async () => {
    if (document.hidden || busy()) return;
    try {
      const response = await fetch(live.dataset.live, { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401) { window.location.assign("/ui/login"); return; }
      if (!response.ok) { stamp(`not updated: the server answered ${response.status}`, true); return; }
      const html = await response.text();
      // The operator may have started a click while the answer was on its way.
      if (busy()) return;
      if (html !== last) { last = html; live.innerHTML = html; }
      stamp(`live · ${new Date().toLocaleTimeString()}`, false);
    } catch (error) {
      stamp("not updated: the server cannot be reached", true);
    }
  };
  setInterval(refresh, 2000);
})();
