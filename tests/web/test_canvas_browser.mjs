// Browser test of the RefComp layout editor, without ComfyUI.
//
// Run:  node --test tests/web/            (picked up through canvas_browser.test.mjs,
//                                          because node's default patterns skip test_*.mjs)
//   or: node --test tests/web/test_canvas_browser.mjs
//
// Serves web/ and tests/web/fixtures/canvas_page.html from a local HTTP server on
// 127.0.0.1, drives Debian's /usr/bin/chromium through playwright-core (never
// downloads a browser; every request not to 127.0.0.1 is aborted) with real mouse
// and keyboard events, and checks the serialized layout v1 JSON.
// Without /usr/bin/chromium the test FAILS, unless REFCOMP_SKIP_BROWSER=1.

import test from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { startStaticServer } from "./static_server.mjs";

const CHROMIUM = process.env.REFCOMP_CHROMIUM ?? "/usr/bin/chromium";
const ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
  "--disable-sync", "--no-first-run"];
const W = 1024;
const H = 512;
/** Mouse positions are screen px; one screen px is ~1.7 image px here. */
const TOL = 3;

/** @param {number[]} box normalized @param {number[]} px expected image px [x0,y0,x1,y1] @param {string} what */
function assertBox(box, px, what) {
  const got = [box[0] * W, box[1] * H, box[2] * W, box[3] * H];
  for (let k = 0; k < 4; k++) {
    assert.ok(Math.abs(got[k] - px[k]) <= TOL, `${what}: got ${got.map((v) => v.toFixed(1))} expected ${px} (±${TOL} px)`);
  }
  assert.ok(box[0] < box[2] && box[1] < box[3], `${what}: box not ordered`);
  for (const v of box) assert.ok(v >= 0 && v <= 1, `${what}: ${v} outside [0,1]`);
}

/**
 * Serve the fixtures, launch chromium and open `pagePath`; cleanup is registered on `t`.
 * Returns null when the test was skipped.
 * @param {import("node:test").TestContext} t @param {string} pagePath
 * @returns {Promise<{page: import("playwright-core").Page, errors: string[]}|null>}
 */
async function openPage(t, pagePath) {
  if (process.env.REFCOMP_SKIP_BROWSER === "1") {
    t.skip("REFCOMP_SKIP_BROWSER=1");
    return null;
  }
  assert.ok(existsSync(CHROMIUM),
    `${CHROMIUM} not found: install Debian chromium (apt-get install chromium), or set REFCOMP_SKIP_BROWSER=1 to skip`);
  const { chromium } = await import("playwright-core");
  const server = await startStaticServer();
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true });
  t.after(async () => {
    await browser.close();
    await server.close();
  });
  const context = await browser.newContext({ viewport: { width: 900, height: 600 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"]);
  await context.route("**/*", (route) => {
    const host = new URL(route.request().url()).hostname;
    return host === "127.0.0.1" ? route.continue() : route.abort();
  });
  const page = await context.newPage();
  /** @type {string[]} */
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  await page.goto(`${server.url}/${pagePath}`);
  await page.waitForFunction(() => /** @type {any} */ (window).__ready === true, null, { timeout: 10_000 });
  return { page, errors };
}

/**
 * Helpers on canvas_page.html: the last layout JSON, client points of image points (via the
 * view's own transform), real mouse drags (optionally with modifier keys held) and clicks.
 * @param {import("playwright-core").Page} page
 */
function canvasPage(page) {
  const json = () => page.evaluate(() => /** @type {any} */ (window).__refcomp.json());
  const at = (x, y) => page.evaluate((p) => /** @type {any} */ (window).__refcomp.editor.view.imageToClient(p), { x, y });
  const drag = async (from, to, mods = []) => {
    const a = await at(...from);
    const b = await at(...to);
    for (const m of mods) await page.keyboard.down(m);
    await page.mouse.move(a.x, a.y);
    await page.mouse.down();
    await page.mouse.move(b.x, b.y, { steps: 6 });
    await page.mouse.up();
    for (const m of mods) await page.keyboard.up(m);
  };
  const click = async (x, y) => {
    const p = await at(x, y);
    await page.mouse.click(p.x, p.y);
    await page.waitForTimeout(60);
  };
  return { json, at, drag, click };
}

test("layout canvas in headless chromium: draw, move, resize, delete, undo, form", { timeout: 120_000 }, async (t) => {
  const opened = await openPage(t, "canvas_page.html");
  if (!opened) return;
  const { page, errors } = opened;
  const { json, at, drag, click } = canvasPage(page);

  // The view letterboxes a 2:1 image into the canvas: check the transform independently.
  const geo = await page.evaluate(() => {
    const c = document.querySelector("canvas.refcomp-canvas").getBoundingClientRect();
    return { left: c.left, top: c.top, width: c.width, height: c.height };
  });
  const tl = await at(0, 0);
  const br = await at(W, H);
  assert.ok(Math.abs((br.x - tl.x) / (br.y - tl.y) - W / H) < 1e-6, "aspect ratio kept");
  assert.ok(tl.x >= geo.left && br.x <= geo.left + geo.width && tl.y >= geo.top && br.y <= geo.top + geo.height);

  // 1. draw
  await drag([100, 100], [400, 300]);
  let j = await json();
  assert.equal(j.version, 1);
  assert.equal(j.width, W);
  assert.equal(j.height, H);
  assert.equal(j.instances.length, 1);
  assertBox(j.instances[0].box, [100, 100, 400, 300], "drawn");
  assert.deepEqual({ ...j.instances[0], box: null }, { box: null, ref: null, caption: "", depth: null, alpha: null });

  // 2. drag its middle
  await drag([250, 200], [350, 250]);
  j = await json();
  assert.equal(j.instances.length, 1, "dragging a box does not draw a new one");
  assertBox(j.instances[0].box, [200, 150, 500, 350], "moved");

  // 3. resize by the bottom-right corner, then the left edge
  await drag([500, 350], [600, 420]);
  await drag([200, 250], [150, 250]);
  j = await json();
  assertBox(j.instances[0].box, [150, 150, 600, 420], "resized");
  const boxA = j.instances[0].box;

  // 4. a second box drawn right-to-left, bottom-to-top
  await drag([900, 200], [700, 50]);
  j = await json();
  assert.equal(j.instances.length, 2);
  assertBox(j.instances[1].box, [700, 50, 900, 200], "second");

  // 5. select the first, Delete, undo, redo, undo
  await click(300, 300);
  assert.equal(await page.evaluate(() => /** @type {any} */ (window).__refcomp.state.selected), 0);
  await page.keyboard.press("Delete");
  j = await json();
  assert.equal(j.instances.length, 1);
  assertBox(j.instances[0].box, [700, 50, 900, 200], "after delete");
  await page.keyboard.press("Control+z");
  j = await json();
  assert.equal(j.instances.length, 2);
  assert.deepEqual(j.instances[0].box, boxA, "undo restores the exact box");
  await page.keyboard.press("Control+y");
  assert.equal((await json()).instances.length, 1);
  await page.keyboard.press("Control+Shift+z");
  assert.equal((await json()).instances.length, 1, "nothing left to redo");
  await page.keyboard.press("Control+z");
  assert.equal((await json()).instances.length, 2);

  // 6. arrow nudges and duplicate on the selected box
  await click(300, 300);
  await page.keyboard.press("ArrowRight");
  await page.keyboard.press("Shift+ArrowDown");
  j = await json();
  const nudged = j.instances[0].box;
  assert.ok(Math.abs((nudged[0] - boxA[0]) * W - 1) < 1e-6, "ArrowRight moves 1 px");
  assert.ok(Math.abs((nudged[1] - boxA[1]) * H - 16) < 1e-6, "Shift+ArrowDown moves 16 px");
  await page.keyboard.press("Control+d");
  j = await json();
  assert.equal(j.instances.length, 3);
  assert.ok(Math.abs((j.instances[2].box[0] - nudged[0]) * W - 16) < 1e-6, "duplicate is offset by 16 px");

  // 7. the form edits the selected box (the duplicate)
  await page.click('input[data-field="caption"]');
  await page.keyboard.type("a red armchair");
  await page.click('input[data-field="depth"][value="fg"]');
  await page.fill('input[data-field="ref"]', "2");
  await page.press('input[data-field="ref"]', "Tab");
  await page.check('input[data-field="alpha-on"]');
  await page.fill('input[data-field="alpha"]', "0.8");
  await page.press('input[data-field="alpha"]', "Tab");
  j = await json();
  assert.deepEqual({ ...j.instances[2], box: null },
    { box: null, ref: 2, caption: "a red armchair", depth: "fg", alpha: 0.8 });
  await page.fill('input[data-field="alpha"]', "1.5");
  await page.press('input[data-field="alpha"]', "Tab");
  assert.equal((await json()).instances[2].alpha, 0.8, "out-of-range alpha is refused");
  assert.match(await page.textContent(".refcomp-panel"), /alpha must be a number in \[0, 1\]/);
  await page.fill('input[data-field="ref"]', "4");
  await page.press('input[data-field="ref"]', "Tab");
  assert.equal((await json()).instances[2].ref, 2, "a ref past the reference count is refused");
  assert.match(await page.textContent(".refcomp-panel"), /ref 4 is out of range: there are 4 references/);

  // 8. snap: a new box lands on the 16 px grid
  await page.check('input[data-field="snap"]');
  await drag([37, 400], [121, 490]);
  j = await json();
  const snapped = j.instances[3].box;
  const px = [snapped[0] * W, snapped[1] * H, snapped[2] * W, snapped[3] * H];
  for (const v of px) assert.ok(Math.abs(v / 16 - Math.round(v / 16)) < 1e-9, `snapped ${px}`);
  assertBox(snapped, [32, 400, 128, 496], "snapped");

  // 9. image size field rescales nothing in normalized terms
  const before = j.instances.map((i) => i.box);
  await page.fill('input[data-field="width"]', "2048");
  await page.press('input[data-field="width"]', "Enter");
  j = await json();
  assert.equal(j.width, 2048);
  assert.deepEqual(j.instances.map((i) => i.box), before);

  // 10. a click on empty space deselects; Escape during a drag cancels it
  await click(1000, 500);
  assert.equal(await page.evaluate(() => /** @type {any} */ (window).__refcomp.state.selected), -1);
  const n = j.instances.length;
  const a = await at(600, 30);
  const b = await at(700, 90);
  await page.mouse.move(a.x, a.y);
  await page.mouse.down();
  await page.mouse.move(b.x, b.y, { steps: 4 });
  await page.keyboard.press("Escape");
  await page.mouse.up();
  assert.equal((await json()).instances.length, n, "Escape cancels the drawing");

  assert.deepEqual(await page.evaluate(() => /** @type {any} */ (window).__refcomp.issues()), []);
  const leaked = await page.evaluate(() => /** @type {any} */ (window).__refcomp.leakedKeys());
  for (const k of ["Delete", "z", "y", "d", "ArrowRight", "ArrowDown", "Escape"]) {
    assert.ok(!leaked.includes(k), `key ${k} handled by the editor must not reach window (ComfyUI shortcuts): ${leaked}`);
  }
  assert.deepEqual(errors, []);
});

test("ComfyUI glue with a fake app and node: hidden widget carries the JSON", { timeout: 60_000 }, async (t) => {
  const opened = await openPage(t, "glue_page.html");
  if (!opened) return;
  const { page, errors } = opened;
  const value = async () => JSON.parse(await page.evaluate(() => /** @type {any} */ (window).__glue.widget("layout_json").value));

  const info = await page.evaluate(() => {
    const g = /** @type {any} */ (window).__glue;
    const dom = g.widget("layout_canvas");
    return { names: g.app.extensions.map((e) => e.name), hidden: g.widget("layout_json").hidden,
      domType: dom?.type, domSerialize: dom?.options.serialize, size: g.node.size };
  });
  assert.deepEqual(info.names, ["RefComp.LayoutCanvas"]);
  assert.equal(info.hidden, true);
  assert.equal(info.domType, "REFCOMP_CANVAS");
  assert.equal(info.domSerialize, false);
  // The node's width/height widgets win over the saved JSON; unknown keys survive.
  let j = await value();
  assert.equal(j.width, 1024);
  assert.equal(j.height, 512);
  assert.equal(j.keep, "top");
  assert.equal(j.instances[0].keep, 1);
  assert.deepEqual(j.instances[0].box, [0, 0, 0.5, 0.5]);

  // A real drag writes the new box into the hidden widget.
  const at = (x, y) => page.evaluate((p) => {
    const el = document.querySelector("canvas.refcomp-canvas");
    const r = el.getBoundingClientRect();
    // Same letterbox rule as the view (padding 8): computed here independently.
    const pad = 8, cw = el.clientWidth, ch = el.clientHeight;
    const scale = Math.min((cw - 2 * pad) / 1024, (ch - 2 * pad) / 512);
    return { x: r.left + (cw - 1024 * scale) / 2 + p.x * scale, y: r.top + (ch - 512 * scale) / 2 + p.y * scale };
  }, { x, y });
  const a = await at(600, 100);
  const b = await at(900, 400);
  await page.mouse.move(a.x, a.y);
  await page.mouse.down();
  await page.mouse.move(b.x, b.y, { steps: 5 });
  await page.mouse.up();
  j = await value();
  assert.equal(j.instances.length, 2);
  assertBox(j.instances[1].box, [600, 100, 900, 400], "glue drawn");

  // Node width widget -> layout size; panel size field -> node widgets.
  await page.evaluate(() => {
    const w = /** @type {any} */ (window).__glue.widget("width");
    w.value = 2048;
    w.callback?.(2048);
  });
  assert.equal((await value()).width, 2048);
  await page.fill('input[data-field="height"]', "768");
  await page.press('input[data-field="height"]', "Enter");
  assert.equal(await page.evaluate(() => /** @type {any} */ (window).__glue.widget("height").value), 768);
  assert.equal((await value()).height, 768);

  // ComfyUI's undo history: one capture (a before/after pair) per finished edit, none while dragging
  const captures = await page.evaluate(() => /** @type {any} */ (window).__glue.app.canvas);
  assert.ok(captures.after >= 2 && captures.after === captures.before, JSON.stringify(captures));
  const c0 = captures.after;
  await page.mouse.move(a.x, a.y + 10);
  await page.mouse.down();
  await page.mouse.move(b.x, b.y, { steps: 8 });
  await page.mouse.up();
  assert.equal(await page.evaluate(() => /** @type {any} */ (window).__glue.app.canvas.after), c0 + 1, "a drag is one step");

  // the DOM widget keeps the node's width whatever a properties panel writes into widget.width
  assert.equal(await page.evaluate(() => {
    const w = /** @type {any} */ (window).__glue.widget("layout_canvas");
    w.width = 258;
    return w.width;
  }), undefined);

  // num_refs is the reference count (no references connected); 0 means unknown
  const issues = () => page.evaluate(() => /** @type {any} */ (window).__glue.node.widgets.find((w) => w.name === "layout_canvas")
    .element.querySelector(".refcomp-error").textContent);
  await page.evaluate(() => {
    const g = /** @type {any} */ (window).__glue;
    g.widget("layout_json").value = JSON.stringify({ version: 1, width: 1024, height: 512,
      instances: [{ box: [0, 0, 0.5, 0.5], ref: 2, caption: "", depth: null, alpha: null }] });
    g.node.onConfigure?.({});
  });
  assert.equal(await issues(), "", "num_refs 3: ref 2 is fine from the first frame");
  const setNumRefs = (n) => page.evaluate((n) => {
    const w = /** @type {any} */ (window).__glue.widget("num_refs");
    w.value = n;
    w.callback?.(n);
  }, n);
  await setNumRefs(2);
  assert.match(await issues(), /ref 2 is out of range: there are 2 references/);
  await setNumRefs(0);
  assert.equal(await issues(), "", "num_refs 0 = unknown: no range check");

  // a connected reference set with an IMAGE batch: count unknown until the node runs; its run
  // output gives the thumbnails and the count
  await setNumRefs(1);
  await page.evaluate(() => {
    const g = /** @type {any} */ (window).__glue;
    g.node.inputs[0].link = 5;
    g.node.onConnectionsChange?.();
  });
  assert.equal(await issues(), "", "connected references win over num_refs; unknown until run");
  await page.evaluate(() => /** @type {any} */ (window).__glue.node.onExecuted({ refcomp_references: [
    { filename: "a.png", subfolder: "refcomp", type: "temp" }, { filename: "b.png", subfolder: "refcomp", type: "temp" }] }));
  assert.match(await issues(), /ref 2 is out of range: there are 2 references/);

  // InstanceAssemble JSON set from outside (e.g. the properties panel) is converted and written back as v1
  const ia = { width: 300, height: 200, prompt: "p", annos: [{ bbox: [0, 0, 150, 100], category_name: "cup", caption: "" }] };
  const written = await page.evaluate((ia) => {
    const g = /** @type {any} */ (window).__glue;
    g.widget("layout_json").value = JSON.stringify(ia);
    g.widget("layout_json").callback?.(JSON.stringify(ia));
    return JSON.parse(g.widget("layout_json").value);
  }, ia);
  assert.deepEqual(written, { version: 1, width: 300, height: 200, prompt: "p",
    instances: [{ box: [0, 0, 0.5, 0.5], ref: null, caption: "cup", depth: null, alpha: null }] });
  assert.deepEqual(await page.evaluate(() => [/** @type {any} */ (window).__glue.widget("width").value,
    /** @type {any} */ (window).__glue.widget("height").value]), [300, 200]);

  // onConfigure (workflow load) reloads from the widget; onRemoved tears down.
  const after = await page.evaluate(() => {
    const g = /** @type {any} */ (window).__glue;
    g.widget("layout_json").value = JSON.stringify({ version: 1, width: 2048, height: 768, instances: [] });
    g.node.onConfigure?.({});
    const boxes = g.widget("layout_canvas").options.getValue();
    g.node.onRemoved?.();
    return { boxes: JSON.parse(boxes).instances.length, canvases: document.querySelectorAll("canvas.refcomp-canvas").length };
  });
  assert.deepEqual(after, { boxes: 0, canvases: 0 });
  assert.deepEqual(errors, []);
});

test("editor: keyboard focus only on inputs, draw mode, Shift-draw, click cycling, imports, bigger editor", { timeout: 120_000 }, async (t) => {
  const opened = await openPage(t, "canvas_page.html");
  if (!opened) return;
  const { page, errors } = opened;
  const { json, at, drag, click } = canvasPage(page);
  const selected = () => page.evaluate(() => /** @type {any} */ (window).__refcomp.state.selected);
  const focusTag = () => page.evaluate(() => document.activeElement?.tagName);

  await drag([50, 50], [1000, 480]); // a background box over nearly everything
  assert.equal(await focusTag(), "INPUT", "the canvas gives focus to its key sink input");
  await drag([300, 100], [400, 200]);
  assert.equal((await json()).instances.length, 1, "a plain drag on a box moves it");
  await page.keyboard.press("Control+z");
  await drag([300, 100], [400, 200], ["Shift"]);
  assert.equal((await json()).instances.length, 2, "Shift+drag draws over a box");
  await page.keyboard.press("b");
  assert.equal(await page.getAttribute('[data-action="draw-mode"]', "aria-pressed"), "true", "B toggles draw mode");
  await drag([600, 100], [700, 200]);
  assert.equal((await json()).instances.length, 3, "draw mode: a drag on a box draws");
  await page.click('[data-action="draw-mode"]');
  assert.equal(await focusTag(), "INPUT", "toolbar buttons are inputs");
  await page.keyboard.press("Control+z");
  assert.equal((await json()).instances.length, 2, "Ctrl+Z on a toolbar button undoes in the canvas");

  // click cycling at a point under box 1 and box 0
  await page.keyboard.press("Escape");
  const seq = [];
  for (let k = 0; k < 3; k++) { await click(350, 150); await page.waitForTimeout(250); seq.push(await selected()); }
  assert.deepEqual(seq, [1, 0, 1]);
  await page.click('input[data-field="depth"][value="bg"]');
  assert.equal(await focusTag(), "INPUT", "depth choices are inputs");
  assert.equal((await json()).instances[1].depth, "bg");

  // tooltip and list
  const p = await at(350, 150);
  await page.keyboard.press("Escape");
  await page.mouse.move(p.x, p.y);
  await page.mouse.move(p.x + 2, p.y + 1);
  assert.match(await page.textContent(".refcomp-tooltip"), /#1 · bg/);
  await page.click('[data-action="list"]');
  assert.deepEqual(await page.$$eval(".refcomp-list [data-index]", (rows) => rows.map((r) => r.dataset.index)), ["1", "0"]);

  // paste an InstanceAssemble layout with a real Ctrl+V in the canvas: it replaces the layout
  const ia = readFileSync(new URL("../fixtures/instanceassemble/dense_example.json", import.meta.url), "utf8");
  const v1 = JSON.parse(readFileSync(new URL("../fixtures/instanceassemble/dense_example.v1.json", import.meta.url), "utf8"));
  await page.evaluate((text) => navigator.clipboard.writeText(text), ia);
  await click(900, 480);
  await page.keyboard.press("Control+v");
  await page.waitForTimeout(100);
  let j = await json();
  assert.deepEqual([j.width, j.height, j.prompt], [1500, 1000, v1.prompt]);
  assert.deepEqual(j.instances.map((i) => i.caption), v1.instances.map((i) => i.caption));
  j.instances.forEach((inst, i) => inst.box.forEach((v, k) => assert.ok(Math.abs(v - v1.instances[i].box[k]) < 1e-9)));
  await page.keyboard.press("Control+z");
  assert.equal((await json()).instances.length, 2, "the import is one undo step");
  // "open" reads a file: BOUNDING_BOXES add boxes
  await page.setInputFiles('[data-action="import-file"]', { name: "boxes.json", mimeType: "application/json",
    buffer: Buffer.from(JSON.stringify([{ x: 10, y: 10, width: 100, height: 60, metadata: "a cup" }])) });
  await page.waitForFunction(() => /** @type {any} */ (window).__refcomp.state.instances.length === 3);
  assert.equal((await json()).instances[2].caption, "a cup");
  // a .json file dropped on the canvas is imported too
  const dt = await page.evaluateHandle(() => {
    const d = new DataTransfer();
    d.items.add(new File([JSON.stringify([{ x: 500, y: 300, width: 80, height: 80, metadata: "a plate" }])], "b.json",
      { type: "application/json" }));
    return d;
  });
  await page.dispatchEvent("canvas.refcomp-canvas", "drop", { dataTransfer: dt });
  await page.waitForFunction(() => /** @type {any} */ (window).__refcomp.state.instances.length === 4);
  assert.equal((await json()).instances[3].caption, "a plate");
  await page.keyboard.press("Control+z");
  await page.evaluate(() => navigator.clipboard.writeText("{ not json"));
  await click(900, 480);
  await page.keyboard.press("Control+v");
  assert.equal((await json()).instances.length, 3, "a bad paste changes nothing");

  // the bigger editor holds the same editor; Escape closes it
  await page.click('[data-action="expand"]');
  assert.equal(await page.$$eval(".refcomp-modal canvas.refcomp-canvas", (c) => c.length), 1);
  await drag([400, 300], [500, 420], ["Shift"]);
  assert.equal((await json()).instances.length, 4, "drawing works in the bigger editor");
  await page.keyboard.press("Escape");
  await page.keyboard.press("Escape");
  assert.equal(await page.$$eval(".refcomp-modal", (m) => m.length), 0);
  assert.equal(await page.$$eval("#host canvas.refcomp-canvas", (c) => c.length), 1, "the editor is back in place");
  assert.deepEqual(errors, []);
});
