// Issue 11.2: the example workflows load with no false validation error, and num_refs changes
// reach the validation and the box form's reference range.
import { Checks } from "./checks.mjs";
import { clickImage, editorSel, loadWorkflow, panelText, readWorkflow } from "./lib.mjs";

/** How many references the form's ref control offers (select options or number input max). */
async function refRange(page, id) {
  return page.evaluate((sel) => {
    const el = document.querySelector(`${sel} [data-field="ref"]`);
    if (!el) return null;
    if (el.tagName === "SELECT") return el.options.length - 1;
    return el.max === "" ? null : Number(el.max) + 1;
  }, editorSel(id));
}

/** Set the node's num_refs widget the way its number widget does. */
async function setNumRefs(page, id, n) {
  await page.evaluate(({ id, n }) => {
    const node = window.app.graph.getNodeById(id);
    const w = node.widgets.find((w) => w.name === "num_refs");
    w.value = n;
    w.callback?.(n, window.app.canvas, node);
    node.setDirtyCanvas(true, true);
  }, { id, n });
  await page.waitForTimeout(400);
}

export default async function (page) {
  const c = new Checks();
  for (const [file, refs] of [["refcomp_few_references_flux_dev.json", 3], ["refcomp_shelf_22_references_flux_dev.json", 22]]) {
    const id = await loadWorkflow(page, await readWorkflow(file));
    const first = await panelText(page, id);
    c.check(`${file}: no error on load`, !/out of range|need fixing/.test(first), first);
    await page.waitForTimeout(600);
    const later = await panelText(page, id);
    c.check(`${file}: no error after the first frames`, !/out of range|need fixing/.test(later), later);
    // select the box with ref 1 and look at the form
    const layout = JSON.parse(await page.evaluate((id) => window.app.graph.getNodeById(id).widgets[0].value, id));
    const i = layout.instances.findIndex((b) => b.ref === 1);
    const [x0, y0, x1, y1] = layout.instances[i].box;
    await clickImage(page, id, ((x0 + x1) / 2) * layout.width, ((y0 + y1) / 2) * layout.height);
    c.check(`${file}: the form offers ${refs} references`, (await refRange(page, id)) === refs, await refRange(page, id));
    // without a connected reference set, num_refs is the count (as in the node's Python)
    await page.evaluate((id) => {
      const node = window.app.graph.getNodeById(id);
      node.disconnectInput(node.inputs.findIndex((inp) => inp.name === "references"));
    }, id);
    await setNumRefs(page, id, 1);
    const text = await panelText(page, id);
    c.check(`${file}: num_refs 1 makes ref 1 out of range`, /ref 1 is out of range: there are 1 references/.test(text)
      || /ref 2 is out of range: there are 1 references/.test(text), text);
    c.check(`${file}: the form follows num_refs`, (await refRange(page, id)) === 1, await refRange(page, id));
    await setNumRefs(page, id, refs);
    const back = await panelText(page, id);
    c.check(`${file}: num_refs back to ${refs} clears it`, !/out of range/.test(back), back);
  }
  return c.done();
}
