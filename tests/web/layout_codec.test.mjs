// Unit tests for web/layout_codec.js: layout v1 JSON <-> image-px instances. Run: node --test tests/web/
import test from "node:test";
import assert from "node:assert/strict";

import { readFileSync } from "node:fs";

import {
  instancesFromBoundingBoxes, layoutFromInstanceAssemble, layoutToJSON, parseLayout, readImport,
} from "../../web/layout_codec.js";
import { LayoutState } from "../../web/layout_state.js";
import { LayoutError, validateLayout } from "../../web/layout_validate.js";

const fixture = (name) => JSON.parse(readFileSync(new URL(`../fixtures/instanceassemble/${name}`, import.meta.url), "utf8"));

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

test("InstanceAssemble import gives exactly the fixture's layout v1", () => {
  const doc = fixture("dense_example.json");
  const want = fixture("dense_example.v1.json");
  assert.deepEqual(layoutFromInstanceAssemble(doc), want);
  // the fixture covers what the rule is about
  assert.ok(doc.annos.some((a) => a.caption === ""), "an anno with an empty caption");
  assert.ok(doc.annos.some((a) => a.category_name === ""), "an anno with an empty category_name");
  assert.ok(doc.annos.some((a) => a.bbox[2] > doc.width || a.bbox[0] < 0), "a bbox past the image edge");
  assert.ok(doc.width % 16 !== 0, "a width that is not a multiple of 16");
  assert.deepEqual(validateLayout(want), []);
  // parseLayout and the editor read it the same way; serializing is within float noise of the fixture
  const s = LayoutState.fromJSON(doc);
  const got = s.toJSON();
  assert.equal(got.prompt, doc.prompt);
  assert.deepEqual(got.instances.map((i) => i.caption), want.instances.map((i) => i.caption));
  got.instances.forEach((inst, i) => inst.box.forEach((v, k) => assert.ok(Math.abs(v - want.instances[i].box[k]) < 1e-9)));
  assert.deepEqual([got.width, got.height], [1500, 1000]);
});

test("InstanceAssemble import: malformed documents name the field", () => {
  const base = { width: 100, height: 50, annos: [{ bbox: [0, 0, 10, 10], category_name: "a", caption: "b" }] };
  const bad = (patch, match) => assert.throws(() => layoutFromInstanceAssemble({ ...base, ...patch }),
    (e) => e instanceof LayoutError && match.test(e.message), JSON.stringify(patch));
  bad({ annos: undefined }, /annos must be a list/);
  bad({ annos: {} }, /annos must be a list/);
  bad({ width: 0 }, /width must be a positive integer/);
  bad({ height: 12.5 }, /height must be a positive integer/);
  bad({ annos: [{ bbox: [0, 0, 10] }] }, /annos\[0\]\.bbox must be four finite numbers/);
  bad({ annos: [{ bbox: [0, 0, 10, NaN] }] }, /annos\[0\]\.bbox must be four finite numbers/);
  bad({ annos: [base.annos[0], { bbox: [5, 0, 5, 10] }] }, /annos\[1\]\.bbox is empty: need x2 > x1/);
  bad({ annos: [{ bbox: [0, 9, 4, 3] }] }, /annos\[0\]\.bbox is empty/);
  bad({ annos: [{ bbox: [0, 0, 1, 1], category_name: 3 }] }, /annos\[0\]\.category_name must be a string/);
  bad({ annos: [{ bbox: [0, 0, 1, 1], caption: ["x"] }] }, /annos\[0\]\.caption must be a string/);
  bad({ annos: [null] }, /annos\[0\] must be an object/);
  // captions: name only, caption only, both
  const caps = layoutFromInstanceAssemble({ width: 10, height: 10, annos: [
    { bbox: [0, 0, 1, 1], category_name: "cat", caption: null },
    { bbox: [0, 0, 1, 1], category_name: "", caption: "a cat" },
    { bbox: [0, 0, 1, 1], category_name: "cat" },
    { bbox: [0, 0, 1, 1] },
  ] }).instances.map((i) => i.caption);
  assert.deepEqual(caps, ["cat", "a cat", "cat", ""]);
  assert.equal("prompt" in layoutFromInstanceAssemble({ width: 10, height: 10, annos: [] }), false);
});

test("readImport tells layouts, InstanceAssemble and BOUNDING_BOXES apart", () => {
  assert.equal(readImport(JSON.stringify({ version: 1, instances: [] })).kind, "layout");
  assert.equal(readImport(JSON.stringify(fixture("dense_example.json"))).kind, "instanceassemble");
  assert.equal(readImport("[]").kind, "bounding_boxes");
  assert.equal(readImport(JSON.stringify({ __value__: [] })).kind, "bounding_boxes");
  assert.throws(() => readImport("{oops"), /not JSON/);
  assert.throws(() => readImport('{"a": 1}'), /expected a layout v1/);
  const s = new LayoutState({ width: 200, height: 100 });
  assert.deepEqual(s.importText(JSON.stringify(fixture("dense_example.json"))), { kind: "instanceassemble", count: 6 });
  assert.deepEqual([s.width, s.height], [1500, 1000]);
  assert.deepEqual(s.importText(JSON.stringify([{ x: 0, y: 0, width: 300, height: 200, metadata: "box" }])),
    { kind: "bounding_boxes", count: 1 });
  assert.equal(s.instances.length, 7);
  s.undo();
  s.undo();
  assert.deepEqual([s.width, s.height, s.instances.length], [200, 100, 0], "each import is one undo step");
});
