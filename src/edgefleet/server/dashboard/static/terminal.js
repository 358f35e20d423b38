// The device terminal: open a session through the gate (POST), attach to its WebSocket,
// carry keystrokes (binary frames) one way and output the other; control messages (ready,
// refused, exit, ended) are JSON text frames. Resizes follow the page's size.
(function () {
  const controls = document.getElementById("session-controls");
  if (!controls || !window.Terminal) return;
  const device = controls.dataset.device;
  const status = document.getElementById("session-state");
  const term = new window.Terminal({ convertEol: false, cursorBlink: true, fontSize: 14 });
  const fit = new window.FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  window.edgefleetTerminal = term; // the browser tests read the screen through it
  let socket = null;
  const encoder = new TextEncoder();

  function say(text) { status.textContent = text; }

  async function open(request) {
    if (socket) socket.close();
    term.reset();
    say("opening…");
    const response = await fetch(`/ui/devices/${device}/sessions`, {
      method: "POST", credentials: "same-origin", headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...request, cols: term.cols, rows: term.rows }),
    });
    const answer = await response.json();
    if (!response.ok) { say(`refused: ${answer.error.message}`); return; }
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${answer.attach}`);
    ws.binaryType = "arraybuffer";
    socket = ws;
    ws.onmessage = (event) => {
      if (event.data instanceof ArrayBuffer) { term.write(new Uint8Array(event.data)); return; }
      const control = JSON.parse(event.data);
      if (control.type === "ready") { say(`session ${answer.id} open (${answer.verb})`); term.focus(); }
      else if (control.type === "refused") say(`refused by the device: ${control.reason}`);
      else if (control.type === "exit") say(`session ${answer.id} ended: exit ${control.code}`);
      else if (control.type === "ended") say(`session ${answer.id} ended: ${control.reason}`);
    };
    ws.onclose = (event) => {
      if (socket === ws) socket = null;
      if (!status.textContent.includes("ended") && !status.textContent.startsWith("refused")) {
        say(`session closed${event.reason ? ": " + event.reason : ""}`);
      }
    };
    say("waiting for the device…");
  }

  term.onData((data) => { if (socket && socket.readyState === 1) socket.send(encoder.encode(data)); });
  term.onResize(({ cols, rows }) => {
    if (socket && socket.readyState === 1) socket.send(JSON.stringify({ type: "resize", cols, rows }));
  });
  window.addEventListener("resize", () => fit.fit());
  document.getElementById("open-shell").addEventListener("click", () => open({ verb: "shell" }));
  document.getElementById("open-logs").addEventListener("click", () => open({ verb: "logs", follow: true }));
  document.getElementById("open-forensic").addEventListener("click",
    () => open({ verb: "logs", follow: true, forensic: true }));
  for (const id of ["open-shell", "open-logs", "open-forensic"]) document.getElementById(id).disabled = false;
})();
