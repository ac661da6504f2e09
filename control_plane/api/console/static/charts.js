// Draws each <figure data-chart> with uPlot from /console/charts/data, every 30 s.
// The numbers come from the per-minute rollups every replica shares (services/rollups.py).
(function () {
  "use strict";
  var PALETTE = ["#0969da", "#1a7f37", "#cf222e", "#9a6700", "#8250df", "#bf3989", "#1b7c83", "#57606a"];
  var STATUS = {SUBMITTED: "#0969da", SUCCEEDED: "#1a7f37", FAILED: "#cf222e", CANCELLED: "#57606a", TIMED_OUT: "#9a6700"};
  var dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  var axisColour = dark ? "#9da7b3" : "#57606a";

  function summary(data) {
    if (!data.series.length) { return "No data in this window yet."; }
    return data.series.map(function (s) {
      var last = null;
      for (var i = s.values.length - 1; i >= 0; i--) { if (s.values[i] !== null) { last = s.values[i]; break; } }
      var total = s.values.reduce(function (a, v) { return a + (v || 0); }, 0);
      return s.label + ": latest " + (last === null ? "–" : last) + (data.kind === "jobs" ? ", total " + total : "");
    }).join(" · ");
  }

  function draw(fig, data) {
    var plot = fig.querySelector(".plot");
    fig.querySelector(".summary").textContent = summary(data);
    fig.dataset.points = String(data.x.length);
    fig.dataset.series = String(data.series.length);
    if (fig._uplot) { fig._uplot.destroy(); fig._uplot = null; }
    if (!data.series.length) { plot.textContent = ""; return; }
    var scales = {x: {time: true}};
    var axes = [{stroke: axisColour}, {stroke: axisColour, scale: data.series[0].scale || "y"}];
    var extra = {};
    data.series.forEach(function (s) { if (s.scale && s.scale !== (data.series[0].scale || "y")) { extra[s.scale] = true; } });
    Object.keys(extra).forEach(function (k) { axes.push({stroke: axisColour, scale: k, side: 1, grid: {show: false}}); });
    var series = [{}].concat(data.series.map(function (s, i) {
      return {label: s.label, scale: s.scale || "y", stroke: STATUS[s.label] || PALETTE[i % PALETTE.length], width: 2, spanGaps: false, points: {show: data.kind !== "jobs"}};
    }));
    var opts = {width: Math.max(280, plot.clientWidth || fig.clientWidth - 30), height: 220, scales: scales, axes: axes, series: series};
    fig._uplot = new uPlot(opts, [data.x].concat(data.series.map(function (s) { return s.values; })), plot);
  }

  function load(fig) {
    fetch(fig.dataset.url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (data) { draw(fig, data); fig.dataset.loaded = "yes"; })
      .catch(function (e) { fig.querySelector(".summary").textContent = "Could not load: " + e.message; });
  }

  function all() { document.querySelectorAll("figure[data-chart]").forEach(load); }
  document.addEventListener("DOMContentLoaded", function () { all(); setInterval(all, 30000); });
})();
