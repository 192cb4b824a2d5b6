// Live quorum indicator of an RCP session: polls the session's quorum JSON every 3 seconds.
(function () {
  "use strict";
  var panel = document.getElementById("quorum-panel");
  if (!panel) { return; }
  var state = document.getElementById("quorum-state");
  var detail = document.getElementById("quorum-detail");
  function refresh() {
    fetch(panel.dataset.quorumUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (q) {
        if (!q) { return; }
        state.textContent = q.met ? panel.dataset.met : panel.dataset.notMet;
        state.className = q.met ? "ok" : "error";
        var names = q.present.map(function (p) { return p.name; }).join(", ");
        detail.textContent = q.physicians_present + " " + panel.dataset.physicians + " (" + names + ")" +
          (q.missing_required.length ? " · " + panel.dataset.missing + ": " + q.missing_required.join(", ") : "");
      })
      .catch(function () { /* next poll retries */ });
  }
  setInterval(refresh, 3000);
})();
