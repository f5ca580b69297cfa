// Unit tests for web/layout_codec.js: layout v1 JSON <-> image-px instances. Run: node --test tests/web/
import test from "node:test";
import assert from "node:assert/strict";

import { instancesFromBoundingBoxes, layoutToJSON, parseLayout } from "../../web/layout_codec.js";
import { LayoutError } from "../../web/layout_validate.js";

const FALLBACK = { width: 1024, height: 768 };

test("parse then serialize is exact and keeps unknown keys where they were", () => {
  const doc = { version: 1, width: 640, height: 480, instances: [
    { box: [0.1, 0.2, 0.55, 0.95], ref: 2, caption: "a red star", depth: "fg", alpha: 0.7, mine: { k: [1] } },
  ], note: "kept" };
  const parsed = parseLayout(JSON.stringify(doc), FALLBACK);
  assert.deepEqual(parsed.instances[0].rect, { x0: 64, y0: 96, x1: 352, y1: 456 });
  assert.equal(JSON.stringify(layoutToJSON(parsed)), JSON.stringify(doc));
  parsed.instances[0].extra.mine.k.push(2);                        // the parsed copy is not the input
  assert.deepEqual(doc.instances[0].mine.k, [1]);
});

test("blank input is an empty layout at the fallback size", () => {
  for (const blank of ["", "  ", null, undefined]) {
    assert.deepEqual(parseLayout(blank, FALLBACK), { width: 1024, height: 768, instances: [], extra: {} });
  }
});

test("bad input names the field", () => {
  const field = (json) => { try { parseLayout(json, FALLBACK); } catch (e) { assert.ok(e instanceof LayoutError); return e.field; } };
  assert.equal(field("{"), "layout");
  assert.equal(field({ version: 2, instances: [] }), "version");
  assert.equal(field({ version: 1, instances: {} }), "instances");
  assert.equal(field({ version: 1, instances: [{ box: [0, 0, 1] }] }), "box");
  assert.equal(field({ version: 1, instances: [7] }), "instance");
});

test("BOUNDING_BOXES become fitted instances with captions and depths from metadata", () => {
  const got = instancesFromBoundingBoxes({ __value__: [
    { x: -10, y: 20, width: 100, height: 50, metadata: { label: "cat", depth: "bg" } },
    { x: 5, y: 5, width: 10, height: 10, metadata: "dog" },
  ] }, { width: 512, height: 512, minSize: 16, snap: false, grid: 16 });
  assert.equal(got[0].caption, "cat");
  assert.equal(got[0].depth, "bg");
  assert.deepEqual(got[0].extra.metadata, { label: "cat", depth: "bg" });
  assert.ok(got[0].rect.x0 >= 0);                                   // fitted into the image
  assert.equal(got[1].caption, "dog");
  assert.throws(() => instancesFromBoundingBoxes([{ x: 1 }], FALLBACK), /bounding box 0 needs numeric/);
});
