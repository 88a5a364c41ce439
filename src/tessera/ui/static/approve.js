// Tessera: the WebAuthn ceremony of the approval and enrolment pages. Everything else works without it.
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
  async function options(form, body) {
    const r = await fetch(form.dataset.options, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": form.dataset.csrf},
      body: JSON.stringify(body || {}),
    });
    const j = await r.json();
    if (!r.ok) throw new Error(j.error_description || j.error || "request failed");
    return j;
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
  const decide = document.getElementById("decide");
  if (decide) {
    decide.querySelectorAll("button.passkey").forEach(function (btn) {
      btn.addEventListener("click", async function () {
        const decision = btn.dataset.decision;
        try {
          const o = await options(decide, {decision: decision});
          o.challenge = b64uToBuf(o.challenge);
          (o.allowCredentials || []).forEach(function (c) { c.id = b64uToBuf(c.id); });
          const cred = await navigator.credentials.get({publicKey: o});
          const r = cred.response;
          decide.querySelector("#credential").value = JSON.stringify({
            id: cred.id, rawId: bufToB64u(cred.rawId), type: cred.type,
            response: {
              authenticatorData: bufToB64u(r.authenticatorData), clientDataJSON: bufToB64u(r.clientDataJSON),
              signature: bufToB64u(r.signature), userHandle: r.userHandle ? bufToB64u(r.userHandle) : null,
            },
            clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
          });
          const d = decide.querySelector("#decision");
          d.value = decision; d.disabled = false;
          decide.submit();
        } catch (e) { showError("Passkey: " + e.message); }
      });
    });
  }
  const enrol = document.getElementById("passkey-form");
  if (enrol) {
    document.getElementById("add-passkey").addEventListener("click", async function () {
      try {
        const o = await options(enrol, {});
        o.challenge = b64uToBuf(o.challenge);
        o.user.id = b64uToBuf(o.user.id);
        (o.excludeCredentials || []).forEach(function (c) { c.id = b64uToBuf(c.id); });
        const cred = await navigator.credentials.create({publicKey: o});
        const r = cred.response;
        enrol.querySelector("#credential").value = JSON.stringify({
          id: cred.id, rawId: bufToB64u(cred.rawId), type: cred.type,
          response: {
            clientDataJSON: bufToB64u(r.clientDataJSON), attestationObject: bufToB64u(r.attestationObject),
            transports: r.getTransports ? r.getTransports() : [],
          },
          clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
        });
        enrol.submit();
      } catch (e) { showError("Passkey: " + e.message); }
    });
  }
})();
