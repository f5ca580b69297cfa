// Issue 11.5: each box shows its reference image (pixels of a screenshot), the full caption on
// hover, a list of the boxes, a hint on an empty canvas, and form fields that look disabled.
import { Checks } from "./checks.mjs";
import { buildCanvasGraph, drag, editorSel, imageToClient, meanColor, panelText, setField, widgetLayout } from "./lib.mjs";

const LONG = "a tall glass bottle of olive oil with a green paper label, a cork stopper and a small brass chain around the neck";
const near = (a, b, tol = 14) => a.every((v, k) => Math.abs(v - b[k]) <= tol);

export default async function (page, ctx) {
  const c = new Checks();
  const { folder, colors } = ctx.refs;
  const id = await buildCanvasGraph(page, { folder });
  const root = editorSel(id);

  const hint = await page.evaluate((sel) => {
    const h = document.querySelector(`${sel} .refcomp-hint`);
    return h && h.offsetParent !== null ? h.textContent : null;
  }, root);
  c.check("an empty canvas shows how to draw", Boolean(hint && /drag/i.test(hint)), hint);
  const disabled = await page.evaluate((sel) => {
    const el = document.querySelector(`${sel} [data-field="caption"]`);
    return { disabled: el.disabled, opacity: Number(getComputedStyle(el).opacity) };
  }, root);
  c.check("form fields look disabled with no box", disabled.disabled && disabled.opacity < 0.7, disabled);

  await drag(page, id, [100, 100], [400, 400]);
  await setField(page, id, "ref", 2);
  await drag(page, id, [600, 500], [900, 900]);
  await setField(page, id, "ref", 0);
  await page.click(`${root} input[data-field="caption"]`);
  await page.keyboard.type(LONG);
  await page.keyboard.press("Enter");
  const layout = await widgetLayout(page, id);
  c.check("refs set", layout.instances.map((i) => i.ref).join() === "2,0", layout.instances.map((i) => i.ref));
  await page.mouse.click(5, 500); // outside the editor: nothing selected in it is highlighted by focus
  await page.evaluate((sel) => document.querySelector(`${sel} canvas.refcomp-canvas`)?.dispatchEvent(new Event("refcomp-redraw")), root);
  await page.waitForTimeout(1500); // thumbnails load

  for (const [k, box, ref] of [[0, [100, 100, 400, 400], 2], [1, [600, 500, 900, 900], 0]]) {
    const p = await imageToClient(page, id, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2);
    const got = await meanColor(page, p.x - 3, p.y - 3, 6, 6);
    c.check(`box ${k} shows reference ${ref}'s pixels`, near(got, colors[ref]), { got, want: colors[ref] });
  }

  const p = await imageToClient(page, id, 750, 700);
  await page.mouse.move(p.x, p.y);
  await page.mouse.move(p.x + 3, p.y + 2, { steps: 2 });
  await page.waitForTimeout(700);
  const tip = await page.evaluate((sel) => {
    const t = document.querySelector(`${sel} .refcomp-tooltip`) ?? document.querySelector(".refcomp-tooltip");
    return t && t.offsetParent !== null ? t.textContent : null;
  }, root);
  c.check("hover shows the full caption", Boolean(tip?.includes(LONG)), tip);

  const toggle = await page.$(`${root} [data-action="list"]`);
  if (toggle && !(await page.$(`${root} .refcomp-list [data-index]`))) await toggle.click();
  const rows = await page.evaluate((sel) => Object.fromEntries([...document.querySelectorAll(`${sel} .refcomp-list [data-index]`)]
    .map((r) => [r.dataset.index, r.textContent])), root);
  c.check("the box list has a row per box", Object.keys(rows).length === 2, rows);
  c.check("a row shows ref and caption", Boolean(rows[1]?.includes("ref 0") && rows[1]?.includes(LONG.slice(0, 20))), rows[1]);
  // the list selects and reorders: a click on box #0's row selects it, its ▲ brings it to the front
  await page.click(`${root} .refcomp-list [data-index="0"]`);
  c.check("a click on a row selects its box", /box #0/.test(await panelText(page, id)), await panelText(page, id));
  await page.click(`${root} .refcomp-list [data-index="0"] [data-action="forward"]`);
  const after = await widgetLayout(page, id);
  c.check("▲ brings the box forward", after.instances.map((i) => i.ref).join() === "0,2", after.instances.map((i) => i.ref));
  await page.keyboard.press("Control+z");
  c.check("Ctrl+Z after using the list undoes in the canvas",
    (await widgetLayout(page, id)).instances.map((i) => i.ref).join() === "2,0");
  return c.done({ hint, rows });
}
