// Painting the RefComp layout onto a 2D canvas context: image area, token grid, boxes with
// their reference thumbnails and labels, the selected box's handles. Stateless functions;
// canvas_view.js owns the element and calls paintLayout on every change.

import { TOKEN_PX, imageToScreen } from "./layout_geometry.js";

/** Box colours by depth. */
export const DEPTH_COLORS = Object.freeze({ fg: "#ff7a45", mg: "#52c41a", bg: "#4096ff", none: "#bfbfbf" });
export const HANDLE_PX = 7;

/**
 * @typedef {import("./layout_state.js").LayoutState} LayoutState
 * @typedef {import("./layout_codec.js").Instance} Instance
 * @typedef {import("./layout_geometry.js").ViewRect} ViewRect
 * @typedef {{x: number, y: number, w: number, h: number}} ScreenRect
 * @typedef {{get: (i: number|null|undefined) => CanvasImageSource & {naturalWidth: number, naturalHeight: number}|null}} ImageSource
 */

/** Rect (image px) to screen rect. @param {import("./layout_geometry.js").Rect} r @param {ViewRect} v @param {LayoutState} s */
export function toScreen(r, v, s) {
  const a = imageToScreen({ x: r.x0, y: r.y0 }, v, s.width, s.height);
  const b = imageToScreen({ x: r.x1, y: r.y1 }, v, s.width, s.height);
  return { x: a.x, y: a.y, w: b.x - a.x, h: b.y - a.y };
}

/** One-line label of a box: "#3 · ref 2 · fg · α0.8 · caption". @param {Instance} inst @param {number} i */
export function boxLabel(inst, i) {
  const parts = [`#${i}`];
  if (inst.ref !== null && inst.ref !== undefined) parts.push(`ref ${inst.ref}`);
  if (inst.depth) parts.push(String(inst.depth));
  if (inst.alpha !== null && inst.alpha !== undefined) parts.push(`α${inst.alpha}`);
  if (inst.caption) parts.push(String(inst.caption));
  return parts.join(" · ");
}

/**
 * Paint the whole layout.
 * @param {CanvasRenderingContext2D} ctx @param {{width: number, height: number}} size CSS px
 * @param {ViewRect} v where the image goes @param {LayoutState} state
 * @param {{background?: HTMLImageElement|null, images?: ImageSource|null, message?: string}} [extra]
 */
export function paintLayout(ctx, size, v, state, { background = null, images = null, message = "" } = {}) {
  ctx.clearRect(0, 0, size.width, size.height);
  ctx.fillStyle = "#1e1e1e";
  ctx.fillRect(0, 0, size.width, size.height);
  ctx.fillStyle = "#3a3a3a";
  ctx.fillRect(v.x, v.y, v.width, v.height);
  if (background?.complete && background.naturalWidth) ctx.drawImage(background, v.x, v.y, v.width, v.height);
  if (state.snap) paintGrid(ctx, v, state);
  const bad = new Set(state.validate().filter((i) => i.index !== null).map((i) => i.index));
  state.instances.forEach((inst, i) => {
    paintBox(ctx, toScreen(inst.rect, v, state), inst, i, { selected: i === state.selected, invalid: bad.has(i),
      image: images?.get(inst.ref) ?? null });
  });
  const sel = state.instances[state.selected];
  if (sel) paintHandles(ctx, toScreen(sel.rect, v, state));
  const text = message || (bad.size ? `${bad.size} box(es) need fixing` : "");
  if (text) {
    ctx.font = "12px sans-serif";
    ctx.fillStyle = message ? "#ffd666" : "#ff7875";
    ctx.fillText(text, v.x + 4, v.y + v.height - 6);
  }
}

/** @param {CanvasRenderingContext2D} ctx @param {ViewRect} v @param {LayoutState} state */
function paintGrid(ctx, v, state) {
  let step = TOKEN_PX;
  while ((step / state.width) * v.width < 6) step *= 2;
  ctx.strokeStyle = "rgba(255,255,255,0.08)";
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let x = step; x < state.width; x += step) {
    const sx = v.x + (x / state.width) * v.width;
    ctx.moveTo(sx, v.y); ctx.lineTo(sx, v.y + v.height);
  }
  for (let y = step; y < state.height; y += step) {
    const sy = v.y + (y / state.height) * v.height;
    ctx.moveTo(v.x, sy); ctx.lineTo(v.x + v.width, sy);
  }
  ctx.stroke();
}

/**
 * A box: tinted fill, its reference image fitted inside (aspect kept, centred), outline, label.
 * @param {CanvasRenderingContext2D} ctx @param {ScreenRect} r @param {Instance} inst @param {number} i
 * @param {{selected: boolean, invalid: boolean, image: any}} opts
 */
export function paintBox(ctx, r, inst, i, { selected, invalid, image }) {
  const color = DEPTH_COLORS[/** @type {"fg"|"mg"|"bg"} */ (inst.depth)] ?? DEPTH_COLORS.none;
  ctx.globalAlpha = selected ? 0.28 : 0.16;
  ctx.fillStyle = color;
  ctx.fillRect(r.x, r.y, r.w, r.h);
  ctx.globalAlpha = 1;
  if (image) paintContained(ctx, image, r, 2);
  ctx.lineWidth = selected ? 2.5 : 1.5;
  ctx.strokeStyle = invalid ? "#ff4d4f" : color;
  ctx.setLineDash(invalid ? [5, 3] : []);
  ctx.strokeRect(r.x, r.y, r.w, r.h);
  ctx.setLineDash([]);
  paintLabel(ctx, boxLabel(inst, i), r, color);
}

/** Draw `img` inside `r` (inset by `inset` px), as large as fits with its aspect ratio, centred. */
export function paintContained(ctx, img, r, inset = 0) {
  const w = Math.max(r.w - 2 * inset, 1);
  const h = Math.max(r.h - 2 * inset, 1);
  const k = Math.min(w / img.naturalWidth, h / img.naturalHeight);
  const dw = img.naturalWidth * k;
  const dh = img.naturalHeight * k;
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(img, r.x + (r.w - dw) / 2, r.y + (r.h - dh) / 2, dw, dh);
}

/** @param {CanvasRenderingContext2D} ctx @param {string} text @param {ScreenRect} r @param {string} color */
function paintLabel(ctx, text, r, color) {
  ctx.font = "11px sans-serif";
  let t = text;
  const maxW = Math.max(r.w - 4, 12);
  while (t.length > 1 && ctx.measureText(t).width > maxW) t = t.slice(0, -2) + "…";
  const w = ctx.measureText(t).width + 6;
  ctx.fillStyle = color;
  ctx.fillRect(r.x, r.y, Math.min(w, Math.max(r.w, 12)), 15);
  ctx.fillStyle = "#111";
  ctx.fillText(t, r.x + 3, r.y + 11);
}

/** @param {CanvasRenderingContext2D} ctx @param {ScreenRect} r */
function paintHandles(ctx, r) {
  const xs = [r.x, r.x + r.w / 2, r.x + r.w];
  const ys = [r.y, r.y + r.h / 2, r.y + r.h];
  ctx.fillStyle = "#fff";
  ctx.strokeStyle = "#000";
  ctx.lineWidth = 1;
  for (const x of xs) for (const y of ys) {
    if (x === xs[1] && y === ys[1]) continue;
    ctx.fillRect(x - HANDLE_PX / 2, y - HANDLE_PX / 2, HANDLE_PX, HANDLE_PX);
    ctx.strokeRect(x - HANDLE_PX / 2, y - HANDLE_PX / 2, HANDLE_PX, HANDLE_PX);
  }
}
