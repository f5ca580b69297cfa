// Issue 11.4: a new box can start anywhere (draw mode from the toolbar, or Shift+drag), a drag
// from the padding draws instead of resizing the full-canvas background box, and repeated
// clicks cycle the selection through the boxes under the pointer.
import { Checks } from "./checks.mjs";
import { clickImage, drag, editorSel, imageToClient, loadWorkflow, readWorkflow, widgetLayout } from "./lib.mjs";

/** Indices of the boxes covering image point (x, y), bottom to top. */
const under = (layout, x, y) => layout.instances.map((b, i) => [b.box, i]).filter(([[x0, y0, x1, y1]]) =>
  x >= x0 * layout.width && x <= x1 * layout.width && y >= y0 * layout.height && y <= y1 * layout.height).map(([, i]) => i);

/** A point covered by exactly `n` boxes whose bottom one is instance 0, away from edges. */
function spot(layout, n) {
  for (let y = 40; y < layout.height - 40; y += 8) {
    for (let x = 40; x < layout.width - 40; x += 8) {
      const ids = under(layout, x, y);
      const clear = [-28, 28].every((d) => under(layout, x + d, y).join() === ids.join() && under(layout, x, y + d).join() === ids.join());
      if (ids.length === n && ids[0] === 0 && clear) return { x, y, ids };
    }
  }
  throw new Error(`no spot under ${n} boxes`);
}

const selected = (page, id) => page.evaluate((sel) => {
  const t = document.querySelector(sel)?.textContent ?? "";
  const m = /box #(\d+)/.exec(t);
  return m ? Number(m[1]) : -1;
}, `${editorSel(id)} .refcomp-panel`);

export default async function (page) {
  const c = new Checks();
  const id = await loadWorkflow(page, await readWorkflow("refcomp_shelf_22_references_flux_dev.json"));
  const start = await widgetLayout(page, id);
  const n0 = start.instances.length;
  const bgBox = JSON.stringify(start.instances[0].box);
  const bgOnly = spot(start, 1);
  const onProduct = spot(start, 2);

  // 1. from the padding: a drag that starts left of the image draws a new box
  const a = await imageToClient(page, id, 0, bgOnly.y);
  const b = await imageToClient(page, id, 200, bgOnly.y + 150);
  await page.mouse.move(a.x - 4, a.y);
  await page.mouse.down();
  await page.mouse.move(b.x, b.y, { steps: 6 });
  await page.mouse.up();
  let layout = await widgetLayout(page, id);
  c.check("drag from the padding draws a box", layout.instances.length === n0 + 1, layout.instances.length);
  c.check("... and leaves the background box alone", JSON.stringify(layout.instances[0].box) === bgBox, layout.instances[0].box);
  await page.keyboard.press("Control+z");

  // 2. Shift+drag on top of a product box draws a new box over it
  const product = onProduct.ids[1];
  const productBox = JSON.stringify(start.instances[product].box);
  await drag(page, id, [onProduct.x, onProduct.y], [onProduct.x + 120, onProduct.y + 90], { modifiers: ["Shift"] });
  layout = await widgetLayout(page, id);
  c.check("Shift+drag on a box draws a new one", layout.instances.length === n0 + 1, layout.instances.length);
  c.check("... and leaves that box alone", JSON.stringify(layout.instances[product]?.box) === productBox);
  await page.keyboard.press("Control+z");

  // 3. draw mode from the toolbar: a plain drag on the background box draws
  const toggle = await page.$(`${editorSel(id)} [data-action="draw-mode"]`);
  c.check("the toolbar has a draw-mode toggle", Boolean(toggle));
  if (toggle) {
    await toggle.click();
    await drag(page, id, [bgOnly.x, bgOnly.y], [bgOnly.x + 100, bgOnly.y + 80]);
    layout = await widgetLayout(page, id);
    c.check("draw mode: a drag on the background draws", layout.instances.length === n0 + 1, layout.instances.length);
    c.check("draw mode: the background stays", JSON.stringify(layout.instances[0].box) === bgBox);
    await toggle.click();
    await page.keyboard.press("Control+z");
  }

  // 4. repeated clicks cycle through the boxes under the pointer (top first)
  await page.keyboard.press("Escape");
  const seq = [];
  for (let k = 0; k < 3; k++) {
    await clickImage(page, id, onProduct.x, onProduct.y);
    await page.waitForTimeout(250); // not a double click
    seq.push(await selected(page, id));
  }
  c.check("repeated clicks cycle top -> below -> top", JSON.stringify(seq) === JSON.stringify([product, 0, product]), seq);
  layout = await widgetLayout(page, id);
  c.check("nothing moved while cycling", JSON.stringify(layout.instances) === JSON.stringify(start.instances));
  return c.done({ seq });
}
