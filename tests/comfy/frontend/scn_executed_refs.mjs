// References from an IMAGE batch are known only after a run: the canvas node's UI output then
// gives their thumbnails, and the box shows the batch image (screenshot pixels).
import { Checks } from "./checks.mjs";
import { buildCanvasGraph, drag, editorSel, imageToClient, meanColor, panelText, queueAndWait, setField, widgetLayout } from "./lib.mjs";

const near = (a, b, tol = 14) => a.every((v, k) => Math.abs(v - b[k]) <= tol);

export default async function (page, ctx) {
  const c = new Checks();
  const { image, color } = ctx.batch;
  const id = await buildCanvasGraph(page, { batchImage: image, preview: true });
  const root = editorSel(id);
  await drag(page, id, [200, 200], [700, 700]);
  await setField(page, id, "ref", 0);
  c.check("ref 0 accepted before the run (count unknown)", (await widgetLayout(page, id)).instances[0]?.ref === 0);
  c.check("no strip before the run", await page.evaluate((sel) => document.querySelectorAll(`${sel} .refcomp-strip figure`).length === 0, root));

  const { history } = await queueAndWait(page);
  c.check("the run succeeded", history?.status?.status_str === "success", history?.status);
  await page.waitForFunction((sel) => document.querySelectorAll(`${sel} .refcomp-strip figure`).length === 1, root, { timeout: 60_000 });
  await page.keyboard.press("Escape");
  await page.mouse.click(5, 500);
  await page.waitForTimeout(800);
  const p = await imageToClient(page, id, 450, 450);
  const got = await meanColor(page, p.x - 3, p.y - 3, 6, 6);
  c.check("the box shows the batch image after the run", near(got, color), { got, want: color });
  await setField(page, id, "ref", 1);
  c.check("the run's count checks refs: 1 is out of range", /ref 1 is out of range: there are 1 references/.test(await panelText(page, id)),
    await panelText(page, id));
  return c.done();
}
