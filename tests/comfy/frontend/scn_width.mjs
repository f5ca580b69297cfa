// Issue 11.3: the editor keeps the node's width under selection with the properties panel open,
// under zoom, and follows the node when it is resized.
import { Checks } from "./checks.mjs";
import { addCanvasNode, clickEmptyGraph, editorSel, nodeToClient } from "./lib.mjs";

const width = (page, id) => page.evaluate((sel) => document.querySelector(sel).getBoundingClientRect().width, editorSel(id));
const near = (a, b, tol = 3) => Math.abs(a - b) <= tol;

export default async function (page) {
  const c = new Checks();
  const id = await addCanvasNode(page, { pos: [200, 120], size: [560, 720] });
  const w0 = await width(page, id);
  c.check("editor spans the node", w0 > 500, w0);
  const panel = 'button[aria-label="Toggle properties panel"]';
  await page.click(panel);
  await page.waitForTimeout(500);
  const title = await nodeToClient(page, id, 200, -15);
  await page.mouse.click(title.x, title.y);
  await page.waitForTimeout(700);
  const selected = await page.evaluate((id) => Boolean(window.app.canvas.selected_nodes?.[id]), id);
  c.check("node selected", selected);
  const w1 = await width(page, id);
  c.check("width kept when selected with the properties panel open", near(w1, w0), { w0, w1 });
  await clickEmptyGraph(page);
  await page.waitForTimeout(500);
  const w2 = await width(page, id);
  c.check("width kept after deselecting", near(w2, w0), { w0, w2 });
  await page.click(panel);
  await page.waitForTimeout(300);

  // zoom: the editor scales with the graph (its CSS width / scale stays the node's)
  await page.evaluate(() => { window.app.canvas.ds.changeScale(1.3, [300, 300]); window.app.graph.setDirtyCanvas(true, true); });
  await page.waitForTimeout(500);
  const scale = await page.evaluate(() => window.app.canvas.ds.scale);
  const w3 = await width(page, id);
  c.check("width follows zoom", near(w3 / scale, w0, 4), { w0, w3, scale });
  await page.evaluate(() => { window.app.canvas.ds.scale = 1; window.app.canvas.ds.offset = [0, 0]; window.app.graph.setDirtyCanvas(true, true); });
  await page.waitForTimeout(400);

  // resize by dragging the node's bottom-right corner with the mouse
  const size = await page.evaluate((id) => [...window.app.graph.getNodeById(id).size], id);
  const corner = await nodeToClient(page, id, size[0] - 3, size[1] - 3);
  await page.mouse.move(corner.x, corner.y);
  await page.mouse.down();
  await page.mouse.move(corner.x + 120, corner.y + 40, { steps: 8 });
  await page.mouse.up();
  await page.waitForTimeout(500);
  const size2 = await page.evaluate((id) => [...window.app.graph.getNodeById(id).size], id);
  const w4 = await width(page, id);
  c.check("node resized by the corner", size2[0] > size[0] + 60, { size, size2 });
  c.check("editor follows the node width", near(w4 - w0, size2[0] - size[0], 4), { w0, w4, size, size2 });
  const wrapped = await page.evaluate((sel) => {
    const bar = document.querySelector(`${sel} .refcomp-toolbar`) ?? document.querySelector(`${sel} .refcomp-panel > div`);
    return bar ? bar.getBoundingClientRect().height : null;
  }, editorSel(id));
  c.check("toolbar is one row at this width", wrapped !== null && wrapped < 40, wrapped);
  return c.done({ w0, w1, w2, w3, w4 });
}
