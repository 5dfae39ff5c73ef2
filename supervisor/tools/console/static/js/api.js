// Every call to the console's API: the access token in a header (never a
// cookie, so another site's page cannot use it), errors as ApiError.

const KEY = "cellblock-console-token";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function takeTokenFromUrl() {
  // The token comes in the fragment (#token=...): browsers never send a fragment to a server.
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

export const token = () => sessionStorage.getItem(KEY) || "";
export const setToken = (value) => sessionStorage.setItem(KEY, value.trim());
export const forgetToken = () => sessionStorage.removeItem(KEY);

async function send(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
  } catch {
    throw new ApiError(0, "unreachable", "the console does not answer (has it stopped?)");
  }
  if (!response.ok) {
    let code = "http_" + response.status, message = `the console answered ${response.status}`;
    try {
      const data = await response.json();
      if (data.error) ({ code, message } = data.error);
    } catch { /* not JSON: keep the plain sentence */ }
    if (response.status === 401) window.dispatchEvent(new CustomEvent("cellblock-token"));
    throw new ApiError(response.status, code, message);
  }
  return response;
}

export async function api(path, options) {
  const response = await send(path, options);
  const type = response.headers.get("content-type") || "";
  return type.startsWith("application/json") ? response.json() : response.text();
}

// A POST whose answer is a stream of server-sent events; onEvent(name, data) for each.
export async function stream(path, body, onEvent) {
  const response = await send(path, { method: "POST", body });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const raw = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message", data = "";
      for (const line of raw.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      onEvent(name, data ? JSON.parse(data) : null);
    }
  }
}

// A POST whose answer is a file: saved through the browser's download.
export async function download(path, body) {
  const response = await send(path, { method: "POST", body });
  const disposition = response.headers.get("content-disposition") || "";
  const name = (/filename="([^"]+)"/.exec(disposition) || [null, "cellblock-export"])[1];
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  return name;
}
