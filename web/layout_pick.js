// What a press or a click on the canvas means, as pure functions. DOM-free.
//
// The rules (the editor's toolbar and hint say the same):
// - only the selected box has resize handles (on its edges, within a tolerance), so a press
//   near another box's edge, or in the padding next to a full-canvas box, never resizes it;
// - a press inside the selected box moves it, even where other boxes lie on top of it;
// - a press inside another box selects the topmost box there and moves it;
// - a press on empty space, in the padding, in draw mode or with Shift starts a new box;
// - a click (no drag) inside the selected box, or on its handles, selects the next box under
//   the pointer, so repeated clicks cycle top -> below -> ... -> top; a click never resizes.

import { rectPart } from "./layout_geometry.js";

/**
 * @typedef {import("./layout_geometry.js").Point} Point
 * @typedef {import("./layout_geometry.js").Rect} Rect
 * @typedef {{kind: "draw"} | {kind: "move", index: number, fresh: boolean}
 *   | {kind: "resize", index: number, handle: string}} PressTarget
 *   fresh: the press selected a box that was not selected before
 */

/** @param {Rect} r @param {Point} p */
const inside = (r, p) => p.x >= r.x0 && p.x <= r.x1 && p.y >= r.y0 && p.y <= r.y1;

/**
 * Indices of the boxes containing `p`, topmost first.
 * @param {{rect: Rect}[]} instances @param {Point} p @returns {number[]}
 */
export function boxesAt(instances, p) {
  const out = [];
  for (let i = instances.length - 1; i >= 0; i--) if (inside(instances[i].rect, p)) out.push(i);
  return out;
}

/**
 * The selected box's resize handle at `p` (within `tol` image px of its edges), or null.
 * @param {{rect: Rect}[]} instances @param {number} selected @param {Point} p @param {number} tol
 * @returns {string|null}
 */
export function handleAt(instances, selected, p, tol) {
  const inst = instances[selected];
  if (!inst) return null;
  const part = rectPart(inst.rect, p, tol);
  return part && part !== "inside" ? part : null;
}

/**
 * What a press at `p` starts.
 * @param {{rect: Rect}[]} instances @param {number} selected @param {Point} p @param {number} tol
 * @param {{draw?: boolean, inImage?: boolean}} [opts] draw: draw mode or Shift held;
 *   inImage: whether p is on the image (false in the padding around it)
 * @returns {PressTarget}
 */
export function pressTarget(instances, selected, p, tol, { draw = false, inImage = true } = {}) {
  if (draw) return { kind: "draw" };
  const handle = handleAt(instances, selected, p, tol);
  if (handle) return { kind: "resize", index: selected, handle };
  if (!inImage) return { kind: "draw" };
  const stack = boxesAt(instances, p);
  if (stack.includes(selected)) return { kind: "move", index: selected, fresh: false };
  if (stack.length) return { kind: "move", index: stack[0], fresh: true };
  return { kind: "draw" };
}

/**
 * The box a click (press and release without a drag) at `p` selects: the next box under the
 * pointer after the selected one (wrapping to the topmost), or -1 on empty space.
 * @param {{rect: Rect}[]} instances @param {number} selected @param {Point} p @returns {number}
 */
export function cycleTarget(instances, selected, p) {
  const stack = boxesAt(instances, p);
  if (!stack.length) return -1;
  const at = stack.indexOf(selected);
  return at < 0 ? stack[0] : stack[(at + 1) % stack.length];
}
