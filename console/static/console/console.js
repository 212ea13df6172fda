// The console's only script: copy buttons and the organization switcher. Pages work without it.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const field = document.querySelector(button.dataset.copy);
  field.select();
  try {
    await navigator.clipboard.writeText(field.value);
  } catch (err) {
    document.execCommand("copy"); // insecure origins (plain http on a LAN address)
  }
  button.textContent = "Copied";
  button.dataset.copied = "true";
});
document.addEventListener("change", (event) => {
  if (event.target.matches("select[data-autosubmit]")) event.target.form.submit();
});
