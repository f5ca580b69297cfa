// Unit tests for web/layout_state.js (DOM-free). Run: node --test tests/web/
import test from "node:test";
import assert from "node:assert/strict";

import {
  LayoutState, LayoutError, TOKEN_PX, validateLayout, formatIssues, fitView, screenToImage, imageToScreen,
  rectFromDrag, rectPart, resizeRect, moveRect, snapValue,
} from "../../web/layout_state.js";

const B = { width: 1024, height: 1024, minSize: 16, snap: false, grid: 16 };
const near = (a, b, eps = 1e-9) => assert.ok(Math.abs(a - b) <= eps, `${a} !≈ ${b}`);
const rectOf = (s, i = s.selected) => s.instances[i].rect;

/** A state with one box [100,100]-[300,200] selected. */
function oneBox(opts) {
  const s = new LayoutState(opts);
  s.addBox({ x: 100, y: 100 }, { x: 300, y: 200 });
  return s;
}

test("round trip keeps boxes, fields and unknown keys", () => {
  const src = {
    version: 1, width: 1024, height: 768, project: { tag: "x" },
    instances: [
      { box: [0.1, 0.55, 0.45, 0.95], ref: 0, caption: "a red armchair", depth: "fg", alpha: null, note: [1, 2] },
      { box: [0.5, 0.1, 0.9, 0.4], ref: null, caption: "sky", depth: "bg", alpha: 0.25 },
    ],
  };
  const s = LayoutState.fromJSON(JSON.stringify(src));
  assert.equal(s.instances.length, 2);
  near(rectOf(s, 0).x0, 0.1 * 1024);
  near(rectOf(s, 0).y1, 0.95 * 768);
  const out = JSON.parse(s.serialize());
  assert.deepEqual(out, src);
  assert.deepEqual(s.validate(), []);
});

test("blank input gives an empty layout; bad input throws LayoutError", () => {
  const s = LayoutState.fromJSON("", { width: 512, height: 256 });
  assert.deepEqual(s.toJSON(), { version: 1, width: 512, height: 256, instances: [] });
  assert.throws(() => LayoutState.fromJSON("{nope"), LayoutError);
  assert.throws(() => LayoutState.fromJSON({ version: 2, instances: [] }), (e) => e instanceof LayoutError && e.field === "version");
  assert.throws(() => LayoutState.fromJSON({ version: 1, instances: [{ box: [0, 0, NaN, 1] }] }),
    (e) => e.index === 0 && e.field === "box");
  assert.throws(() => LayoutState.fromJSON({ version: 1, instances: {} }), LayoutError);
});

test("addBox normalizes a drag in any direction", () => {
  const s = new LayoutState();
  const i = s.addBox({ x: 300, y: 400 }, { x: 100, y: 50 });
  assert.equal(i, 0);
  assert.equal(s.selected, 0);
  assert.deepEqual(rectOf(s), { x0: 100, y0: 50, x1: 300, y1: 400 });
  const box = s.toJSON().instances[0].box;
  assert.ok(box[0] < box[2] && box[1] < box[3]);
});

test("addBox enforces one token and clamps to the image", () => {
  const s = new LayoutState({ width: 512, height: 512 });
  s.addBox({ x: 10, y: 10 }, { x: 12, y: 11 });
  assert.deepEqual(rectOf(s), { x0: 10, y0: 10, x1: 26, y1: 26 });
  s.addBox({ x: 505, y: 508 }, { x: 600, y: 700 }); // starts near the corner, drags out
  assert.deepEqual(rectOf(s), { x0: 496, y0: 496, x1: 512, y1: 512 });
  s.addBox({ x: 50, y: 50 }, { x: 45, y: 48 }); // tiny drag up-left grows up-left
  assert.deepEqual(rectOf(s), { x0: 34, y0: 34, x1: 50, y1: 50 });
  assert.deepEqual(s.validate(), []);
});

test("snap puts drawn, moved and resized edges on the 16 px grid", () => {
  const s = new LayoutState({ snap: true });
  s.addBox({ x: 21, y: 30 }, { x: 90, y: 101 });
  assert.deepEqual(rectOf(s), { x0: 16, y0: 32, x1: 96, y1: 96 });
  s.beginGesture("move", { x: 50, y: 50 }, { index: 0 });
  s.updateGesture({ x: 57, y: 61 });
  s.endGesture();
  assert.deepEqual(rectOf(s), { x0: 16, y0: 48, x1: 96, y1: 112 });
  s.resize(0, "e", 27, 0);
  assert.equal(rectOf(s).x1, 128);
  assert.equal(snapValue(23), 16);
  assert.equal(snapValue(24), 32);
});

test("pressTarget: handles only on the selected box; selected box wins; else topmost or draw", () => {
  const s = new LayoutState();
  s.addBox({ x: 100, y: 100 }, { x: 300, y: 300 });
  s.addBox({ x: 200, y: 200 }, { x: 400, y: 400 });
  s.select(-1);
  assert.deepEqual(s.pressTarget({ x: 250, y: 250 }, 6), { kind: "move", index: 1, fresh: true });
  assert.deepEqual(s.pressTarget({ x: 150, y: 150 }, 6), { kind: "move", index: 0, fresh: true });
  // an unselected box's edge is not a handle: the press moves it (inside) or draws (outside)
  assert.deepEqual(s.pressTarget({ x: 102, y: 98 }, 6), { kind: "draw" });
  assert.deepEqual(s.pressTarget({ x: 600, y: 600 }, 6), { kind: "draw" });
  s.select(1);
  assert.deepEqual(s.pressTarget({ x: 400, y: 300 }, 6), { kind: "resize", index: 1, handle: "e" });
  assert.deepEqual(s.pressTarget({ x: 300, y: 404 }, 6), { kind: "resize", index: 1, handle: "s" });
  assert.deepEqual(s.pressTarget({ x: 398, y: 403 }, 6), { kind: "resize", index: 1, handle: "se" });
  // the selected box's handles and interior win over a box on top of it
  s.select(0);
  assert.deepEqual(s.pressTarget({ x: 300, y: 250 }, 6), { kind: "resize", index: 0, handle: "e" });
  assert.deepEqual(s.pressTarget({ x: 250, y: 250 }, 6), { kind: "move", index: 0, fresh: false });
  // draw mode, Shift and the padding start a new box anywhere (the selected box's handles still win)
  assert.deepEqual(s.pressTarget({ x: 250, y: 250 }, 6, { shift: true }), { kind: "draw" });
  s.setDrawMode(true);
  assert.deepEqual(s.pressTarget({ x: 150, y: 150 }, 6), { kind: "draw" });
  s.setDrawMode(false);
  assert.deepEqual(s.pressTarget({ x: 98, y: 150 }, 6, { inImage: false }), { kind: "resize", index: 0, handle: "w" });
  s.select(-1);
  assert.deepEqual(s.pressTarget({ x: 98, y: 150 }, 6, { inImage: false }), { kind: "draw" });
});

test("repeated clicks cycle the selection through the boxes under the pointer", () => {
  const s = new LayoutState();
  s.addBox({ x: 0, y: 0 }, { x: 1024, y: 1024 });
  s.addBox({ x: 100, y: 100 }, { x: 300, y: 300 });
  s.addBox({ x: 200, y: 200 }, { x: 400, y: 400 });
  s.select(-1);
  assert.deepEqual(s.boxesAt({ x: 250, y: 250 }), [2, 1, 0]);
  assert.deepEqual([1, 2, 3, 4].map(() => s.cycleSelect({ x: 250, y: 250 })), [2, 1, 0, 2]);
  assert.equal(s.cycleSelect({ x: 150, y: 150 }), 1, "the selected box is not under the pointer: topmost");
  s.select(0);
  assert.equal(s.cycleSelect({ x: 600, y: 600 }), 0, "only one box there");
  s.load({ version: 1, width: 64, height: 64, instances: [] });
  assert.equal(s.cycleSelect({ x: 6, y: 6 }), -1);
});

test("small boxes can still be grabbed in the middle", () => {
  assert.equal(rectPart({ x0: 0, y0: 0, x1: 16, y1: 16 }, { x: 8, y: 8 }, 10), "inside");
  assert.equal(rectPart({ x0: 0, y0: 0, x1: 16, y1: 16 }, { x: 1, y: 8 }, 10), "w");
});

test("move gesture keeps size and stays inside the image", () => {
  const s = oneBox();
  s.beginGesture("move", { x: 150, y: 150 }, { index: 0 });
  s.updateGesture({ x: 200, y: 170 });
  assert.deepEqual(rectOf(s), { x0: 150, y0: 120, x1: 350, y1: 220 });
  s.updateGesture({ x: 5000, y: -5000 });
  assert.deepEqual(rectOf(s), { x0: 824, y0: 0, x1: 1024, y1: 100 });
  assert.equal(s.endGesture(), true);
  assert.equal(s.undo(), true, "whole gesture is one undo step");
  assert.deepEqual(rectOf(s, 0), { x0: 100, y0: 100, x1: 300, y1: 200 });
});

test("a click without movement records no undo step", () => {
  const s = oneBox();
  const depth = s._undo.length;
  s.beginGesture("move", { x: 150, y: 150 }, { index: 0 });
  s.updateGesture({ x: 150, y: 150 });
  assert.equal(s.endGesture(), false);
  assert.equal(s._undo.length, depth);
});

test("resize by every handle; never below one token, never outside", () => {
  const r = { x0: 100, y0: 100, x1: 300, y1: 200 };
  assert.deepEqual(resizeRect(r, "se", 50, 20, B), { x0: 100, y0: 100, x1: 350, y1: 220 });
  assert.deepEqual(resizeRect(r, "nw", -50, -20, B), { x0: 50, y0: 80, x1: 300, y1: 200 });
  assert.deepEqual(resizeRect(r, "n", 99, 99, B), { x0: 100, y0: 184, x1: 300, y1: 200 });
  assert.deepEqual(resizeRect(r, "w", 500, 0, B), { x0: 284, y0: 100, x1: 300, y1: 200 });
  assert.deepEqual(resizeRect(r, "ne", 5000, -5000, B), { x0: 100, y0: 0, x1: 1024, y1: 200 });
  assert.deepEqual(resizeRect(r, "sw", -5000, 5000, B), { x0: 0, y0: 100, x1: 300, y1: 1024 });
  assert.deepEqual(resizeRect(r, "e", -1000, 0, B), { x0: 100, y0: 100, x1: 116, y1: 200 });
  assert.deepEqual(resizeRect(r, "s", 0, -1000, B), { x0: 100, y0: 100, x1: 300, y1: 116 });
  const s = oneBox();
  s.beginGesture("resize", { x: 300, y: 200 }, { index: 0, handle: "se" });
  s.updateGesture({ x: 0, y: 0 });
  s.endGesture();
  assert.deepEqual(rectOf(s), { x0: 100, y0: 100, x1: 116, y1: 116 });
});

test("moveRect clamps and keeps size", () => {
  assert.deepEqual(moveRect({ x0: 0, y0: 0, x1: 20, y1: 30 }, -5, 2000, B), { x0: 0, y0: 994, x1: 20, y1: 1024 });
});

test("delete, duplicate and their selection", () => {
  const s = oneBox();
  s.setField(0, "caption", "chair");
  s.instances[0].extra.custom = { k: 1 };
  const j = s.duplicate(0);
  assert.equal(j, 1);
  assert.equal(s.selected, 1);
  assert.deepEqual(rectOf(s, 1), { x0: 116, y0: 116, x1: 316, y1: 216 });
  assert.equal(s.instances[1].caption, "chair");
  assert.deepEqual(s.instances[1].extra, { custom: { k: 1 } });
  s.instances[1].extra.custom.k = 2;
  assert.equal(s.instances[0].extra.custom.k, 1, "duplicate is a deep copy");
  s.remove(1);
  assert.equal(s.instances.length, 1);
  assert.equal(s.selected, -1);
  // A box in the bottom-right corner duplicates up-left instead.
  s.addBox({ x: 1000, y: 1000 }, { x: 1024, y: 1024 });
  s.duplicate(1);
  assert.deepEqual(rectOf(s, 2), { x0: 984, y0: 984, x1: 1008, y1: 1008 });
});

test("reorder: forward, backward, front, back; selection follows", () => {
  const s = new LayoutState();
  for (const c of ["a", "b", "c", "d"]) {
    const i = s.addBox({ x: 0, y: 0 }, { x: 100, y: 100 });
    s.setField(i, "caption", c);
  }
  const order = () => s.instances.map((x) => x.caption).join("");
  s.select(0);
  assert.equal(s.bringForward(0), 1);
  assert.equal(order(), "bacd");
  assert.equal(s.selected, 1);
  assert.equal(s.bringToFront(1), 3);
  assert.equal(order(), "bcda");
  assert.equal(s.sendBackward(3), 2);
  assert.equal(order(), "bcad");
  assert.equal(s.sendToBack(2), 0);
  assert.equal(order(), "abcd");
  assert.equal(s.sendToBack(0), 0);
  assert.equal(s.selected, 0);
  // Topmost for hit testing is the last one.
  s.select(-1);
  assert.equal(s.boxesAt({ x: 50, y: 50 })[0], 3);
});

test("arrow nudge: 1 px, 16 px with shift, clamped", () => {
  const s = oneBox();
  assert.equal(s.nudge("ArrowRight"), true);
  assert.equal(rectOf(s).x0, 101);
  s.nudge("ArrowDown", true);
  assert.equal(rectOf(s).y0, 116);
  s.nudge("ArrowLeft", true);
  s.nudge("ArrowUp");
  assert.deepEqual(rectOf(s), { x0: 85, y0: 115, x1: 285, y1: 215 });
  for (let k = 0; k < 20; k++) s.nudge("ArrowUp", true);
  assert.equal(rectOf(s).y0, 0);
  assert.equal(s.nudge("KeyA"), false);
  s.select(-1);
  assert.equal(s.nudge("ArrowUp"), false);
});

test("setSize keeps normalized boxes, so they scale", () => {
  const s = oneBox();
  const before = s.toJSON().instances[0].box;
  s.setSize(2048, 512);
  assert.deepEqual(rectOf(s), { x0: 200, y0: 50, x1: 600, y1: 100 });
  assert.deepEqual(s.toJSON().instances[0].box, before);
  assert.equal(s.toJSON().width, 2048);
  assert.throws(() => s.setSize(0, 10), LayoutError);
  assert.throws(() => s.setSize(10.5, 10), LayoutError);
  s.undo();
  assert.equal(s.width, 1024);
});

test("per-box fields validate and report index and field", () => {
  const s = oneBox({ refCount: 3 });
  s.setField(0, "ref", 2);
  s.setField(0, "depth", "mg");
  s.setField(0, "alpha", 0.7);
  s.setField(0, "alpha", null);
  s.setField(0, "caption", "a lamp");
  assert.deepEqual(s.toJSON().instances[0], { box: s.toJSON().instances[0].box, ref: 2, caption: "a lamp", depth: "mg", alpha: null });
  for (const [field, bad] of [["ref", 3], ["ref", -1], ["ref", 1.5], ["ref", "0"], ["depth", "far"], ["alpha", 1.5],
    ["alpha", -0.1], ["alpha", NaN], ["caption", 5]]) {
    assert.throws(() => s.setField(0, /** @type {any} */ (field), bad),
      (e) => e instanceof LayoutError && e.index === 0 && e.field === field, `${field}=${bad}`);
  }
  assert.throws(() => s.setField(5, "ref", 0), LayoutError);
  assert.throws(() => s.setField(0, /** @type {any} */ ("box"), 0), LayoutError);
});

test("undo/redo: full cycle, redo cleared by a new edit, bounded history", () => {
  const s = new LayoutState({ historyLimit: 3 });
  assert.equal(s.undo(), false);
  s.addBox({ x: 0, y: 0 }, { x: 50, y: 50 });
  s.addBox({ x: 100, y: 100 }, { x: 150, y: 150 });
  s.remove(0);
  assert.equal(s.instances.length, 1);
  s.undo();
  assert.equal(s.instances.length, 2);
  s.undo();
  assert.equal(s.instances.length, 1);
  assert.equal(s.redo(), true);
  assert.equal(s.instances.length, 2);
  s.moveBy(0, 5, 5);
  assert.equal(s.canRedo, false);
  for (let k = 0; k < 10; k++) s.moveBy(0, 1, 0);
  let n = 0;
  while (s.undo()) n++;
  assert.equal(n, 3);
});

test("typing in one field coalesces into one undo step", () => {
  const s = oneBox();
  for (const t of ["a", "a ", "a c", "a ca", "a cat"]) s.setField(0, "caption", t);
  s.undo();
  assert.equal(s.instances[0].caption, "");
  s.redo();
  assert.equal(s.instances[0].caption, "a cat");
});

test("cancelGesture restores the state before the drag", () => {
  const s = new LayoutState();
  s.beginGesture("draw", { x: 10, y: 10 });
  s.updateGesture({ x: 200, y: 200 });
  assert.equal(s.instances.length, 1);
  s.cancelGesture();
  assert.equal(s.instances.length, 0);
  assert.equal(s.canUndo, false);
});

test("draw gesture creates one box and respects maxInstances", () => {
  const s = new LayoutState({ maxInstances: 2 });
  const reasons = [];
  s.subscribe((r) => reasons.push(r));
  for (let k = 0; k < 3; k++) {
    s.beginGesture("draw", { x: 10, y: 10 });
    s.updateGesture({ x: 100, y: 60 });
    s.updateGesture({ x: 120, y: 80 });
    s.endGesture();
  }
  assert.equal(s.instances.length, 2);
  assert.deepEqual(rectOf(s, 1), { x0: 10, y0: 10, x1: 120, y1: 80 });
  assert.ok(reasons.includes("limit"));
  assert.equal(s.addBox({ x: 0, y: 0 }, { x: 50, y: 50 }), -1);
  assert.equal(s.duplicate(0), -1);
  s.undo();
  assert.equal(s.instances.length, 1);
});

test("subscribe/unsubscribe", () => {
  const s = new LayoutState();
  let n = 0;
  const off = s.subscribe(() => n++);
  s.addBox({ x: 0, y: 0 }, { x: 50, y: 50 });
  off();
  s.addBox({ x: 0, y: 0 }, { x: 50, y: 50 });
  assert.equal(n, 1);
});

test("import ComfyUI BOUNDING_BOXES (pixels, wrapped or not)", () => {
  const s = new LayoutState({ width: 1000, height: 500, maxInstances: 3 });
  const n = s.importBoundingBoxes({ __value__: [
    { x: 100, y: 50, width: 400, height: 200, metadata: { label: "dog", depth: "fg", id: 7 } },
    { x: 900, y: 400, width: 300, height: 300, metadata: "tree" },
    { x: 0, y: 0, width: 4, height: 4 },
    { x: 10, y: 10, width: 50, height: 50 },
  ] });
  assert.equal(n, 3);
  const j = s.toJSON();
  assert.deepEqual(j.instances[0], { box: [0.1, 0.1, 0.5, 0.5], ref: null, caption: "dog", depth: "fg", alpha: null,
    metadata: { label: "dog", depth: "fg", id: 7 } });
  assert.deepEqual(j.instances[1].box, [0.9, 0.8, 1, 1]);
  assert.equal(j.instances[1].caption, "tree");
  assert.deepEqual(j.instances[2].box, [0, 0, 0.016, 0.032]);
  assert.deepEqual(s.validate(), []);
  s.undo();
  assert.equal(s.instances.length, 0);
  s.importBoundingBoxes([{ x: 1, y: 1, width: 20, height: 20 }]);
  s.importBoundingBoxes([{ x: 2, y: 2, width: 30, height: 30 }], { replace: true });
  assert.equal(s.instances.length, 1);
  assert.throws(() => s.importBoundingBoxes([{ x: "1", y: 0, width: 1, height: 1 }]), LayoutError);
  assert.throws(() => s.importBoundingBoxes(null), LayoutError);
});

test("screen <-> image transforms with a letterboxed view", () => {
  const v = fitView(800, 400, 1024, 1024, 10);
  assert.deepEqual(v, { x: 210, y: 10, width: 380, height: 380 });
  const img = screenToImage({ x: 210 + 190, y: 10 + 95 }, v, 1024, 1024);
  assert.deepEqual(img, { x: 512, y: 256 });
  assert.deepEqual(imageToScreen(img, v, 1024, 1024), { x: 400, y: 105 });
  const w = fitView(400, 400, 2048, 1024);
  assert.deepEqual(w, { x: 0, y: 100, width: 400, height: 200 });
  const p = screenToImage(imageToScreen({ x: 123, y: 456 }, w, 2048, 1024), w, 2048, 1024);
  near(p.x, 123, 1e-9);
  near(p.y, 456, 1e-9);
});

test("rectFromDrag handles images smaller than a token", () => {
  const r = rectFromDrag({ x: 2, y: 2 }, { x: 3, y: 3 }, { ...B, width: 10, height: 40 });
  assert.deepEqual(r, { x0: 0, y0: 2, x1: 10, y1: 18 });
});

test("validateLayout mirrors the Python rules", () => {
  const ok = { version: 1, width: 1024, height: 1024, instances: [{ box: [0, 0, 0.5, 0.5], ref: 0, caption: "x", depth: "fg", alpha: 0.5, extra: 1 }] };
  assert.deepEqual(validateLayout(ok), []);
  const cases = [
    [{ ...ok, version: 2 }, null, "version"],
    [{ ...ok, width: 0 }, null, "width"],
    [{ ...ok, instances: "x" }, null, "instances"],
    [{ ...ok, instances: [{ box: [0, 0, NaN, 1] }] }, 0, "box"],
    [{ ...ok, instances: [{ box: [0, 0, 1.2, 1] }] }, 0, "box"],
    [{ ...ok, instances: [{ box: [0.5, 0, 0.5, 1] }] }, 0, "box"],
    [{ ...ok, instances: [{ box: [0, 0, 0.01, 1] }] }, 0, "box"],
    [{ ...ok, instances: [{ box: [0, 0, 1] }] }, 0, "box"],
    [{ ...ok, instances: [ok.instances[0], { box: [0, 0, 1, 1], depth: "near" }] }, 1, "depth"],
    [{ ...ok, instances: [{ box: [0, 0, 1, 1], alpha: 2 }] }, 0, "alpha"],
    [{ ...ok, instances: [{ box: [0, 0, 1, 1], ref: -1 }] }, 0, "ref"],
    [{ ...ok, instances: [5] }, 0, "instance"],
    [[], null, "layout"],
  ];
  for (const [layout, index, field] of cases) {
    const issues = validateLayout(layout);
    assert.ok(issues.some((i) => i.index === index && i.field === field), `${JSON.stringify(layout)} -> ${JSON.stringify(issues)}`);
  }
  assert.deepEqual(validateLayout(ok, { refCount: 1 }), []);
  assert.equal(validateLayout(ok, { refCount: 0 })[0].field, "ref");
  const many = { ...ok, instances: Array.from({ length: 51 }, () => ok.instances[0]) };
  assert.equal(validateLayout(many)[0].field, "instances");
  assert.deepEqual(validateLayout(many, { maxInstances: 60 }), []);
  // Exactly one token passes despite float noise.
  assert.deepEqual(validateLayout({ ...ok, width: 1000, height: 1000, instances: [{ box: [0.1, 0.1, 0.116, 0.116] }] }), []);
  assert.match(formatIssues(validateLayout({ ...ok, instances: [{ box: [0, 0, 1, 1], alpha: 2 }] }))[0], /^instance 0, alpha: /);
});

test("a loaded layout with problems loads and validate() reports them", () => {
  const s = LayoutState.fromJSON({ version: 1, width: 64, height: 64, instances: [{ box: [0, 0, 0.1, 0.1], ref: 9, depth: "x" }] }, { refCount: 2 });
  const fields = s.validate().map((i) => i.field).sort();
  assert.deepEqual(fields, ["box", "box", "depth", "ref"]);
  assert.equal(TOKEN_PX, 16);
});
