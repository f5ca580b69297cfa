// InstanceAssemble JSON pasted into the canvas with a real Ctrl+V becomes the layout (the
// fixture's layout v1, the node's width/height follow) and ComfyUI does not paste anything
// into the graph; the bigger editor edits the same layout and closes with Escape.
import { Checks } from "./checks.mjs";
import { addCanvasNode, clickImage, drag, editorSel, readJson, widgetLayout } from "./lib.mjs";

export default async function (page) {
  const c = new Checks();
  const ia = await readJson("tests/fixtures/instanceassemble/dense_example.json");
  const v1 = await readJson("tests/fixtures/instanceassemble/dense_example.v1.json");
  const id = await addCanvasNode(page, { size: [600, 780] });
  const root = editorSel(id);
  const nodes = () => page.evaluate(() => window.app.graph.nodes.length);
  const before = await nodes();
  await page.evaluate((text) => navigator.clipboard.writeText(text), JSON.stringify(ia));
  await clickImage(page, id, 900, 900);
  await page.keyboard.press("Control+v");
  await page.waitForTimeout(600);
  const layout = await widgetLayout(page, id);
  c.check("size and prompt from the InstanceAssemble JSON", layout.width === 1500 && layout.height === 1000 && layout.prompt === ia.prompt,
    { w: layout.width, h: layout.height, prompt: layout.prompt });
  c.check("captions as the rule says", JSON.stringify(layout.instances.map((i) => i.caption)) === JSON.stringify(v1.instances.map((i) => i.caption)),
    layout.instances.map((i) => i.caption));
  c.check("boxes as the fixture", layout.instances.every((inst, i) => inst.box.every((v, k) => Math.abs(v - v1.instances[i].box[k]) < 1e-9)));
  const widgets = await page.evaluate((id) => ["width", "height"].map((n) => window.app.graph.getNodeById(id).widgets.find((w) => w.name === n).value), id);
  c.check("the node's width/height widgets follow", widgets.join() === "1500,1000", widgets);
  c.check("ComfyUI pasted nothing into the graph", (await nodes()) === before, { before, after: await nodes() });

  await page.click(`${root} [data-action="expand"]`);
  c.check("the bigger editor opens", (await page.$$(".refcomp-modal canvas.refcomp-canvas")).length === 1);
  await page.click(".refcomp-modal [data-action=\"draw-mode\"]");
  const box = await page.evaluate(() => document.querySelector(".refcomp-modal canvas.refcomp-canvas").getBoundingClientRect().toJSON());
  await page.mouse.move(box.x + box.width * 0.5, box.y + box.height * 0.5);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.6, box.y + box.height * 0.62, { steps: 5 });
  await page.mouse.up();
  await page.keyboard.press("Escape"); // deselects
  await page.keyboard.press("Escape"); // closes
  await page.waitForTimeout(300);
  c.check("Escape closes it", (await page.$$(".refcomp-modal")).length === 0);
  c.check("the box drawn there is in the node's layout", (await widgetLayout(page, id)).instances.length === 7);
  c.check("the editor is back in the node", (await page.$$(`${root} canvas.refcomp-canvas`)).length === 1);
  return c.done();
}
