// Tessera console: the passkey sign-in ceremony (W3C WebAuthn navigator.credentials.get). Nothing else
// on the console needs script.
"use strict";
(function () {
  function b64uToBuf(s) {
    s = s.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) s += "=";
    const bin = atob(s), out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }
  function bufToB64u(buf) {
    const bytes = new Uint8Array(buf);
    let bin = "";
    for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function showError(text) {
    let p = document.getElementById("error");
    if (!p) {
      p = document.createElement("p");
      p.id = "error"; p.className = "error"; p.setAttribute("role", "alert");
      document.querySelector("main h1").after(p);
    }
    p.textContent = text;
  }
  const form = document.getElementById("passkey-login");
  if (!form) return;
  document.getElementById("passkey-button").addEventListener("click", async function () {
    try {
      const r = await fetch(form.dataset.options, {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": form.dataset.csrf},
        body: "{}",
      });
      const o = await r.json();
      if (!r.ok) throw new Error(o.error_description || o.error || "request failed");
      o.challenge = b64uToBuf(o.challenge);
      (o.allowCredentials || []).forEach(function (c) { c.id = b64uToBuf(c.id); });
      const cred = await navigator.credentials.get({publicKey: o});
      const resp = cred.response;
      form.querySelector("#credential").value = JSON.stringify({
        id: cred.id, rawId: bufToB64u(cred.rawId), type: cred.type,
        response: {
          authenticatorData: bufToB64u(resp.authenticatorData), clientDataJSON: bufToB64u(resp.clientDataJSON),
          signature: bufToB64u(resp.signature), userHandle: resp.userHandle ? bufToB64u(resp.userHandle) : null,
        },
        clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
      });
      form.submit();
    } catch (e) { showError("Passkey: " + e.message); }
  });
})();
