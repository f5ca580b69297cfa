// Issue 11.1: Ctrl+Z inside the canvas undoes only the canvas's last edit (ComfyUI's workflow
// undo must not run: it reloads the graph and loses the caption, depth and move), focus stays
// in the editor, and each canvas edit is one step of ComfyUI's own undo history.
import { Checks } from "./checks.mjs";
import { addCanvasNode, clickEmptyGraph, drag, editorSel, setField, widgetLayout } from "./lib.mjs";

const W = 1024;
const norm = (b) => b.map((v) => v / W);
const close = (a, b, tol = 0.006) => a.length === b.length && a.every((v, i) => Math.abs(v - b[i]) <= tol);

export default async function (page) {
  const c = new Checks();
  const id = await addCanvasNode(page, { size: [560, 760] });
  const root = editorSel(id);
  await page.evaluate((id) => { window.__refcompNode = window.app.graph.getNodeById(id); }, id);

  await drag(page, id, [200, 200], [500, 500]);
  await page.click(`${root} input[data-field="caption"]`);
  await page.keyboard.type("a red chair");
  await setField(page, id, "depth", "fg");
  await drag(page, id, [350, 350], [450, 420]);
  let layout = await widgetLayout(page, id);
  c.check("the move happened", close(layout.instances[0].box, norm([300, 270, 600, 570])), layout.instances[0].box);

  await page.keyboard.press("Control+z");
  await page.waitForTimeout(800);
  const same = await page.evaluate((id) => window.app.graph.getNodeById(id) === window.__refcompNode, id);
  c.check("ComfyUI did not reload the graph", same);
  layout = await widgetLayout(page, id);
  const inst = layout.instances[0] ?? {};
  c.check("caption kept", inst.caption === "a red chair", inst);
  c.check("depth kept", inst.depth === "fg", inst);
  c.check("only the move is undone", layout.instances.length === 1 && close(inst.box, norm([200, 200, 500, 500])), layout);
  const focus = await page.evaluate((sel) => Boolean(document.activeElement?.closest(sel)), root);
  c.check("focus stays in the editor", focus);

  // Each canvas edit is one step of ComfyUI's undo (Ctrl+Z with the graph focused).
  await drag(page, id, [600, 100], [900, 300]);
  c.check("second box drawn", (await widgetLayout(page, id)).instances.length === 2);
  await clickEmptyGraph(page);
  await page.keyboard.press("Control+z");
  await page.waitForTimeout(1200);
  layout = await widgetLayout(page, id);
  c.check("ComfyUI undo removes exactly the last canvas edit", layout.instances.length === 1
    && layout.instances[0].caption === "a red chair" && close(layout.instances[0].box, norm([200, 200, 500, 500])), layout);
  await page.keyboard.press("Control+y");
  await page.waitForTimeout(1200);
  layout = await widgetLayout(page, id);
  c.check("ComfyUI redo brings it back", layout.instances.length === 2, layout);
  const shown = await page.evaluate((id) => {
    const node = window.app.graph.getNodeById(id);
    return JSON.parse(node.widgets.find((w) => w.name === "layout_canvas").options.getValue()).instances.length;
  }, id);
  c.check("the editor follows ComfyUI's undo/redo", shown === 2, shown);
  return c.done();
}
