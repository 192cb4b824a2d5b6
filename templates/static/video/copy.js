// Copy the invitation link to the clipboard.
(() => {
  "use strict";
  const btn = document.getElementById("copy-link");
  if (!btn) return;
  btn.addEventListener("click", async () => {
    const input = document.getElementById("invite-link");
    input.select();
    try { await navigator.clipboard.writeText(input.value); } catch (e) { document.execCommand("copy"); }
    btn.textContent = btn.dataset.done;
  });
})();
