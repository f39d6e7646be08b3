// Berth's web interface works without this script. It adds a "Copy"
// button beside each pull command.
document.addEventListener("DOMContentLoaded", () => {
  if (!navigator.clipboard) return;
  let n = 0;
  for (const code of document.querySelectorAll("code.copy")) {
    if (!code.id) code.id = "pull-command-" + ++n;
    const b = document.createElement("button");
    b.type = "button";
    b.className = "copy-button";
    b.textContent = "Copy";
    b.setAttribute("aria-label", "Copy pull command");
    // The name is the same for each button; the description tells which.
    b.setAttribute("aria-describedby", code.id);
    b.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(code.textContent);
        b.textContent = "Copied";
      } catch {
        // The browser refused the clipboard: select the command, so that
        // the keyboard's copy takes it, and say so.
        getSelection().selectAllChildren(code);
        b.textContent = "Copy failed: press Ctrl+C";
      }
      setTimeout(() => { b.textContent = "Copy"; }, 1500);
    });
    code.after(b);
  }
});
