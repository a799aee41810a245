// Usage page: cost per day, stacked by notebook or flavor.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("cost-data").textContent);
  const palette = ["#0b57d0", "#146c2e", "#b3261e", "#8a5300", "#6750a4", "#006a6a", "#7d5260", "#3f4759"];
  const datasets = Object.entries(data.series).map(([name, values], i) => ({
    label: name, data: values, backgroundColor: palette[i % palette.length],
  }));
  new Chart(document.getElementById("cost-chart"), {
    type: "bar",
    data: { labels: data.days, datasets: datasets },
    options: { animation: false, scales: { x: { stacked: true }, y: { stacked: true, title: { display: true, text: data.currency } } } },
  });
})();
