// The canvas of the RefComp layout editor: pointer and keyboard handling, hover tooltip, the
// empty-canvas hint, paste / copy / drop of layout JSON. Needs a DOM but not ComfyUI. All
// geometry goes through LayoutState; painting is canvas_paint.js.
//
// Keyboard: the canvas itself never takes focus. A visually hidden, read-only <input> (the
// "key sink") does, on every press. Hosts treat keys typed into an INPUT as that input's own:
// ComfyUI's workflow undo (Ctrl+Z, which listens on window in the capture phase, before any
// handler here) and its shortcuts skip them. Handled keys also stop propagating.

import { boxLabel, paintLayout } from "./canvas_paint.js";
import { fitView, imageToScreen, screenToImage } from "./layout_geometry.js";

export { DEPTH_COLORS } from "./canvas_paint.js";

const CURSORS = { n: "ns-resize", s: "ns-resize", e: "ew-resize", w: "ew-resize",
  ne: "nesw-resize", sw: "nesw-resize", nw: "nwse-resize", se: "nwse-resize" };
export const HINT = "Drag to draw a box · Shift+drag or “draw” mode draws over boxes · click again to pick the box "
  + "below · Ctrl+V pastes a layout";

/**
 * @typedef {import("./layout_state.js").LayoutState} LayoutState
 * @typedef {import("./layout_state.js").Point} Point
 * @typedef {(state: LayoutState, reason: string) => void} ChangeFn
 * @typedef {{get: (i: any) => any, name: (i: any) => string|null, subscribe: (fn: () => void) => () => void}} Images
 */

export class LayoutCanvasView {
  /**
   * @param {HTMLElement} containerEl the canvas fills it
   * @param {LayoutState} state
   * @param {ChangeFn} [onChange] called after every state change (and after the redraw)
   * @param {{padding?: number, handleTolPx?: number, dragThresholdPx?: number, images?: Images|null,
   *          onCommit?: () => void, onImport?: (text: string) => void}} [opts]
   *   screen px; onCommit: an edit is finished (a gesture or a key); onImport: pasted/dropped text
   */
  constructor(containerEl, state, onChange, { padding = 8, handleTolPx = 6, dragThresholdPx = 3, images = null,
    onCommit, onImport } = {}) {
    Object.assign(this, { container: containerEl, state, onChange, padding, handleTolPx, dragThresholdPx, images });
    this.onCommit = onCommit;
    this.onImport = onImport;
    const doc = containerEl.ownerDocument;
    const mk = (tag, cls, style) => styled(doc.createElement(tag), cls, style);
    this.canvas = mk("canvas", "refcomp-canvas", { display: "block", width: "100%", height: "100%", outline: "none",
      touchAction: "none", cursor: "crosshair", position: "absolute", left: "0", top: "0" });
    this.keys = mk("input", "refcomp-keys", { position: "absolute", left: "0", top: "0", width: "1px", height: "1px",
      opacity: "0", pointerEvents: "none", border: "0", padding: "0" });
    Object.assign(this.keys, { readOnly: true, tabIndex: 0, ariaLabel: "Layout canvas (keyboard)" });
    this.hint = mk("div", "refcomp-hint", { position: "absolute", left: "12%", right: "12%", top: "42%",
      textAlign: "center", color: "#aaa", font: "12px sans-serif", pointerEvents: "none", lineHeight: "1.5" });
    this.hint.textContent = HINT;
    this.tooltip = mk("div", "refcomp-tooltip", { position: "absolute", display: "none", maxWidth: "70%", zIndex: "5",
      background: "rgba(20,20,20,0.95)", color: "#eee", border: "1px solid #666", borderRadius: "4px",
      padding: "4px 6px", font: "12px sans-serif", pointerEvents: "none", whiteSpace: "pre-wrap" });
    containerEl.append(this.canvas, this.keys, this.hint, this.tooltip);
    this.ctx = /** @type {CanvasRenderingContext2D} */ (this.canvas.getContext("2d"));
    /** Where the image is drawn, in canvas CSS px. */
    this.view = { x: 0, y: 0, width: 1, height: 1 };
    /** @type {HTMLImageElement|null} */ this.background = null;
    this._message = "";
    this._messageTimer = 0;
    /** @type {{x: number, y: number, p: Point, moved: boolean, target: any}|null} */ this._press = null;

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
    on(this.canvas, "pointerleave", () => this._showTip(null));
    on(this.canvas, "contextmenu", (e) => e.preventDefault());
    on(this.canvas, "refcomp-redraw", () => this.draw());
    on(this.keys, "keydown", this.handleKey);
    on(this.keys, "paste", this._onPaste);
    on(this.keys, "copy", this._onCopy);
    on(containerEl, "dragover", (e) => { if (e.dataTransfer?.types.includes("Files")) e.preventDefault(); });
    on(containerEl, "drop", this._onDrop);
    const win = doc.defaultView;
    this._resizeObserver = win && "ResizeObserver" in win ? new win.ResizeObserver(() => this.resize()) : null;
    this._resizeObserver?.observe(containerEl);
    this._unsubscribe = state.subscribe((reason) => {
      if (reason === "limit") this.flash(`At most ${state.maxInstances} boxes`);
      this.draw();
      this.onChange?.(state, reason);
    });
    this._unImages = images?.subscribe(() => this.draw()) ?? (() => {});
    this.resize();
  }

  /** Remove every listener and element. */
  destroy() {
    for (const [t, type, fn] of this._listeners) t.removeEventListener(type, fn);
    this._listeners = [];
    this._resizeObserver?.disconnect();
    this._unsubscribe();
    this._unImages();
    clearTimeout(this._messageTimer);
    for (const el of [this.canvas, this.keys, this.hint, this.tooltip]) el.remove();
  }

  /** Give the editor keyboard focus (the key sink). */
  focus() {
    this.keys.focus({ preventScroll: true });
  }

  /**
   * Show an image under the boxes (a URL, never stored in the layout), or none.
   * @param {string|null} url
   */
  setBackground(url) {
    if (!url) { if (this.background) { this.background = null; this.draw(); } return; }
    if (this.background?.dataset.src === url) return;
    const img = new (this.canvas.ownerDocument.defaultView ?? globalThis).Image();
    img.dataset.src = url;
    img.onload = () => { if (this.background === img) this.draw(); };
    img.src = url;
    this.background = img;
  }

  /** Show a short message on the canvas for a moment. @param {string} text @param {number} [ms] */
  flash(text, ms = 2500) {
    this._message = text;
    clearTimeout(this._messageTimer);
    this._messageTimer = setTimeout(() => { this._message = ""; this.draw(); }, ms);
    this.draw();
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
    this.focus();
    this._showTip(null);
    this.canvas.setPointerCapture?.(e.pointerId);
    const s = this.state;
    const p = this.eventToImage(e);
    const inImage = p.x >= 0 && p.y >= 0 && p.x <= s.width && p.y <= s.height;
    const target = s.pressTarget(p, this.handleTolPx * this._imagePerScreen, { shift: e.shiftKey, inImage });
    if (target.kind === "draw") {
      s.beginGesture("draw", { x: Math.min(Math.max(p.x, 0), s.width), y: Math.min(Math.max(p.y, 0), s.height) });
    } else {
      s.beginGesture(target.kind, p, target);
    }
    this._press = { x: e.clientX, y: e.clientY, p, moved: false, target };
  }

  /** @param {PointerEvent} e */
  _onMove(e) {
    const press = this._press;
    if (!press || !this.state.gestureActive) {
      this._hover(e);
      return;
    }
    if (!press.moved && Math.hypot(e.clientX - press.x, e.clientY - press.y) < this.dragThresholdPx) return;
    press.moved = true;
    this.state.updateGesture(this.eventToImage(e));
  }

  /** @param {PointerEvent} e */
  _onUp(e) {
    const press = this._press;
    if (!press) return;
    this._press = null;
    this.canvas.releasePointerCapture?.(e.pointerId);
    const changed = this.state.endGesture();
    if (!press.moved) {
      const t = press.target;
      if (t.kind === "draw") this.state.select(-1);
      else if (t.kind === "resize" || !t.fresh) this.state.cycleSelect(press.p); // a click never resizes
    }
    if (changed) this.onCommit?.();
  }

  _onCancel() {
    this._press = null;
    this.state.cancelGesture();
  }

  /** Cursor and tooltip for the pointer hovering at `e`. @param {PointerEvent} e */
  _hover(e) {
    const s = this.state;
    const p = this.eventToImage(e);
    const inImage = p.x >= 0 && p.y >= 0 && p.x <= s.width && p.y <= s.height;
    const t = s.pressTarget(p, this.handleTolPx * this._imagePerScreen, { shift: e.shiftKey, inImage });
    this.canvas.style.cursor = t.kind === "resize" ? CURSORS[/** @type {keyof CURSORS} */ (t.handle)]
      : t.kind === "move" ? "move" : "crosshair";
    const top = inImage ? s.boxesAt(p)[0] : undefined;
    this._showTip(top === undefined ? null : top, this.eventToCanvas(e));
  }

  /** Tooltip with box `i`'s full label and caption near canvas point `at`, or hide it. */
  _showTip(i, at = { x: 0, y: 0 }) {
    const inst = i === null ? null : this.state.instances[i];
    if (!inst) { this.tooltip.style.display = "none"; return; }
    const file = this.images?.name(inst.ref);
    const head = boxLabel({ ...inst, caption: "" }, /** @type {number} */ (i)) + (file ? ` (${file})` : "");
    this.tooltip.textContent = inst.caption ? `${head}\n${inst.caption}` : head;
    const w = this.canvas.clientWidth;
    Object.assign(this.tooltip.style, { display: "block", top: `${Math.min(at.y + 16, this.canvas.clientHeight - 40)}px`,
      left: at.x > w / 2 ? "" : `${at.x + 12}px`, right: at.x > w / 2 ? `${w - at.x + 12}px` : "" });
  }

  // ---- keyboard, clipboard, drop ---------------------------------------------------

  /** A key pressed in the canvas (or on a button of its toolbar). @param {KeyboardEvent} e */
  handleKey(e) {
    const before = this.state.serialize();
    if (!this._handleKey(e)) return;
    e.preventDefault();
    e.stopPropagation();
    if (this.state.serialize() !== before) this.onCommit?.();
  }

  /** @param {KeyboardEvent} e @returns {boolean} handled */
  _handleKey(e) {
    const s = this.state;
    const mod = e.ctrlKey || e.metaKey;
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (key === "Escape") {
      if (s.gestureActive) { this._press = null; s.cancelGesture(); return true; }
      if (s.selected >= 0) { s.select(-1); return true; }
      return false; // lets a surrounding dialog close
    }
    if (s.gestureActive) return false;
    if (mod && key === "z") return e.shiftKey ? s.redo() || true : s.undo() || true;
    if (mod && key === "y") return s.redo() || true;
    if (mod && key === "d") { s.duplicate(s.selected); return true; }
    if (mod || e.altKey) return false;
    if (key === "b") { s.setDrawMode(!s.drawMode); return true; }
    if (key === "Delete" || key === "Backspace") { s.remove(s.selected); return true; }
    if (key.startsWith("Arrow")) return s.nudge(key, e.shiftKey) || s.selected < 0;
    if (e.code === "BracketRight") { (e.shiftKey ? s.bringToFront(s.selected) : s.bringForward(s.selected)); return true; }
    if (e.code === "BracketLeft") { (e.shiftKey ? s.sendToBack(s.selected) : s.sendBackward(s.selected)); return true; }
    return false;
  }

  /** @param {ClipboardEvent} e */
  _onPaste(e) {
    const text = e.clipboardData?.getData("text/plain") ?? "";
    e.preventDefault();
    e.stopPropagation();
    if (text.trim()) this.onImport?.(text);
  }

  /** Ctrl+C in the canvas copies the layout v1 JSON. @param {ClipboardEvent} e */
  _onCopy(e) {
    e.clipboardData?.setData("text/plain", this.state.serialize());
    e.preventDefault();
    e.stopPropagation();
    this.flash("Layout JSON copied");
  }

  /** @param {DragEvent} e */
  async _onDrop(e) {
    const file = e.dataTransfer?.files?.[0];
    if (!file) return;
    e.preventDefault();
    e.stopPropagation();
    this.onImport?.(await file.text());
  }

  // ---- drawing ------------------------------------------------------------------

  draw() {
    const { ctx, canvas, state } = this;
    const dpr = canvas.clientWidth ? canvas.width / canvas.clientWidth : 1;
    this._layout();
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    paintLayout(ctx, { width: canvas.clientWidth, height: canvas.clientHeight }, this.view, state,
      { background: this.background, images: this.images, message: this._message });
    this.hint.style.display = state.instances.length ? "none" : "block";
  }
}

/**
 * @param {HTMLElement} el @param {string} className @param {Partial<CSSStyleDeclaration>} style
 * @returns {any}
 */
function styled(el, className, style) {
  el.className = className;
  Object.assign(el.style, style);
  return el;
}
