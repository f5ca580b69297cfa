// Pure geometry helpers for the RefComp layout editor. DOM-free.
//
// Coordinate spaces:
//   image  — pixels of the target image, origin top-left, 0..width × 0..height.
//   screen — CSS pixels of the element the image is drawn in.
//   norm   — layout v1 boxes, 0..1 (image / width|height).

/** FLUX: one image token covers 16×16 px (VAE 8× · patchify 2×). */
export const TOKEN_PX = 16;

/** Resize handle names: compass points of the box. */
export const HANDLES = Object.freeze(["nw", "n", "ne", "e", "se", "s", "sw", "w"]);

/**
 * @typedef {{x: number, y: number}} Point
 * @typedef {{x0: number, y0: number, x1: number, y1: number}} Rect   image px, x0<x1, y0<y1
 * @typedef {{x: number, y: number, width: number, height: number}} ViewRect
 *   where the whole image is drawn, in screen px
 * @typedef {{width: number, height: number, minSize?: number, snap?: boolean, grid?: number}} Bounds
 */

/** @param {number} v @param {number} lo @param {number} hi */
export function clamp(v, lo, hi) {
  return Math.min(hi, Math.max(lo, v));
}

/** Round to the nearest multiple of `grid`. @param {number} v @param {number} [grid] */
export function snapValue(v, grid = TOKEN_PX) {
  return Math.round(v / grid) * grid;
}

/** Rect spanned by two corner points, with x0<=x1 and y0<=y1. @param {Point} a @param {Point} b @returns {Rect} */
export function rectFromPoints(a, b) {
  return {
    x0: Math.min(a.x, b.x), y0: Math.min(a.y, b.y),
    x1: Math.max(a.x, b.x), y1: Math.max(a.y, b.y),
  };
}

/** @param {Rect} r @returns {Rect} */
export function copyRect(r) {
  return { x0: r.x0, y0: r.y0, x1: r.x1, y1: r.y1 };
}

/** @param {Rect} a @param {Rect} b */
export function rectsEqual(a, b) {
  return a.x0 === b.x0 && a.y0 === b.y0 && a.x1 === b.x1 && a.y1 === b.y1;
}

/** Smallest allowed side in px: one token, or the whole image if it is smaller. @param {Bounds} b */
export function minSide(b, axis) {
  const extent = axis === "x" ? b.width : b.height;
  return Math.min(b.minSize ?? TOKEN_PX, extent);
}

/**
 * Translate a rect by (dx, dy), keeping its size, so that it stays inside the image.
 * With snapping, the top-left corner lands on the grid.
 * @param {Rect} r @param {number} dx @param {number} dy @param {Bounds} b @returns {Rect}
 */
export function moveRect(r, dx, dy, b) {
  const w = Math.min(r.x1 - r.x0, b.width);
  const h = Math.min(r.y1 - r.y0, b.height);
  let x0 = r.x0 + dx;
  let y0 = r.y0 + dy;
  if (b.snap) {
    x0 = snapValue(x0, b.grid);
    y0 = snapValue(y0, b.grid);
  }
  x0 = clamp(x0, 0, b.width - w);
  y0 = clamp(y0, 0, b.height - h);
  return { x0, y0, x1: x0 + w, y1: y0 + h };
}

/**
 * Move the edges named by `handle` by (dx, dy). The opposite edges stay put; a moving
 * edge stops at the image border and at one token from its opposite edge.
 * @param {Rect} r @param {string} handle one of HANDLES @param {number} dx @param {number} dy
 * @param {Bounds} b @returns {Rect}
 */
export function resizeRect(r, handle, dx, dy, b) {
  const out = copyRect(r);
  const mw = minSide(b, "x");
  const mh = minSide(b, "y");
  const snap = (v) => (b.snap ? snapValue(v, b.grid) : v);
  if (handle.includes("w")) out.x0 = clamp(snap(r.x0 + dx), 0, r.x1 - mw);
  if (handle.includes("e")) out.x1 = clamp(snap(r.x1 + dx), r.x0 + mw, b.width);
  if (handle.includes("n")) out.y0 = clamp(snap(r.y0 + dy), 0, r.y1 - mh);
  if (handle.includes("s")) out.y1 = clamp(snap(r.y1 + dy), r.y0 + mh, b.height);
  return fitRect(out, b);
}

/**
 * Make any rect legal: ordered, inside the image, at least one token per side
 * (grown away from x0/y0, shifted back inside if needed).
 * @param {Rect} r @param {Bounds} b @returns {Rect}
 */
export function fitRect(r, b) {
  let x0 = clamp(Math.min(r.x0, r.x1), 0, b.width);
  let x1 = clamp(Math.max(r.x0, r.x1), 0, b.width);
  let y0 = clamp(Math.min(r.y0, r.y1), 0, b.height);
  let y1 = clamp(Math.max(r.y0, r.y1), 0, b.height);
  const mw = minSide(b, "x");
  const mh = minSide(b, "y");
  if (x1 - x0 < mw) { x1 = x0 + mw; if (x1 > b.width) { x1 = b.width; x0 = x1 - mw; } }
  if (y1 - y0 < mh) { y1 = y0 + mh; if (y1 > b.height) { y1 = b.height; y0 = y1 - mh; } }
  return { x0, y0, x1, y1 };
}

/**
 * Rect drawn by a drag from `start` to `end`. It grows from `start` in the drag
 * direction to at least one token, and is clamped to the image.
 * @param {Point} start @param {Point} end @param {Bounds} b @returns {Rect}
 */
export function rectFromDrag(start, end, b) {
  const snap = (v) => (b.snap ? snapValue(v, b.grid) : v);
  const sx = clamp(snap(start.x), 0, b.width);
  const sy = clamp(snap(start.y), 0, b.height);
  let ex = clamp(snap(end.x), 0, b.width);
  let ey = clamp(snap(end.y), 0, b.height);
  const mw = minSide(b, "x");
  const mh = minSide(b, "y");
  const dirX = end.x < start.x ? -1 : 1;
  const dirY = end.y < start.y ? -1 : 1;
  if (Math.abs(ex - sx) < mw) ex = sx + dirX * mw;
  if (Math.abs(ey - sy) < mh) ey = sy + dirY * mh;
  return fitRect(rectFromPoints({ x: sx, y: sy }, { x: ex, y: ey }), b);
}

/**
 * Which part of `r` is at `p`: a handle name, "inside" or null (outside).
 * Edges count within `tol` px; the tolerance shrinks on small boxes so their
 * middle can still be grabbed to move them.
 * @param {Rect} r @param {Point} p @param {number} tol @returns {string|null}
 */
export function rectPart(r, p, tol) {
  const t = Math.min(tol, (r.x1 - r.x0) / 4, (r.y1 - r.y0) / 4);
  const tx = Math.max(t, 0);
  if (p.x < r.x0 - tx || p.x > r.x1 + tx || p.y < r.y0 - tx || p.y > r.y1 + tx) return null;
  const ns = Math.abs(p.y - r.y0) <= tx ? "n" : Math.abs(p.y - r.y1) <= tx ? "s" : "";
  const ew = Math.abs(p.x - r.x0) <= tx ? "w" : Math.abs(p.x - r.x1) <= tx ? "e" : "";
  const handle = ns + ew;
  if (handle) return handle;
  return p.x >= r.x0 && p.x <= r.x1 && p.y >= r.y0 && p.y <= r.y1 ? "inside" : null;
}

/**
 * Largest view rect of the image's aspect ratio that fits in a box, centred.
 * @param {number} boxW @param {number} boxH @param {number} imgW @param {number} imgH
 * @param {number} [pad] screen px kept free on every side @returns {ViewRect}
 */
export function fitView(boxW, boxH, imgW, imgH, pad = 0) {
  const aw = Math.max(boxW - 2 * pad, 1);
  const ah = Math.max(boxH - 2 * pad, 1);
  const scale = Math.min(aw / imgW, ah / imgH);
  const width = imgW * scale;
  const height = imgH * scale;
  return { x: (boxW - width) / 2, y: (boxH - height) / 2, width, height };
}

/** @param {Point} p screen px @param {ViewRect} view @param {number} imgW @param {number} imgH @returns {Point} */
export function screenToImage(p, view, imgW, imgH) {
  return {
    x: ((p.x - view.x) / view.width) * imgW,
    y: ((p.y - view.y) / view.height) * imgH,
  };
}

/** @param {Point} p image px @param {ViewRect} view @param {number} imgW @param {number} imgH @returns {Point} */
export function imageToScreen(p, view, imgW, imgH) {
  return {
    x: view.x + (p.x / imgW) * view.width,
    y: view.y + (p.y / imgH) * view.height,
  };
}
