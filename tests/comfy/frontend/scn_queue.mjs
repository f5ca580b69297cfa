// A box drawn with the mouse travels in the API prompt; Layout Canvas -> Layout Preview ->
// PreviewImage executes on the server and the history holds the same layout.
import { addCanvasNode, drag } from "./lib.mjs";

export default async function (page) {
  const posted = [];
  page.on("request", (r) => {
    if (r.method() === "POST" && /\/prompt$/.test(new URL(r.url()).pathname)) posted.push(r.postData());
  });
  const id = await addCanvasNode(page);
  await page.evaluate((id) => {
    const { app, LiteGraph } = window;
    const canvas = app.graph.getNodeById(id);
    const preview = LiteGraph.createNode("RefCompLayoutPreview");
    preview.pos = [760, 40];
    app.graph.add(preview);
    const out = LiteGraph.createNode("PreviewImage");
    out.pos = [1060, 40];
    app.graph.add(out);
    canvas.connect(0, preview, preview.inputs.findIndex((i) => i.name === "layout"));
    preview.connect(0, out, 0);
  }, id);
  await drag(page, id, [300, 300], [620, 660]);
  const details = {};
  details.apiLayout = await page.evaluate(async (id) => (await window.app.graphToPrompt()).output[String(id)]?.inputs?.layout_json ?? null, id);
  await page.evaluate(() => window.app.queuePrompt(0, 1));
  for (let i = 0; i < 100 && posted.length === 0; i++) await page.waitForTimeout(100);
  details.postedLayout = posted.length ? JSON.parse(posted[0]).prompt?.[String(id)]?.inputs?.layout_json ?? null : null;
  let history = null;
  for (let i = 0; i < 160; i++) {
    const h = await page.evaluate(async () => (await fetch("/api/history?max_items=5")).json());
    const entries = Object.values(h);
    if (entries.length && entries[0].status?.completed !== undefined) { history = entries[0]; break; }
    await page.waitForTimeout(250);
  }
  details.executed = history?.status ?? null;
  details.historyLayout = history?.prompt?.[2]?.[String(id)]?.inputs?.layout_json ?? null;
  return details;
}
