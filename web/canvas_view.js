// Canvas drawing and pointer/keyboard handling for the RefComp layout editor.
// Needs a DOM but not ComfyUI. All geometry goes through LayoutState
// (layout_state.js); this file only converts screen px <-> image px and paints.

import { TOKEN_PX, fitView, imageToScreen, screenToImage } from "./layout_state.js";

/** Box colours by depth. */
export const DEPTH_COLORS = Object.freeze({ fg: "#ff7a45", mg: "#52c41a", bg: "#4096ff", none: "#bfbfbf" });

const CURSORS = { n: "ns-resize", s: "ns-resize", e: "ew-resize", w: "ew-resize",
  ne: "nesw-resize", sw: "nesw-resize", nw: "nwse-resize", se: "nwse-resize" };
const HANDLE_PX = 7;

/**
 * @typedef {import("./layout_state.js").LayoutState} LayoutState
 * @typedef {import("./layout_state.js").Point} Point
 * @typedef {(state: LayoutState, reason: string) => void} ChangeFn
 */

export class LayoutCanvasView {
  /**
   * @param {HTMLElement} containerEl the canvas fills it
   * @param {LayoutState} state
   * @param {ChangeFn} [onChange] called after every state change (and after the redraw)
   * @param {{padding?: number, handleTolPx?: number, dragThresholdPx?: number}} [opts] screen px
   */
  constructor(containerEl, state, onChange, { padding = 8, handleTolPx = 6, dragThresholdPx = 3 } = {}) {
    this.container = containerEl;
    this.state = state;
    this.onChange = onChange;
    this.padding = padding;
    this.handleTolPx = handleTolPx;
    this.dragThresholdPx = dragThresholdPx;
    const doc = containerEl.ownerDocument;
    this.canvas = doc.createElement("canvas");
    this.canvas.tabIndex = 0;
    this.canvas.className = "refcomp-canvas";
    Object.assign(this.canvas.style, { display: "block", width: "100%", height: "100%", outline: "none",
      touchAction: "none", cursor: "crosshair" });
    containerEl.appendChild(this.canvas);
    this.ctx = /** @type {CanvasRenderingContext2D} */ (this.canvas.getContext("2d"));
    /** Where the image is drawn, in canvas CSS px. */
    this.view = { x: 0, y: 0, width: 1, height: 1 };
    /** @type {HTMLImageElement|null} */ this.background = null;
    this._message = "";
    this._messageTimer = 0;
    /** @type {{x: number, y: number, moved: boolean}|null} */ this._press = null;

    /** @type {[EventTarget, string, EventListener][]} */
    this._listeners = [];
    const on = (target, type, fn) => {
      const bound = fn.bind(this);
      target.addEventListener(type, bound);
      this._listeners.push([target, type, bound]);
    };
    on(this.canvas, "pointerdown", this._onDown);
    on(this.canvas, "pointermove", this._onMove);
    on(this.canvas, "pointerup", this._onUp);
    on(this.canvas, "pointercancel", this._onCancel);
    on(this.canvas, "keydown", this._onKey);
    on(this.canvas, "contextmenu", (e) => e.preventDefault());
    const win = doc.defaultView;
    this._resizeObserver = win && "ResizeObserver" in win ? new win.ResizeObserver(() => this.resize()) : null;
    this._resizeObserver?.observe(containerEl);
    this._unsubscribe = state.subscribe((reason) => {
      if (reason === "limit") this.flash(`At most ${state.maxInstances} boxes`);
      this.draw();
      this.onChange?.(state, reason);
    });
    this.resize();
  }

  /** Remove every listener and the canvas. */
  destroy() {
    for (const [t, type, fn] of this._listeners) t.removeEventListener(type, fn);
    this._listeners = [];
    this._resizeObserver?.disconnect();
    this._unsubscribe();
    clearTimeout(this._messageTimer);
    this.canvas.remove();
  }

  /**
   * Show an image under the boxes (a URL, never stored in the layout), or none.
   * @param {string|null} url
   */
  setBackground(url) {
    if (!url) { this.background = null; this.draw(); return; }
    if (this.background?.dataset.src === url) return;
    const img = new (this.canvas.ownerDocument.defaultView ?? globalThis).Image();
    img.dataset.src = url;
    img.onload = () => { if (this.background === img) this.draw(); };
    img.src = url;
    this.background = img;
  }

  /** Show a short message on the canvas for a moment. @param {string} text */
  flash(text) {
    this._message = text;
    clearTimeout(this._messageTimer);
    this._messageTimer = setTimeout(() => { this._message = ""; this.draw(); }, 2000);
  }

  // ---- coordinates ---------------------------------------------------------

  /** Fit the backing store to the element's size and redraw. */
  resize() {
    const w = Math.max(this.canvas.clientWidth, 1);
    const h = Math.max(this.canvas.clientHeight, 1);
    const dpr = this.canvas.ownerDocument.defaultView?.devicePixelRatio || 1;
    if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(h * dpr)) {
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(h * dpr);
    }
    this.draw();
  }

  _layout() {
    const { width, height } = this.state;
    this.view = fitView(this.canvas.clientWidth || 1, this.canvas.clientHeight || 1, width, height, this.padding);
  }

  /**
   * Event position in canvas CSS px. Handles a CSS-scaled ancestor (ComfyUI zoom).
   * @param {{clientX: number, clientY: number}} e @returns {Point}
   */
  eventToCanvas(e) {
    const r = this.canvas.getBoundingClientRect();
    const sx = r.width ? this.canvas.clientWidth / r.width : 1;
    const sy = r.height ? this.canvas.clientHeight / r.height : 1;
    return { x: (e.clientX - r.left) * sx, y: (e.clientY - r.top) * sy };
  }

  /** @param {{clientX: number, clientY: number}} e @returns {Point} image px */
  eventToImage(e) {
    return screenToImage(this.eventToCanvas(e), this.view, this.state.width, this.state.height);
  }

  /** Client (viewport) coordinates of an image point; used by tests. @param {Point} p */
  imageToClient(p) {
    this._layout();
    const c = imageToScreen(p, this.view, this.state.width, this.state.height);
    const r = this.canvas.getBoundingClientRect();
    const sx = this.canvas.clientWidth ? r.width / this.canvas.clientWidth : 1;
    const sy = this.canvas.clientHeight ? r.height / this.canvas.clientHeight : 1;
    return { x: r.left + c.x * sx, y: r.top + c.y * sy };
  }

  /** Image px per screen px. */
  get _imagePerScreen() {
    return this.state.width / this.view.width;
  }

  // ---- pointer ---------------------------------------------------------------

  /** @param {PointerEvent} e */
  _onDown(e) {
    if (e.button !== 0) return;
    e.preventDefault();
    e.stopPropagation();
    this.canvas.focus();
    this.canvas.setPointerCapture?.(e.pointerId);
    const s = this.state;
    const p = this.eventToImage(e);
    const hit = s.hitTest(p, this.handleTolPx * this._imagePerScreen);
    if (hit) s.beginGesture(hit.handle ? "resize" : "move", p, hit);
    else {
      s.select(-1);
      s.beginGesture("draw", { x: Math.min(Math.max(p.x, 0), s.width), y: Math.min(Math.max(p.y, 0), s.height) });
    }
    this._press = { x: e.clientX, y: e.clientY, moved: false };
  }

  /** @param {PointerEvent} e */
  _onMove(e) {
    const press = this._press;
    if (!press || !this.state.gestureActive) {
      const hit = this.state.hitTest(this.eventToImage(e), this.handleTolPx * this._imagePerScreen);
      this.canvas.style.cursor = hit ? (hit.handle ? CURSORS[hit.handle] : "move") : "crosshair";
      return;
    }
    if (!press.moved && Math.hypot(e.clientX - press.x, e.clientY - press.y) < this.dragThresholdPx) return;
    press.moved = true;
    this.state.updateGesture(this.eventToImage(e));
  }

  /** @param {PointerEvent} e */
  _onUp(e) {
    if (!this._press) return;
    this._press = null;
    this.canvas.releasePointerCapture?.(e.pointerId);
    this.state.endGesture();
  }

  _onCancel() {
    this._press = null;
    this.state.cancelGesture();
  }

  // ---- keyboard ---------------------------------------------------------------

  /** @param {KeyboardEvent} e */
  _onKey(e) {
    if (this._handleKey(e)) {
      e.preventDefault();
      e.stopPropagation();
    }
  }

  /** @param {KeyboardEvent} e @returns {boolean} handled */
  _handleKey(e) {
    const s = this.state;
    const mod = e.ctrlKey || e.metaKey;
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (key === "Escape") {
      if (s.gestureActive) { this._press = null; s.cancelGesture(); } else s.select(-1);
      return true;
    }
    if (s.gestureActive) return false;
    if (mod && key === "z") return e.shiftKey ? s.redo() || true : s.undo() || true;
    if (mod && key === "y") return s.redo() || true;
    if (mod && key === "d") { s.duplicate(s.selected); return true; }
    if (mod) return false;
    if (key === "Delete" || key === "Backspace") { s.remove(s.selected); return true; }
    if (key.startsWith("Arrow")) return s.nudge(key, e.shiftKey);
    if (e.code === "BracketRight") { (e.shiftKey ? s.bringToFront(s.selected) : s.bringForward(s.selected)); return true; }
    if (e.code === "BracketLeft") { (e.shiftKey ? s.sendToBack(s.selected) : s.sendBackward(s.selected)); return true; }
    return false;
  }

  // ---- drawing ------------------------------------------------------------------

  draw() {
    const { ctx, canvas, state } = this;
    const dpr = canvas.clientWidth ? canvas.width / canvas.clientWidth : 1;
    this._layout();
    const v = this.view;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, canvas.clientWidth, canvas.clientHeight);
    ctx.fillStyle = "#1e1e1e";
    ctx.fillRect(0, 0, canvas.clientWidth, canvas.clientHeight);
    ctx.fillStyle = "#3a3a3a";
    ctx.fillRect(v.x, v.y, v.width, v.height);
    const bg = this.background;
    if (bg?.complete && bg.naturalWidth) ctx.drawImage(bg, v.x, v.y, v.width, v.height);
    if (state.snap) this._drawGrid();
    const bad = new Set(state.validate().filter((i) => i.index !== null).map((i) => i.index));
    state.instances.forEach((inst, i) => this._drawBox(inst, i, i === state.selected, bad.has(i)));
    const sel = state.instances[state.selected];
    if (sel) this._drawHandles(sel.rect);
    const text = this._message || (bad.size ? `${bad.size} box(es) need fixing` : "");
    if (text) {
      ctx.font = "12px sans-serif";
      ctx.fillStyle = this._message ? "#ffd666" : "#ff7875";
      ctx.fillText(text, v.x + 4, v.y + v.height - 6);
    }
  }

  /** Rect (image px) to screen rect. @param {import("./layout_state.js").Rect} r */
  _toScreen(r) {
    const a = imageToScreen({ x: r.x0, y: r.y0 }, this.view, this.state.width, this.state.height);
    const b = imageToScreen({ x: r.x1, y: r.y1 }, this.view, this.state.width, this.state.height);
    return { x: a.x, y: a.y, w: b.x - a.x, h: b.y - a.y };
  }

  _drawGrid() {
    const { ctx, view: v, state } = this;
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
   * @param {import("./layout_state.js").Instance} inst @param {number} i
   * @param {boolean} selected @param {boolean} invalid
   */
  _drawBox(inst, i, selected, invalid) {
    const { ctx } = this;
    const r = this._toScreen(inst.rect);
    const color = DEPTH_COLORS[/** @type {"fg"|"mg"|"bg"} */ (inst.depth)] ?? DEPTH_COLORS.none;
    ctx.globalAlpha = selected ? 0.28 : 0.16;
    ctx.fillStyle = color;
    ctx.fillRect(r.x, r.y, r.w, r.h);
    ctx.globalAlpha = 1;
    ctx.lineWidth = selected ? 2.5 : 1.5;
    ctx.strokeStyle = invalid ? "#ff4d4f" : color;
    ctx.setLineDash(invalid ? [5, 3] : []);
    ctx.strokeRect(r.x, r.y, r.w, r.h);
    ctx.setLineDash([]);
    const parts = [`#${i}`];
    if (inst.ref !== null && inst.ref !== undefined) parts.push(`ref ${inst.ref}`);
    if (inst.depth) parts.push(String(inst.depth));
    if (inst.alpha !== null && inst.alpha !== undefined) parts.push(`α${inst.alpha}`);
    if (inst.caption) parts.push(String(inst.caption));
    this._label(parts.join(" · "), r, color);
  }

  /** @param {string} text @param {{x: number, y: number, w: number, h: number}} r @param {string} color */
  _label(text, r, color) {
    const { ctx } = this;
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

  /** @param {import("./layout_state.js").Rect} rect */
  _drawHandles(rect) {
    const { ctx } = this;
    const r = this._toScreen(rect);
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
}
