// Issue 11 "done when": a user builds a 22-box shelf layout from scratch in the real frontend
// (a background box, then 22 product boxes drawn over it in draw mode, each given its
// reference from the strip or the ref field), sees every reference in its box (screenshot
// pixels), loses no edit to Ctrl+Z/Ctrl+Y, and the canvas runs on the server.
import { Checks } from "./checks.mjs";
import { buildCanvasGraph, drag, editorSel, imageToClient, meanColor, panelText, queueAndWait, widgetLayout } from "./lib.mjs";

const W = 1344;
const H = 1024;
const near = (a, b, tol = 14) => a.every((v, k) => Math.abs(v - b[k]) <= tol);

/** Cell r of a 6-column shelf grid, image px. */
function cell(r) {
  const col = r % 6;
  const row = Math.floor(r / 6);
  const x0 = 40 + col * 210;
  const y0 = 40 + row * 245;
  return [x0, y0, x0 + 170, y0 + 205];
}

export default async function (page, ctx) {
  const c = new Checks();
  const { folder, colors } = ctx.shelf;
  const id = await buildCanvasGraph(page, { folder, size: [760, 880], preview: true });
  const root = editorSel(id);
  await page.fill(`${root} input[data-field="width"]`, String(W));
  await page.press(`${root} input[data-field="width"]`, "Enter");
  await page.fill(`${root} input[data-field="height"]`, String(H));
  await page.press(`${root} input[data-field="height"]`, "Enter");
  await page.waitForFunction((sel) => document.querySelectorAll(`${sel} .refcomp-strip figure`).length === 22, root, { timeout: 10_000 });

  await drag(page, id, [0, 0], [W, H]);
  await page.click(`${root} input[data-field="caption"]`);
  await page.keyboard.type("a wooden shop shelf, front view");
  await page.click(`${root} input[data-field="depth"][value="bg"]`);
  await page.click(`${root} [data-action="draw-mode"]`);
  for (let r = 0; r < 22; r++) {
    const [x0, y0, x1, y1] = cell(r);
    await drag(page, id, [x0, y0], [x1, y1], { steps: 3 });
    if (r % 2 === 0) {
      await page.click(`${root} .refcomp-strip figure[data-ref="${r}"]`);
    } else {
      await page.fill(`${root} input[data-field="ref"]`, String(r));
      await page.press(`${root} input[data-field="ref"]`, "Tab");
    }
    await page.click(`${root} input[data-field="depth"][value="${r % 3 === 0 ? "fg" : "mg"}"]`);
  }
  await page.click(`${root} [data-action="draw-mode"]`);
  let layout = await widgetLayout(page, id);
  c.check("23 boxes", layout.instances.length === 23, layout.instances.length);
  c.check("refs 0..21 in order", layout.instances.slice(1).map((i) => i.ref).join() === [...Array(22).keys()].join(),
    layout.instances.map((i) => i.ref));
  c.check("background kept its caption and depth", layout.instances[0].caption === "a wooden shop shelf, front view"
    && layout.instances[0].depth === "bg" && layout.instances[0].box.every((v, k) => Math.abs(v - [0, 0, 1, 1][k]) < 1e-4),
  layout.instances[0]);
  c.check("no validation error", !/out of range|instance \d+,/.test(await panelText(page, id)), await panelText(page, id));

  // the last edit was a depth click: Ctrl+Z there undoes only that, Ctrl+Y redoes it; no reload
  await page.keyboard.press("Control+z");
  await page.waitForTimeout(400);
  layout = await widgetLayout(page, id);
  c.check("Ctrl+Z undid only the last depth", layout.instances.length === 23 && layout.instances[22].depth === null, layout.instances[22]);
  await page.keyboard.press("Control+y");
  await page.waitForTimeout(400);
  layout = await widgetLayout(page, id);
  c.check("Ctrl+Y redid it", layout.instances[22].depth === "fg", layout.instances[22]); // ref 21: 21 % 3 === 0
  c.check("the graph was never reloaded", await page.evaluate((id) => window.app.graph.getNodeById(id) === window.__refcompNode, id));

  await page.keyboard.press("Escape");
  await page.mouse.click(5, 500);
  await page.waitForTimeout(800);
  const wrong = [];
  for (let r = 0; r < 22; r++) {
    const [x0, y0, x1, y1] = cell(r);
    const p = await imageToClient(page, id, (x0 + x1) / 2, (y0 + y1) / 2 + 20);
    const got = await meanColor(page, p.x - 2, p.y - 2, 4, 4);
    if (!near(got, colors[r])) wrong.push({ r, got, want: colors[r] });
  }
  c.check("every box shows its reference", wrong.length === 0, wrong);

  const status = (await queueAndWait(page)).history?.status ?? null;
  c.check("the layout runs on the server", status?.status_str === "success", status);
  return c.done();
}
