// The page: its four views, the access token, the service's info line.

import { api, forgetToken, setToken, takeTokenFromUrl, token } from "./api.js";
import * as chat from "./chat.js";
import { $ } from "./dom.js";
import * as grants from "./grants.js";
import * as history from "./history.js";
import * as status from "./status.js";

const PAGES = { chat: null, history: history.show, grants: grants.show, status: status.show };

function showPage(name) {
  for (const page of [...Object.keys(PAGES), "login"]) $(`#page-${page}`).hidden = page !== name;
  for (const button of document.querySelectorAll("nav [data-page]")) {
    if (button.dataset.page === name) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  if (name !== "status") status.stop();
  if (PAGES[name]) PAGES[name]();
}

function needToken() {
  forgetToken();
  showPage("login");
  $("#login-token").focus();
}

async function start() {
  $("#page-error").hidden = true;
  try {
    const data = await api("/api/info");
    chat.setInfo(data);
    $("#who").textContent = `client “${data.client_id}” · cellblock ${data.version} · ${data.languages.join(", ")}`;
    const examples = await api("/api/examples");
    const select = $("#example-select");
    select.replaceChildren(...examples.examples.map((e) => new Option(e.title, e.name)));
    showPage("chat");
  } catch (error) {
    if (error.status !== 401) {
      $("#page-error").textContent = error.message;
      $("#page-error").hidden = false;
    }
  }
}

takeTokenFromUrl();
window.addEventListener("cellblock-token", needToken);
for (const button of document.querySelectorAll("nav [data-page]")) {
  button.addEventListener("click", () => (token() ? showPage(button.dataset.page) : needToken()));
}
$("#login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken($("#login-token").value);
  start();
});
$("#example-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("#example-select").value;
  $("#page-error").hidden = true;
  try {
    await chat.showTranscript(await api(`/api/examples/${encodeURIComponent(name)}`));
  } catch (error) {
    $("#page-error").textContent = error.message;
    $("#page-error").hidden = false;
  }
});
$("#file-input").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (file) await chat.showTranscript(await file.text());
});
$("#paste-form").addEventListener("submit", (event) => {
  event.preventDefault();
  chat.showTranscript($("#paste-text").value);
});
chat.watchRunFiles();
history.init();
grants.init();
if (token()) start();
else needToken();
