// Hearth website: live regions, charts (uPlot) and the copy button. No inline scripts, no network but this site.
"use strict";
(function () {
  const charts = new Map(); // data element id -> uPlot instance

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function readData(id) {
    const element = document.getElementById(id);
    if (!element) return [];
    try { return JSON.parse(element.textContent || "[]"); } catch (e) { return []; }
  }

  function columns(points) {
    return [points.map((p) => p[0]), points.map((p) => p[1])];
  }

  function drawChart(host) {
    const id = host.dataset.chart;
    const points = readData(id);
    const empty = host.parentElement.querySelector(".empty");
    if (empty) empty.hidden = points.length > 0;
    host.hidden = points.length === 0;
    if (points.length === 0 || typeof uPlot === "undefined") return;
    const existing = charts.get(id);
    if (existing) { existing.setData(columns(points)); return; }
    const axis = { stroke: cssVar("--muted"), grid: { stroke: cssVar("--grid"), width: 1 }, ticks: { stroke: cssVar("--grid") } };
    const isTime = host.dataset.x === "time";
    const options = {
      width: Math.max(host.clientWidth, 200), height: 240,
      scales: { x: { time: isTime } },
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      // epochs are whole numbers: no ticks between them
      axes: [Object.assign({ label: host.dataset.xLabel || "" }, axis, isTime ? {} : { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000] }),
             Object.assign({ label: host.dataset.yLabel || "", size: 70 }, axis)],
      series: [{}, { label: host.dataset.yLabel || "", stroke: cssVar("--chart-1"), width: 2, fill: cssVar("--chart-1") + "22",
                     points: { show: points.length < 60 } }],
    };
    const plot = new uPlot(options, columns(points), host);
    charts.set(id, plot);
    new ResizeObserver(() => plot.setSize({ width: Math.max(host.clientWidth, 200), height: 240 })).observe(host);
  }

  function drawCharts() { document.querySelectorAll("[data-chart]").forEach(drawChart); }

  // Live regions: re-fetch this page and swap every [data-live] element whose content changed, unless the
  // reader is inside it (focus stays where it is).
  async function refresh() {
    let html;
    try {
      const response = await fetch(location.href, { headers: { "Accept": "text/html" }, cache: "no-store" });
      if (!response.ok) return;
      html = await response.text();
    } catch (e) { return; } // offline for a moment: try again at the next tick
    const fresh = new DOMParser().parseFromString(html, "text/html");
    let changed = false;
    document.querySelectorAll("[data-live]").forEach((region) => {
      const next = fresh.querySelector(`[data-live="${region.dataset.live}"]`);
      if (!next || next.innerHTML === region.innerHTML || region.contains(document.activeElement)) return;
      region.innerHTML = next.innerHTML;
      changed = true;
    });
    if (changed) {
      drawCharts();
      document.dispatchEvent(new CustomEvent("hearth:updated"));
    }
  }

  function startPolling() {
    const seconds = Number(document.body.dataset.poll || 0);
    if (!seconds || !document.querySelector("[data-live]")) return;
    let timer = setInterval(refresh, seconds * 1000);
    document.addEventListener("visibilitychange", () => {
      clearInterval(timer);
      if (!document.hidden) { refresh(); timer = setInterval(refresh, seconds * 1000); }
    });
  }

  function setUpCopy() {
    document.querySelectorAll("[data-copy]").forEach((button) => {
      button.hidden = false;
      button.addEventListener("click", async () => {
        const source = document.getElementById(button.dataset.copy);
        const status = document.getElementById(button.dataset.copyStatus);
        const text = source.textContent.trim();
        let ok = false;
        if (navigator.clipboard && window.isSecureContext) {
          try { await navigator.clipboard.writeText(text); ok = true; } catch (e) { ok = false; }
        }
        if (!ok) { // plain-HTTP sites have no clipboard API: select the text and use the legacy command
          const range = document.createRange();
          range.selectNodeContents(source);
          const selection = window.getSelection();
          selection.removeAllRanges();
          selection.addRange(range);
          try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
        }
        if (status) status.textContent = ok ? "Copied." : "Press Ctrl+C (or ⌘C) to copy the selected command.";
      });
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    drawCharts();
    setUpCopy();
    startPolling();
  });
})();
