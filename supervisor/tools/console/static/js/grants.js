// Grants: every grant the service holds (or one client's), each revocable.

import { api } from "./api.js";
import { $, clear, h } from "./dom.js";
import * as words from "./words.js";

export function init() {
  $("#grants-form").addEventListener("submit", (event) => {
    event.preventDefault();
    show();
  });
}

export async function show() {
  const note = $("#grants-note");
  const client = String(new FormData($("#grants-form")).get("client") || "").trim();
  try {
    const data = await api(`/api/grants?${new URLSearchParams(client ? { client } : {})}`);
    render(data.grants);
    note.textContent = data.grants.length ? `${data.grants.length} grant${data.grants.length === 1 ? "" : "s"}.` : "No grants.";
  } catch (error) {
    note.textContent = `Grants could not be read: ${error.message}`;
  }
}

function render(grants) {
  const body = clear($("#grants-table tbody"));
  for (const g of grants) {
    const revoke = h("button", { type: "button", "aria-label": `Revoke grant ${g.grant_id}` }, "Revoke");
    revoke.addEventListener("click", async () => {
      revoke.disabled = true;
      try {
        await api(`/api/grants/${g.grant_id}`, { method: "DELETE" });
        $("#grants-note").textContent = `Grant #${g.grant_id} revoked.`;
        await show();
      } catch (error) {
        $("#grants-note").textContent = `Grant #${g.grant_id} was not revoked: ${error.message}`;
        revoke.disabled = false;
      }
    });
    body.append(
      h(
        "tr",
        { "data-grant": g.grant_id },
        h("td", {}, String(g.grant_id)),
        h("td", {}, g.client_id),
        h("td", {}, g.conversation_id ? `conversation ${g.conversation_id}` : "every conversation"),
        h("td", {}, `${words.capabilityLabel(g.capability)} (may ${words.capabilityWords(g.capability)})`),
        h("td", {}, words.when(g.created)),
        h("td", {}, g.expires ? words.when(g.expires) : "never"),
        h("td", {}, revoke),
      ),
    );
  }
}
