// The login page: posts the user name and password, then goes where the user was sent from
// (a path of this server only).
"use strict";

const form = document.getElementById("login");
const error = document.getElementById("error");

function destination() {
  const next = new URLSearchParams(location.search).get("next") || "/ui/";
  return next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/\\") ? next : "/ui/";
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.hidden = true;
  const values = Object.fromEntries(new FormData(form));
  const response = await fetch("/auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Requested-With": "dicomvault" },
    body: JSON.stringify({ username: values.username, password: values.password }),
  });
  if (response.ok) {
    location.assign(destination());
    return;
  }
  const body = await response.json().catch(() => ({}));
  error.textContent = response.status === 401 ? "Wrong user name or password." : body.error || response.statusText;
  error.hidden = false;
  form.password.value = "";
  form.password.focus();
});
