// Pages that change refresh their <main> in place every data-refresh seconds (no reload,
// no flicker); a page that answers with the login form means the session ended.
(function () {
  const main = document.querySelector("main[data-refresh]");
  if (!main) return;
  const seconds = Number(main.dataset.refresh) || 5;
  async function refresh() {
    try {
      const response = await fetch(location.href, { credentials: "same-origin" });
      if (response.redirected) { location.href = response.url; return; }
      if (response.ok) {
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = page.querySelector("main");
        if (fresh) main.innerHTML = fresh.innerHTML;
      }
    } catch (error) { /* the server is away for a moment: try again */ }
    setTimeout(refresh, seconds * 1000);
  }
  setTimeout(refresh, seconds * 1000);
})();

// Verbs that cannot be undone ask first: a form with data-confirm posts only when the
// operator confirms (delegated: the refresh above replaces the forms).
document.addEventListener("submit", function (event) {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});
