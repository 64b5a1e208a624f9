// Drives headless Chromium (Debian's /usr/bin/chromium) with playwright-core: opens the page
// URL given as argv[2], waits for igv.js to report (window.igvResult) or fail, optionally goes
// to a second locus (argv[4]) and reports again, saves a screenshot (argv[3]) and prints one
// JSON line: {"result": ..., "after": ..., "requests": [...], "failed": [...], "console": [...]}.
// Used by tests/browser/test_igv.py; HTSGETR_NODE_MODULES names the npm install (make
// browser-deps: pinned playwright-core and igv under build/browser/node_modules).
import { createRequire } from "node:module";

const modules = process.env.HTSGETR_NODE_MODULES || "build/browser/node_modules";
const { chromium } = createRequire(modules.replace(/\/?$/, "/"))("playwright-core");

const [pageUrl, screenshot, locus2] = process.argv.slice(2);

// What igv itself holds for each alignment / variant track (runs in the page): the features
// it cached for the viewport (the interval it asked the server for), and how many of them
// lie in the visible window.
function report() {
  const tracks = [];
  for (const trackView of window.igvBrowser.trackViews) {
    const track = trackView.track;
    if (!["alignment", "variant"].includes(track.type)) continue;
    const vp = trackView.viewports[0];
    const frame = vp.referenceFrame;
    const start = frame.start, end = frame.start + frame.toBP(vp.getWidth());
    const cache = vp.featureCache;
    let features = [];
    if (cache && track.type === "alignment") {
      for (const group of cache.features.packedGroups.values()) {
        for (const row of group.rows) features.push(...row.alignments);
      }
    } else if (cache) {
      features = cache.features;
    }
    const key = f => track.type === "alignment" ? f.readName : f.chr + ":" + f.pos;
    tracks.push({name: track.name, type: track.type, chr: frame.chr, start, end,
      cacheStart: cache ? cache.bpStart : null, cacheEnd: cache ? cache.bpEnd : null,
      cached: features.map(key),
      inView: features.filter(f => f.start < end && f.end > start).length});
  }
  return {locus: window.igvBrowser.currentLoci(), tracks};
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({
  executablePath,
  headless: true,
  // nothing leaves the machine: igv.js asks igv.org for genome lists and url mappings
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"],
});
const out = { requests: [], failed: [], console: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on("console", (m) => out.console.push(`${m.type()}: ${m.text()}`.slice(0, 500)));
  page.on("pageerror", (e) => out.console.push(`pageerror: ${e}`.slice(0, 500)));
  page.on("request", (r) => out.requests.push({ method: r.method(), url: r.url(),
    headers: r.headers() }));
  page.on("requestfailed", (r) => out.failed.push({ method: r.method(), url: r.url(),
    error: r.failure() && r.failure().errorText }));
  await page.goto(pageUrl);
  await page.waitForFunction(() => window.igvResult || window.igvError, null,
    { timeout: 60000 });
  out.error = await page.evaluate(() => window.igvError || null);
  out.page = await page.evaluate(() => window.igvResult || null);
  out.status = await page.evaluate(() => {
    const s = document.getElementById("viewer-status");
    return s ? s.textContent : null;
  });
  if (!out.error) {
    out.result = await page.evaluate(report);
    if (locus2) {
      await page.evaluate(async (l) => { await window.igvBrowser.search(l); }, locus2);
      await page.waitForTimeout(500);
      out.after = await page.evaluate(report);
    }
  }
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
