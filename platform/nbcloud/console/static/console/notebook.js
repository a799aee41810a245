// The notebook page: follows the editor's log and draws the samples' charts.
(function () {
  "use strict";
  const logs = document.getElementById("logs");
  const follow = document.getElementById("follow-logs");
  async function refreshLogs() {
    try {
      const reply = await fetch(logs.dataset.url + "?tail=500", { credentials: "same-origin" });
      if (reply.ok) {
        const body = await reply.json();
        logs.textContent = body.logs || "(no log lines yet)";
        if (follow.checked) logs.scrollTop = logs.scrollHeight;
      }
    } catch (e) { /* the next round tries again */ }
  }
  const charts = {};
  function chart(id, label, points) {
    const data = { datasets: [{ label: label, data: points, borderColor: "#0b57d0", pointRadius: 0, tension: 0.2 }] };
    if (charts[id]) { charts[id].data = data; charts[id].update("none"); return; }
    charts[id] = new Chart(document.getElementById(id), {
      type: "line", data: data,
      options: { animation: false, maintainAspectRatio: false, parsing: false,
                 plugins: { legend: { display: false } },
                 scales: { x: { type: "linear", ticks: { callback: (v) => new Date(v * 1000).toLocaleTimeString() } },
                           y: { beginAtZero: true } } },
    });
  }
  const GiB = 1024 * 1024 * 1024;
  async function refreshCharts() {
    const box = document.getElementById("charts");
    try {
      const reply = await fetch(box.dataset.url + "?since=3600", { credentials: "same-origin" });
      if (!reply.ok || typeof Chart === "undefined") return;
      const samples = (await reply.json()).samples;
      const pick = (f) => samples.filter((s) => f(s) !== null && f(s) !== undefined).map((s) => ({ x: s.at, y: f(s) }));
      chart("chart-cpu", "cores", pick((s) => s.cpu_cores));
      chart("chart-memory", "GiB", pick((s) => s.memory_bytes === null ? null : s.memory_bytes / GiB));
      chart("chart-gpu", "%", pick((s) => s.gpus && s.gpus.length ? s.gpus.reduce((a, g) => a + (g.utilization_percent || 0), 0) / s.gpus.length : null));
      chart("chart-storage", "GiB", pick((s) => s.workspace_bytes === null ? null : s.workspace_bytes / GiB));
    } catch (e) { /* the next round tries again */ }
  }
  refreshLogs(); refreshCharts();
  setInterval(refreshLogs, 3000);
  setInterval(refreshCharts, 15000);
})();
