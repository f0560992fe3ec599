// Check boxes of the mail lists: select all on the page, then optionally "all N matching".
// Served from the console itself: the Content Security Policy allows no inline script.
(function () {
  "use strict";
  function picks() { return Array.prototype.slice.call(document.querySelectorAll("#selection input.pick")); }
  function refresh() {
    var form = document.getElementById("selection");
    if (!form) { return; }
    var all = document.getElementById("all-matching");
    var boxes = picks();
    var checked = boxes.filter(function (b) { return b.checked; }).length;
    var total = parseInt(form.dataset.total, 10) || 0;
    var counter = document.getElementById("selected-count");
    var matching = document.getElementById("select-matching");
    if (checked < boxes.length && all) { all.value = "0"; }
    if (counter) {
      counter.textContent = all && all.value === "1" ? "all " + total + " matching selected" : checked + " selected";
    }
    if (matching) { matching.hidden = !(boxes.length && checked === boxes.length && total > boxes.length && all.value !== "1"); }
    var page = document.getElementById("select-page");
    if (page) { page.checked = boxes.length > 0 && checked === boxes.length; }
  }
  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target.id === "select-page") {
      picks().forEach(function (b) { b.checked = target.checked; });
    }
    if (target.id === "select-page" || target.classList.contains("pick")) { refresh(); }
  });
  document.addEventListener("click", function (event) {
    var target = event.target;
    if (target.id === "select-matching") {
      document.getElementById("all-matching").value = "1";
      refresh();
    }
    if (target.dataset && target.dataset.clear) {
      var box = document.querySelector(target.dataset.clear);
      if (box) { box.innerHTML = ""; }
    }
  });
  document.addEventListener("DOMContentLoaded", refresh);
}());
