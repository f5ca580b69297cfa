// Shared helpers for the scenarios that drive the real ComfyUI frontend (served by a real
// ComfyUI main.py) in headless Debian chromium through playwright-core, with real mouse and
// keyboard events. Each scenario file exports `run(page, ctx)`; run_scenario.mjs runs one and
// prints `RESULT {...}` for tests/comfy/test_frontend.py.

import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { inflateSync } from "node:zlib";

export const REPO = fileURLToPath(new URL("../../../", import.meta.url));
const CHROMIUM = process.env.REFCOMP_CHROMIUM ?? "/usr/bin/chromium";
const ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
  "--disable-sync", "--no-first-run"];

/** @param {string} name a file of workflows/ @returns {Promise<any>} */
export async function readWorkflow(name) {
  return JSON.parse(await readFile(`${REPO}workflows/${name}`, "utf8"));
}

/** @param {string} path relative to the repository @returns {Promise<any>} */
export async function readJson(path) {
  return JSON.parse(await readFile(`${REPO}${path}`, "utf8"));
}

/**
 * Launch chromium, open the frontend at `base` and wait until the app is usable.
 * Every request not to 127.0.0.1 is aborted.
 * @param {string} base @returns {Promise<{browser: any, page: any, errors: string[]}>}
 */
export async function openComfy(base, { width = 1400, height = 1000 } = {}) {
  const { chromium } = await import("playwright-core");
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true });
  const context = await browser.newContext({ viewport: { width, height } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
  await context.route("**/*", (route) => {
    const host = new URL(route.request().url()).hostname;
    return host === "127.0.0.1" ? route.continue() : route.abort();
  });
  const page = await context.newPage();
  /** @type {string[]} */
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error" && /refcomp/i.test(m.text())) errors.push(m.text()); });
  await page.goto(`${base}/`);
  await page.waitForFunction(() => window.app?.graph && window.LiteGraph && window.app.canvas?.ds, null,
    { timeout: 90_000 });
  await page.waitForTimeout(2500);
  return { browser, page, errors };
}

/**
 * Clear the graph and build [LoadImage(batchImage) ->] [Load Reference Set(folder) ->] Layout Canvas
 * [-> Layout Preview -> PreviewImage], at scale 1 with the canvas in view.
 * @param {{folder?: string|null, batchImage?: string|null, size?: number[], preview?: boolean}} [spec]
 * @returns {Promise<number>} the canvas node id (its editor is on the page)
 */
export async function buildCanvasGraph(page, { folder = null, batchImage = null, size = [600, 820], preview = false } = {}) {
  const id = await page.evaluate(({ folder, batchImage, size, preview }) => {
    const { app, LiteGraph } = window;
    const add = (type, pos) => {
      const n = LiteGraph.createNode(type);
      n.pos = pos;
      app.graph.add(n);
      return n;
    };
    const slot = (node, name) => node.inputs.findIndex((i) => i.name === name);
    app.graph.clear();
    const canvas = add("RefCompLayoutCanvas", [120, 60]);
    canvas.setSize(size);
    if (folder !== null || batchImage) {
      const refs = add("RefCompLoadReferenceSet", [-320, 100]);
      refs.widgets.find((w) => w.name === "folder").value = folder ?? "";
      refs.connect(0, canvas, slot(canvas, "references"));
      if (batchImage) {
        const load = add("LoadImage", [-640, 100]);
        const w = load.widgets.find((w) => w.name === "image");
        w.value = batchImage;
        w.callback?.(batchImage);
        load.connect(0, refs, slot(refs, "images"));
      }
    }
    if (preview) {
      const layoutPreview = add("RefCompLayoutPreview", [size[0] + 160, 60]);
      const out = add("PreviewImage", [size[0] + 460, 60]);
      canvas.connect(0, layoutPreview, slot(layoutPreview, "layout"));
      layoutPreview.connect(0, out, 0);
    }
    app.canvas.ds.offset = [0, 0];
    app.canvas.ds.scale = 1;
    app.graph.setDirtyCanvas(true, true);
    window.__refcompNode = canvas;
    return canvas.id;
  }, { folder, batchImage, size, preview });
  await waitEditor(page, id);
  return id;
}

/** Queue the workflow; wait for that prompt's history. @returns {Promise<{posted: any, history: any}>} */
export async function queueAndWait(page, timeoutMs = 60_000) {
  const posted = page.waitForResponse((r) => r.request().method() === "POST" && /\/prompt$/.test(new URL(r.url()).pathname));
  await page.evaluate(() => window.app.queuePrompt(0, 1));
  const response = await posted;
  const body = JSON.parse(response.request().postData() ?? "{}");
  const promptId = (await response.json()).prompt_id;
  for (let waited = 0; waited < timeoutMs; waited += 250) {
    await page.waitForTimeout(250);
    const h = await page.evaluate(async (pid) => (await fetch(`/api/history/${pid}`)).json(), promptId);
    if (h[promptId]?.status?.completed !== undefined) return { posted: body, history: h[promptId] };
  }
  return { posted: body, history: null };
}

/** Clear the graph, add a Layout Canvas node at scale 1 in view. @returns {Promise<number>} node id */
export async function addCanvasNode(page, { pos = [120, 90], size = null } = {}) {
  const id = await page.evaluate(({ pos, size }) => {
    const { app, LiteGraph } = window;
    app.graph.clear();
    const node = LiteGraph.createNode("RefCompLayoutCanvas");
    node.pos = pos;
    app.graph.add(node);
    if (size) node.setSize(size);
    app.canvas.ds.offset = [0, 0];
    app.canvas.ds.scale = 1;
    app.graph.setDirtyCanvas(true, true);
    return node.id;
  }, { pos, size });
  await waitEditor(page, id);
  return id;
}

/**
 * Load a workflow file and bring node `type` into view at scale 1 (its title 60 px from the top).
 * @returns {Promise<number>} the id of the first node of that type
 */
export async function loadWorkflow(page, wf, type = "RefCompLayoutCanvas") {
  await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, wf);
  const id = await page.evaluate((type) => {
    const { app } = window;
    const node = app.graph.nodes.find((n) => n.type === type);
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [-node.pos[0] + 120, -node.pos[1] + 90];
    app.graph.setDirtyCanvas(true, true);
    return node.id;
  }, type);
  if (type === "RefCompLayoutCanvas") await waitEditor(page, id);
  return id;
}

/** Wait until node `id`'s editor is on the page and visible. */
export async function waitEditor(page, id) {
  await page.waitForFunction((id) => {
    const el = window.app.graph.getNodeById(id)?.widgets?.find((w) => w.name === "layout_canvas")?.element;
    const r = el?.getBoundingClientRect();
    return el?.isConnected && r.width > 50 && r.height > 50 && el.offsetParent !== null;
  }, id, { timeout: 20_000 });
  await page.waitForTimeout(300);
}

/** The hidden layout_json widget's layout of node `id` ({missing: true} when the node is gone). */
export async function widgetLayout(page, id) {
  const text = await page.evaluate((id) =>
    window.app.graph.getNodeById(id)?.widgets.find((w) => w.name === "layout_json").value ?? null, id);
  return text === null ? { missing: true, instances: [] } : JSON.parse(text);
}

/** Selector of node `id`'s editor root. */
export const editorSel = (id) => `[data-refcomp-node="${id}"]`;

/**
 * Viewport position of an image point of node `id`'s canvas, computed from the canvas
 * element's box and the layout size (the editor letterboxes the image with `pad` px).
 * @returns {Promise<{x: number, y: number}>}
 */
export async function imageToClient(page, id, x, y, pad = 8) {
  return page.evaluate(({ id, x, y, pad }) => {
    const node = window.app.graph.getNodeById(id);
    const layout = JSON.parse(node.widgets.find((w) => w.name === "layout_json").value);
    const el = document.querySelector(`[data-refcomp-node="${id}"] canvas.refcomp-canvas`);
    const r = el.getBoundingClientRect();
    const k = r.width / el.clientWidth; // CSS zoom of the graph
    const cw = el.clientWidth, ch = el.clientHeight;
    const s = Math.min((cw - 2 * pad) / layout.width, (ch - 2 * pad) / layout.height);
    return { x: r.left + k * ((cw - layout.width * s) / 2 + x * s), y: r.top + k * ((ch - layout.height * s) / 2 + y * s) };
  }, { id, x, y, pad });
}

/** A real mouse drag between two image points of node `id`'s canvas. */
export async function drag(page, id, from, to, { steps = 6, modifiers = [] } = {}) {
  const a = await imageToClient(page, id, ...from);
  const b = await imageToClient(page, id, ...to);
  for (const m of modifiers) await page.keyboard.down(m);
  await page.mouse.move(a.x, a.y);
  await page.mouse.down();
  await page.mouse.move(b.x, b.y, { steps });
  await page.mouse.up();
  for (const m of modifiers) await page.keyboard.up(m);
  await page.waitForTimeout(100);
}

/** A real click at an image point of node `id`'s canvas. */
export async function clickImage(page, id, x, y) {
  const p = await imageToClient(page, id, x, y);
  await page.mouse.click(p.x, p.y);
  await page.waitForTimeout(80);
}

/** Viewport position of a point in graph units relative to node `id`'s top-left (title bar: dy < 0). */
export async function nodeToClient(page, id, dx, dy) {
  return page.evaluate(({ id, dx, dy }) => {
    const c = window.app.canvas;
    const node = window.app.graph.getNodeById(id);
    const r = c.canvas.getBoundingClientRect();
    return { x: r.left + (node.pos[0] + dx + c.ds.offset[0]) * c.ds.scale,
      y: r.top + (node.pos[1] + dy + c.ds.offset[1]) * c.ds.scale };
  }, { id, dx, dy });
}

/** Click an empty spot of the graph (deselects nodes, moves focus out of the editor). */
export async function clickEmptyGraph(page) {
  const p = await page.evaluate(() => {
    const r = window.app.canvas.canvas.getBoundingClientRect();
    return { x: r.left + r.width * 0.62, y: r.top + r.height * 0.85 };
  });
  await page.mouse.click(p.x, p.y);
  await page.waitForTimeout(150);
}

/** Set a per-box form field of node `id`'s editor with real input events, whatever control it is. */
export async function setField(page, id, field, value) {
  const root = editorSel(id);
  const control = await page.$(`${root} [data-field="${field}"]`);
  const tag = control ? await control.evaluate((e) => `${e.tagName}:${e.type}`) : "";
  if (tag.startsWith("SELECT")) {
    await page.selectOption(`${root} select[data-field="${field}"]`, String(value ?? ""));
  } else if (tag === "INPUT:radio" || !control) {
    await page.click(`${root} input[data-field="${field}"][value="${value ?? ""}"]`);
  } else {
    await page.click(`${root} [data-field="${field}"]`, { clickCount: 3 });
    await page.keyboard.type(String(value ?? ""));
    await page.keyboard.press("Tab");
  }
  await page.waitForTimeout(80);
}

/** Text of node `id`'s editor panel (toolbar, form and error line). */
export async function panelText(page, id) {
  return page.evaluate((sel) => document.querySelector(`${sel} .refcomp-panel`)?.textContent ?? "", editorSel(id));
}

/** Compare two layouts' boxes within `tol` (normalized units). */
export function assertBoxesClose(got, want, tol, what) {
  assert.equal(got.length, want.length, `${what}: ${got.length} boxes, expected ${want.length}`);
  got.forEach((b, i) => b.forEach((v, k) => assert.ok(Math.abs(v - want[i][k]) <= tol,
    `${what}: box ${i} is ${JSON.stringify(b)}, expected ${JSON.stringify(want[i])} ±${tol}`)));
}

/** RGB of the viewport pixel at (x, y), read from a real screenshot. @returns {Promise<number[]>} */
export async function pixelAt(page, x, y) {
  const png = await page.screenshot({ clip: { x: Math.round(x), y: Math.round(y), width: 1, height: 1 } });
  return decodePng(png).pixel(0, 0);
}

/** Mean RGB of a viewport rectangle of a real screenshot. @returns {Promise<number[]>} */
export async function meanColor(page, x, y, w, h) {
  const img = decodePng(await page.screenshot({ clip: { x: Math.round(x), y: Math.round(y), width: w, height: h } }));
  const sum = [0, 0, 0];
  for (let j = 0; j < img.height; j++) for (let i = 0; i < img.width; i++) img.pixel(i, j).forEach((v, k) => { sum[k] += v; });
  return sum.map((v) => v / (img.width * img.height));
}

/**
 * Minimal PNG decoder for 8-bit RGB/RGBA non-interlaced images (what chromium screenshots are).
 * @param {Buffer} buf @returns {{width: number, height: number, pixel: (x: number, y: number) => number[]}}
 */
export function decodePng(buf) {
  let pos = 8;
  let width = 0, height = 0, channels = 0;
  const idat = [];
  while (pos < buf.length) {
    const len = buf.readUInt32BE(pos);
    const type = buf.toString("ascii", pos + 4, pos + 8);
    const data = buf.subarray(pos + 8, pos + 8 + len);
    if (type === "IHDR") {
      width = data.readUInt32BE(0); height = data.readUInt32BE(4);
      assert.equal(data[8], 8, "8-bit PNG expected");
      channels = { 2: 3, 6: 4 }[data[9]];
      assert.ok(channels && data[12] === 0, `unsupported PNG colour type ${data[9]} / interlace ${data[12]}`);
    } else if (type === "IDAT") idat.push(data);
    pos += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const out = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    for (let x = 0; x < stride; x++) {
      const v = raw[y * (stride + 1) + 1 + x];
      const a = x >= channels ? out[y * stride + x - channels] : 0;
      const b = y > 0 ? out[(y - 1) * stride + x] : 0;
      const c = x >= channels && y > 0 ? out[(y - 1) * stride + x - channels] : 0;
      const p = a + b - c;
      const pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
      const paeth = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      out[y * stride + x] = (v + [0, a, b, (a + b) >> 1, paeth][filter]) & 255;
    }
  }
  return { width, height, pixel: (x, y) => [...out.subarray(y * stride + x * channels, y * stride + x * channels + 3)] };
}
