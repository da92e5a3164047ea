/* Keyflow dashboard: the few lines of script it needs (copy to clipboard,
   focusing a one-time reveal, and showing only the chosen trigger kind's
   fields on a workflow's form;
   without script every kind's fields show and the server reads the chosen
   one's).
   navigator.clipboard exists only in secure contexts (https, localhost): on a
   plain-http LAN address the legacy copy command is used, and if that fails
   too the text is left selected with a word on how to copy it. */
(function () {
  "use strict";

  function select(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function say(button, text) {
    var status = button.parentNode.querySelector(".copy-status[data-for='" + button.getAttribute("data-copy") + "']");
    if (status) { status.textContent = text; }
  }

  function legacyCopy(source, button) {
    select(source);
    var copied = false;
    try { copied = document.execCommand("copy"); } catch (e) { copied = false; }
    if (copied) {
      button.textContent = "Copied";
      say(button, "Copied to the clipboard.");
    } else {
      say(button, "Press Ctrl+C (⌘C on a Mac) to copy the selected text.");
    }
  }

  document.addEventListener("click", function (event) {
    var secret = event.target.closest(".secret");
    if (secret) { select(secret); return; }
    var button = event.target.closest("[data-copy]");
    if (!button) { return; }
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) { return; }
    var text = source.textContent.trim();
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () {
        button.textContent = "Copied";
        say(button, "Copied to the clipboard.");
      }, function () { legacyCopy(source, button); });
    } else {
      legacyCopy(source, button);
    }
  });

  function showTriggerKind() {
    var kind = document.getElementById("trigger_type");
    if (!kind) { return; }
    var sets = document.querySelectorAll("fieldset.trigger-kind");
    for (var i = 0; i < sets.length; i++) {
      sets[i].hidden = sets[i].getAttribute("data-kind") !== kind.value;
    }
  }
  document.addEventListener("change", function (event) {
    if (event.target.id === "trigger_type") { showTriggerKind(); }
  });
  // A one-time reveal starts with the key focused and selected: screen
  // readers read it out, and Ctrl+C copies it at once.
  function focusReveal() {
    var target = document.querySelector("[data-focus]");
    if (!target) { return; }
    target.focus();
    select(target);
  }
  document.addEventListener("DOMContentLoaded", function () {
    showTriggerKind();
    focusReveal();
  });
})();
