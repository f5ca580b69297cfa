// Unit tests for web/comfy_refs.js: where a Layout Canvas node's reference count and thumbnails
// come from, with stand-in ComfyUI nodes and API. Run: node --test tests/web/
import test from "node:test";
import assert from "node:assert/strict";

import { ReferenceTracker, referenceSource } from "../../web/comfy_refs.js";

/** A canvas node whose `references` input can be linked to a Load Reference Set stand-in. */
function setup({ folder = "shelf", batch = false, numRefs = 0, listing = null, status = 200 } = {}) {
  const loader = { id: 3, type: "RefCompLoadReferenceSet", inputs: [{ name: "images", link: batch ? 8 : null }],
    widgets: [{ name: "folder", value: folder }] };
  const graph = { links: new Map([[5, { origin_id: 3 }]]), getNodeById: (id) => (id === 3 ? loader : null) };
  const node = { graph, inputs: [{ name: "references", link: null }], widgets: [{ name: "num_refs", value: numRefs }] };
  const calls = [];
  const api = {
    apiURL: (r) => `/api${r}`,
    fetchApi: async (route) => {
      calls.push(route);
      return { ok: status === 200, status, json: async () => (status === 200 ? listing : { error: "folder 'shelf' does not exist" }) };
    },
  };
  const counts = [];
  const state = { setRefCount: (n) => counts.push(n) };
  const shown = [];
  const images = { current: [], set(s) { this.current = s; shown.push(s); }, same(s) { return JSON.stringify(s) === JSON.stringify(this.current); } };
  const warnings = [];
  const tracker = new ReferenceTracker(node, state, images, api, (m) => warnings.push(m));
  return { loader, node, tracker, calls, counts, images, shown, warnings, last: () => counts.at(-1) };
}

const settle = () => new Promise((ok) => setTimeout(ok, 0));

test("no references connected: num_refs is the count, 0 means unknown", () => {
  const t = setup({ numRefs: 0 });
  t.tracker.update();
  assert.equal(t.last(), null);
  t.node.widgets[0].value = 3;
  t.tracker.update();
  assert.equal(t.last(), 3);
  assert.equal(referenceSource(t.node), null);
  assert.deepEqual(t.calls, []);
});

test("a Load Reference Set folder is listed once; its count wins over num_refs", async () => {
  const t = setup({ numRefs: 9, listing: { names: ["a.png", "b.png"], urls: ["/refcomp/thumbnail?name=a.png", "/refcomp/thumbnail?name=b.png"] } });
  t.node.inputs[0].link = 5;
  t.tracker.update();
  assert.equal(t.last(), null, "unknown while the listing loads: no false error");
  await settle();
  assert.equal(t.last(), 2);
  assert.deepEqual(t.images.current, [{ url: "/api/refcomp/thumbnail?name=a.png", name: "a.png" },
    { url: "/api/refcomp/thumbnail?name=b.png", name: "b.png" }]);
  t.tracker.update();
  t.tracker.update();
  assert.deepEqual(t.calls, ["/refcomp/references?folder=shelf"], "listed once while nothing changes");
  t.loader.widgets[0].value = "other";
  t.tracker.update();
  await settle();
  assert.equal(t.calls.length, 2, "a new folder is listed again");
});

test("an IMAGE batch: unknown until the node runs; the run's thumbnails hold until the source changes", () => {
  const t = setup({ batch: true });
  t.node.inputs[0].link = 5;
  t.tracker.update();
  assert.equal(t.last(), null);
  assert.deepEqual(t.calls, [], "a folder after a batch has unknown indices: not listed");
  t.tracker.executed({ refcomp_references: [{ filename: "r0.png", subfolder: "refcomp", type: "temp" },
    { filename: "r1.png", subfolder: "refcomp", type: "temp" }, { filename: "r2.png", subfolder: "refcomp", type: "temp" }] });
  assert.equal(t.last(), 3);
  assert.equal(t.images.current[1].url, "/api/view?filename=r1.png&subfolder=refcomp&type=temp");
  t.tracker.update();
  assert.equal(t.last(), 3);
  t.loader.inputs[0].link = null; // the batch is unplugged: back to the folder listing
  t.tracker.update();
  assert.equal(t.last(), null);
  assert.deepEqual(t.images.current, []);
});

test("a missing folder is reported and leaves the count unknown", async () => {
  const t = setup({ status: 404 });
  t.node.inputs[0].link = 5;
  t.tracker.update();
  await settle();
  assert.equal(t.last(), null);
  assert.match(t.warnings[0], /References: folder 'shelf' does not exist/);
});
