// A box drawn with the mouse travels in the API prompt; Layout Canvas -> Layout Preview ->
// PreviewImage executes on the server and the history of that prompt holds the same layout.
import { buildCanvasGraph, drag, queueAndWait } from "./lib.mjs";

export default async function (page) {
  const id = await buildCanvasGraph(page, { preview: true });
  await drag(page, id, [300, 300], [620, 660]);
  const details = { id };
  details.apiLayout = await page.evaluate(async (id) => (await window.app.graphToPrompt()).output[String(id)]?.inputs?.layout_json ?? null, id);
  const { posted, history } = await queueAndWait(page);
  details.postedLayout = posted.prompt?.[String(id)]?.inputs?.layout_json ?? null;
  details.executed = history?.status ?? null;
  details.historyLayout = history?.prompt?.[2]?.[String(id)]?.inputs?.layout_json ?? null;
  return details;
}
