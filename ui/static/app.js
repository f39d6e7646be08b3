// Berth's web interface works without this script. It adds a "Copy"
// button beside each pull command.
document.addEventListener("DOMContentLoaded", () => {
  if (!navigator.clipboard) return;
  for (const code of document.querySelectorAll("code.copy")) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "copy-button";
    b.textContent = "Copy";
    b.setAttribute("aria-label", "Copy pull command");
    b.addEventListener("click", async () => {
      await navigator.clipboard.writeText(code.textContent);
      b.textContent = "Copied";
      setTimeout(() => { b.textContent = "Copy"; }, 1500);
    });
    code.after(b);
  }
});
