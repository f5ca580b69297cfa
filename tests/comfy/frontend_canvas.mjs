// Drives the real ComfyUI frontend (served by ComfyUI's main.py) in headless Debian chromium
// through playwright-core: adds RefCompLayoutCanvas -> RefCompLayoutPreview -> PreviewImage,
// draws a box with real mouse events on the canvas widget, queues the prompt, and prints
// one line `RESULT {...}` with what the server received. Run by test_frontend.py.
//
//   node tests/comfy/frontend_canvas.mjs http://127.0.0.1:PORT

import { chromium } from "playwright-core";

const BASE = process.argv[2];
const CHROMIUM = process.env.REFCOMP_CHROMIUM ?? "/usr/bin/chromium";
const ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
  "--disable-sync", "--no-first-run"];

const result = { errors: [] };
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true });
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  await context.route("**/*", (route) => {
    const host = new URL(route.request().url()).hostname;
    return host === "127.0.0.1" ? route.continue() : route.abort();
  });
  const page = await context.newPage();
  page.on("pageerror", (e) => result.errors.push(String(e)));
  const posted = [];
  page.on("request", (r) => {
    if (r.method() === "POST" && /\/prompt$/.test(new URL(r.url()).pathname)) posted.push(r.postData());
  });
  await page.goto(`${BASE}/`);
  await page.waitForFunction(() => window.app?.graph && window.LiteGraph && window.app.graphToPrompt, null,
    { timeout: 60_000 });
  await page.waitForTimeout(3000);
  result.extensionLoaded = await page.evaluate(
    () => (window.app.extensions ?? []).some((e) => e.name === "RefComp.LayoutCanvas"));

  const ids = await page.evaluate(() => {
    const { app, LiteGraph } = window;
    app.graph.clear?.();
    const canvas = LiteGraph.createNode("RefCompLayoutCanvas");
    canvas.pos = [40, 40];
    app.graph.add(canvas);
    const preview = LiteGraph.createNode("RefCompLayoutPreview");
    preview.pos = [700, 40];
    app.graph.add(preview);
    const out = LiteGraph.createNode("PreviewImage");
    out.pos = [1000, 40];
    app.graph.add(out);
    canvas.connect(0, preview, preview.inputs.findIndex((i) => i.name === "layout"));
    preview.connect(0, out, 0);
    app.canvas?.ds && (app.canvas.ds.offset = [0, 0], app.canvas.ds.scale = 1);
    app.graph.setDirtyCanvas(true, true);
    const hidden = canvas.widgets.find((w) => w.name === "layout_json");
    return { canvas: canvas.id, hiddenJsonWidget: Boolean(hidden?.hidden || hidden?.type === "refcomp-hidden") };
  });
  result.hiddenJsonWidget = ids.hiddenJsonWidget;

  const el = await page.waitForSelector("canvas.refcomp-canvas", { state: "visible", timeout: 20_000 });
  await page.waitForTimeout(500);
  const r = await el.boundingBox();
  result.canvasRect = r;
  const from = { x: r.x + r.width * 0.3, y: r.y + r.height * 0.3 };
  const to = { x: r.x + r.width * 0.6, y: r.y + r.height * 0.65 };
  await page.mouse.move(from.x, from.y);
  await page.mouse.down();
  await page.mouse.move(to.x, to.y, { steps: 8 });
  await page.mouse.up();
  await page.waitForTimeout(300);

  result.widgetJson = await page.evaluate((id) => {
    const node = window.app.graph.getNodeById(id);
    return node.widgets.find((w) => w.name === "layout_json").value;
  }, ids.canvas);
  const api = await page.evaluate(async () => (await window.app.graphToPrompt()).output);
  result.apiLayout = api[String(ids.canvas)]?.inputs?.layout_json ?? null;

  await page.evaluate(() => window.app.queuePrompt(0, 1));
  for (let i = 0; i < 100 && posted.length === 0; i++) await page.waitForTimeout(100);
  const body = posted.length ? JSON.parse(posted[0]) : null;
  result.postedLayout = body?.prompt?.[String(ids.canvas)]?.inputs?.layout_json ?? null;
  let history = null;
  for (let i = 0; i < 120; i++) {
    const h = await page.evaluate(async () => (await fetch("/api/history?max_items=5")).json());
    const entries = Object.values(h);
    if (entries.length && entries[0].status?.completed !== undefined) { history = entries[0]; break; }
    await page.waitForTimeout(250);
  }
  result.executed = history?.status ?? null;
  result.historyLayout = history?.prompt?.[2]?.[String(ids.canvas)]?.inputs?.layout_json ?? null;
} catch (e) {
  result.errors.push(String(e?.stack ?? e));
} finally {
  await browser.close();
  console.log("RESULT " + JSON.stringify(result));
}
