// Editor state for the RefComp layout canvas. DOM-free: no window, document or canvas,
// so it runs (and is tested) under plain `node --test`.
//
// Geometry is kept in IMAGE pixels of the target image (see layout_geometry.js);
// layout v1 JSON (normalized boxes) exists only at the load/serialize edges.
// Boxes later in the list are drawn on top of earlier ones.

import { clone, cloneInstance, instancesFromBoundingBoxes, layoutToJSON, parseLayout, readImport } from "./layout_codec.js";
import {
  TOKEN_PX, copyRect, fitRect, moveRect, rectFromDrag, rectsEqual, resizeRect,
} from "./layout_geometry.js";
import { boxesAt, cycleTarget, pressTarget } from "./layout_pick.js";
import { DEFAULT_MAX_INSTANCES, LayoutError, checkField, validateLayout } from "./layout_validate.js";

export * from "./layout_geometry.js";
export * from "./layout_validate.js";

const FIELDS = ["ref", "caption", "depth", "alpha"];
const ARROWS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };

/**
 * @typedef {import("./layout_geometry.js").Rect} Rect
 * @typedef {import("./layout_geometry.js").Point} Point
 * @typedef {import("./layout_validate.js").LayoutIssue} LayoutIssue
 * @typedef {import("./layout_codec.js").Instance} Instance
 * @typedef {{width: number, height: number, instances: Instance[], selected: number, extra: Record<string, any>}} Snapshot
 * @typedef {"draw"|"move"|"resize"} GestureKind
 * @typedef {(reason: string) => void} Listener
 */

export class LayoutState {
  /**
   * @param {{width?: number, height?: number, maxInstances?: number, historyLimit?: number,
   *          refCount?: number|null, snap?: boolean}} [opts]
   */
  constructor({ width = 1024, height = 1024, maxInstances = DEFAULT_MAX_INSTANCES, historyLimit = 100,
    refCount = null, snap = false } = {}) {
    this.width = width;
    this.height = height;
    this.maxInstances = maxInstances;
    this.historyLimit = historyLimit;
    /** Number of references available; null = unknown (no range check). */
    this.refCount = refCount;
    /** Snap edges to the 16 px token grid while drawing, moving and resizing. */
    this.snap = snap;
    /** Draw mode: every press starts a new box, even on top of other boxes. */
    this.drawMode = false;
    /** Read-only for callers; change it through the methods. @type {Instance[]} */
    this.instances = [];
    /** Index of the selected instance, -1 for none. */
    this.selected = -1;
    /** Unknown top-level keys. @type {Record<string, any>} */
    this.extra = {};
    /** @type {Snapshot[]} */ this._undo = [];
    /** @type {Snapshot[]} */ this._redo = [];
    /** @type {string|null} */ this._coalesce = null;
    /** @type {any} */ this._gesture = null;
    /** @type {Set<Listener>} */ this._listeners = new Set();
  }

  /** @param {string|object} json @param {ConstructorParameters<typeof LayoutState>[0]} [opts] */
  static fromJSON(json, opts) {
    const s = new LayoutState(opts);
    s.load(json, { keepHistory: false });
    return s;
  }

  // ---- events -------------------------------------------------------------

  /** @param {Listener} fn @returns {() => void} unsubscribe */
  subscribe(fn) {
    this._listeners.add(fn);
    return () => this._listeners.delete(fn);
  }

  /** @param {string} reason */
  _emit(reason) {
    for (const fn of [...this._listeners]) fn(reason);
  }

  // ---- load / serialize -----------------------------------------------------

  /**
   * Replace the state with a layout v1 object or JSON string. A blank string gives
   * an empty layout. Throws LayoutError for unparsable JSON, an unknown version or a
   * box that is not four finite numbers; other bad values load as-is so validate()
   * can show them.
   * InstanceAssemble layout JSON is converted (layout_codec.js).
   * @param {string|object|null|undefined} json
   * @param {{keepHistory?: boolean, reason?: string}} [opts] reason: the change event ("load")
   */
  load(json, { keepHistory = true, reason = "load" } = {}) {
    const doc = parseLayout(json, this);
    if (keepHistory) this._checkpoint();
    else { this._undo = []; this._redo = []; }
    Object.assign(this, doc);
    this.selected = -1;
    this._gesture = null;
    this._emit(reason);
  }

  /**
   * Import pasted or dropped JSON text: a layout v1 or InstanceAssemble layout replaces the
   * layout (its size too); ComfyUI BOUNDING_BOXES add boxes. One undo step. Throws LayoutError.
   * @param {string} text @returns {{kind: string, count: number}}
   */
  importText(text) {
    const { kind, data } = readImport(text);
    if (kind === "bounding_boxes") return { kind, count: this.importBoundingBoxes(data) };
    this.load(data, { reason: "import" });
    return { kind, count: this.instances.length };
  }

  /** Layout v1 object: normalized boxes, unknown keys kept. @returns {Record<string, any>} */
  toJSON() {
    return layoutToJSON(this);
  }

  /** @returns {string} */
  serialize() {
    return JSON.stringify(this.toJSON());
  }

  /** Problems with the current layout, as refcomp_core would see them. @returns {LayoutIssue[]} */
  validate() {
    return validateLayout(this.toJSON(), { maxInstances: this.maxInstances, refCount: this.refCount });
  }

  // ---- undo / redo ------------------------------------------------------------

  /** @returns {Snapshot} */
  _snapshot() {
    return { width: this.width, height: this.height, instances: this.instances.map(cloneInstance),
      selected: this.selected, extra: clone(this.extra) };
  }

  /** @param {Snapshot} s */
  _restore(s) {
    this.width = s.width;
    this.height = s.height;
    this.instances = s.instances.map(cloneInstance);
    this.selected = Math.min(s.selected, this.instances.length - 1);
    this.extra = clone(s.extra);
  }

  /**
   * Record the state before a change. Consecutive changes with the same non-null
   * `coalesce` key (e.g. typing a caption) share one undo step.
   * @param {string|null} [coalesce] @param {Snapshot} [snap]
   */
  _checkpoint(coalesce = null, snap) {
    if (coalesce !== null && coalesce === this._coalesce) return;
    this._coalesce = coalesce;
    this._undo.push(snap ?? this._snapshot());
    if (this._undo.length > this.historyLimit) this._undo.shift();
    this._redo = [];
  }

  /** Forget undo/redo history (e.g. after loading a saved workflow). */
  clearHistory() {
    this._undo = [];
    this._redo = [];
    this._coalesce = null;
  }

  get canUndo() { return this._undo.length > 0; }
  get canRedo() { return this._redo.length > 0; }

  /** @returns {boolean} whether anything was undone */
  undo() {
    const s = this._undo.pop();
    if (!s) return false;
    this._redo.push(this._snapshot());
    this._restore(s);
    this._coalesce = null;
    this._emit("undo");
    return true;
  }

  /** @returns {boolean} whether anything was redone */
  redo() {
    const s = this._redo.pop();
    if (!s) return false;
    this._undo.push(this._snapshot());
    this._restore(s);
    this._coalesce = null;
    this._emit("redo");
    return true;
  }

  // ---- geometry ---------------------------------------------------------------

  /** Bounds for the geometry helpers. */
  get bounds() {
    return { width: this.width, height: this.height, minSize: TOKEN_PX, snap: this.snap, grid: TOKEN_PX };
  }

  /** @param {number} i */
  _has(i) {
    return Number.isInteger(i) && i >= 0 && i < this.instances.length;
  }

  /** @param {boolean} on */
  setSnap(on) {
    this.snap = !!on;
    this._emit("snap");
  }

  /** @param {boolean} on */
  setDrawMode(on) {
    if (this.drawMode === !!on) return;
    this.drawMode = !!on;
    this._emit("mode");
  }

  /**
   * How many references exist (null = unknown: refs are not range-checked). Not an edit.
   * @param {number|null} n
   */
  setRefCount(n) {
    const next = Number.isInteger(n) && /** @type {number} */ (n) >= 0 ? n : null;
    if (next === this.refCount) return;
    this.refCount = next;
    this._emit("refs");
  }

  /**
   * Set the target image size. Boxes keep their normalized position, so they scale.
   * @param {number} width @param {number} height
   */
  setSize(width, height) {
    if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
      throw new LayoutError(`width and height must be positive integers, got ${width}×${height}`, null, "width");
    }
    if (width === this.width && height === this.height) return;
    this._checkpoint();
    const sx = width / this.width;
    const sy = height / this.height;
    for (const inst of this.instances) {
      const r = inst.rect;
      inst.rect = { x0: r.x0 * sx, y0: r.y0 * sy, x1: r.x1 * sx, y1: r.y1 * sy };
    }
    this.width = width;
    this.height = height;
    this._emit("size");
  }

  /** @param {number} index -1 clears the selection */
  select(index) {
    const next = this._has(index) ? index : -1;
    if (next === this.selected) return;
    this.selected = next;
    this._emit("select");
  }

  /** Indices of the boxes under `p` (image px), topmost first. @param {Point} p */
  boxesAt(p) {
    return boxesAt(this.instances, p);
  }

  /**
   * What a press at `p` (image px) starts; see layout_pick.js for the rules.
   * @param {Point} p @param {number} tol edge tolerance, image px
   * @param {{shift?: boolean, inImage?: boolean}} [opts]
   * @returns {import("./layout_pick.js").PressTarget}
   */
  pressTarget(p, tol, { shift = false, inImage = true } = {}) {
    return pressTarget(this.instances, this.selected, p, tol, { draw: this.drawMode || shift, inImage });
  }

  /** A click at `p` selects the next box under it (cycling). @param {Point} p @returns {number} */
  cycleSelect(p) {
    const next = cycleTarget(this.instances, this.selected, p);
    this.select(next);
    return next;
  }

  /**
   * Add a box drawn from `start` to `end` (image px), select it, return its index,
   * or -1 when the layout already has maxInstances boxes.
   * @param {Point} start @param {Point} end @param {Partial<Instance>} [fields]
   */
  addBox(start, end, fields = {}) {
    return this.addRect(rectFromDrag(start, end, this.bounds), fields);
  }

  /** @param {Rect} rect image px @param {Partial<Instance>} [fields] @returns {number} */
  addRect(rect, fields = {}) {
    if (this.instances.length >= this.maxInstances) return -1;
    for (const f of FIELDS) {
      const msg = f in fields ? checkField(f, /** @type {any} */ (fields)[f], this) : null;
      if (msg) throw new LayoutError(msg, this.instances.length, f);
    }
    this._checkpoint();
    this.instances.push({ ref: null, caption: "", depth: null, alpha: null, extra: {}, ...clone(fields),
      rect: fitRect(rect, this.bounds) });
    this.selected = this.instances.length - 1;
    this._emit("add");
    return this.selected;
  }

  /** Set a box's rect (image px), made legal. @param {number} i @param {Rect} rect */
  setRect(i, rect) {
    if (!this._has(i)) return;
    const next = fitRect(rect, this.bounds);
    if (rectsEqual(next, this.instances[i].rect)) return;
    this._checkpoint();
    this.instances[i].rect = next;
    this._emit("edit");
  }

  /** @param {number} i @param {number} dx @param {number} dy image px */
  moveBy(i, dx, dy) {
    if (!this._has(i)) return;
    this.setRect(i, moveRect(this.instances[i].rect, dx, dy, { ...this.bounds, snap: false }));
  }

  /** @param {number} i @param {string} handle @param {number} dx @param {number} dy image px */
  resize(i, handle, dx, dy) {
    if (!this._has(i)) return;
    this.setRect(i, resizeRect(this.instances[i].rect, handle, dx, dy, this.bounds));
  }

  /**
   * Arrow-key nudge of the selected box: 1 px, or one token (16 px) with shift.
   * @param {string} key KeyboardEvent.key @param {boolean} [shift] @returns {boolean} handled
   */
  nudge(key, shift = false) {
    const dir = ARROWS[/** @type {keyof typeof ARROWS} */ (key)];
    if (!dir || !this._has(this.selected)) return false;
    const step = shift ? TOKEN_PX : 1;
    this.moveBy(this.selected, dir[0] * step, dir[1] * step);
    return true;
  }

  /** @param {number} i */
  remove(i) {
    if (!this._has(i)) return;
    this._checkpoint();
    this.instances.splice(i, 1);
    if (this.selected === i) this.selected = -1;
    else if (this.selected > i) this.selected -= 1;
    this._emit("remove");
  }

  /**
   * Copy box i (all fields, unknown keys too), offset by `offset` px, on top; select it.
   * @param {number} i @param {number} [offset] @returns {number} new index, or -1
   */
  duplicate(i, offset = TOKEN_PX) {
    if (!this._has(i) || this.instances.length >= this.maxInstances) return -1;
    const src = this.instances[i];
    let rect = moveRect(src.rect, offset, offset, { ...this.bounds, snap: false });
    if (rectsEqual(rect, src.rect)) rect = moveRect(src.rect, -offset, -offset, { ...this.bounds, snap: false });
    this._checkpoint();
    this.instances.push({ ...cloneInstance(src), rect });
    this.selected = this.instances.length - 1;
    this._emit("add");
    return this.selected;
  }

  /**
   * Move box i to position `to` in the stacking order (clamped). Selection follows.
   * @param {number} i @param {number} to @returns {number} its new index
   */
  reorder(i, to) {
    if (!this._has(i)) return -1;
    const j = Math.max(0, Math.min(this.instances.length - 1, to));
    if (j === i) return i;
    this._checkpoint();
    const sel = this.selected >= 0 ? this.instances[this.selected] : null;
    const [inst] = this.instances.splice(i, 1);
    this.instances.splice(j, 0, inst);
    this.selected = sel ? this.instances.indexOf(sel) : -1;
    this._emit("reorder");
    return j;
  }

  /** @param {number} i */ bringForward(i) { return this.reorder(i, i + 1); }
  /** @param {number} i */ sendBackward(i) { return this.reorder(i, i - 1); }
  /** @param {number} i */ bringToFront(i) { return this.reorder(i, this.instances.length - 1); }
  /** @param {number} i */ sendToBack(i) { return this.reorder(i, 0); }

  // ---- per-box fields ---------------------------------------------------------------

  /**
   * Set ref | caption | depth | alpha of box i. Throws LayoutError (with index and
   * field) for a bad value. Repeated edits of one field make one undo step.
   * @param {number} i @param {"ref"|"caption"|"depth"|"alpha"} field @param {any} value
   */
  setField(i, field, value) {
    if (!this._has(i)) throw new LayoutError(`no instance ${i}`, i, field);
    if (!FIELDS.includes(field)) throw new LayoutError(`unknown field ${field}`, i, field);
    const v = value === undefined ? null : value;
    const msg = checkField(field, v, this);
    if (msg) throw new LayoutError(`instance ${i}, ${field}: ${msg}`, i, field);
    if (this.instances[i][field] === v) return;
    this._checkpoint(`field:${i}:${field}`);
    this.instances[i][field] = v;
    this._emit("field");
  }

  /** Copy of box i. @param {number} i @returns {Instance|null} */
  getInstance(i) {
    return this._has(i) ? cloneInstance(this.instances[i]) : null;
  }

  // ---- ComfyUI BOUNDING_BOXES -----------------------------------------------------

  /**
   * Import core ComfyUI BOUNDING_BOXES: [{x, y, width, height, metadata}] in pixels of
   * this layout's image (optionally wrapped as {"__value__": [...]}). A string
   * metadata, or metadata.caption/label/text, becomes the caption; metadata.depth a
   * depth if valid; the metadata object itself is kept as an extra key. Stops at
   * maxInstances. One undo step.
   * @param {any} boxes @param {{replace?: boolean}} [opts] @returns {number} boxes added
   */
  importBoundingBoxes(boxes, { replace = false } = {}) {
    const parsed = instancesFromBoundingBoxes(boxes, this.bounds);
    this._checkpoint();
    if (replace) { this.instances = []; this.selected = -1; }
    const room = Math.max(0, this.maxInstances - this.instances.length);
    const added = parsed.slice(0, room);
    this.instances.push(...added);
    this._emit("import");
    return added.length;
  }

  // ---- pointer gestures ---------------------------------------------------------

  /**
   * Start a pointer gesture at `p` (image px): "draw" a new box, or "move"/"resize"
   * box `index` by `handle`. Nothing is recorded until the gesture changes something;
   * the whole gesture is then one undo step.
   * @param {GestureKind} kind @param {Point} p @param {{index?: number, handle?: string|null}} [target]
   */
  beginGesture(kind, p, { index = -1, handle = null } = {}) {
    if (kind !== "draw" && !this._has(index)) { this._gesture = null; return; }
    this._gesture = { kind, start: { ...p }, index, handle,
      origin: kind === "draw" ? null : copyRect(this.instances[index].rect), before: this._snapshot(), changed: false };
    if (kind !== "draw") this.select(index);
  }

  /** @param {Point} p current pointer position, image px @returns {boolean} whether the state changed */
  updateGesture(p) {
    const g = this._gesture;
    if (!g) return false;
    let rect;
    if (g.kind === "draw") rect = rectFromDrag(g.start, p, this.bounds);
    else if (g.kind === "move") rect = moveRect(g.origin, p.x - g.start.x, p.y - g.start.y, this.bounds);
    else rect = resizeRect(g.origin, g.handle ?? "se", p.x - g.start.x, p.y - g.start.y, this.bounds);
    if (g.index >= 0 && rectsEqual(rect, this.instances[g.index].rect)) return false;
    if (g.kind === "draw" && g.index < 0) {
      if (this.instances.length >= this.maxInstances) { this._emit("limit"); this._gesture = null; return false; }
    }
    if (!g.changed) { this._checkpoint(null, g.before); g.changed = true; }
    if (g.index < 0) {
      this.instances.push({ rect, ref: null, caption: "", depth: null, alpha: null, extra: {} });
      g.index = this.instances.length - 1;
      this.selected = g.index;
    } else {
      this.instances[g.index].rect = rect;
    }
    this._emit(g.kind);
    return true;
  }

  /** @returns {boolean} whether the gesture changed anything */
  endGesture() {
    const changed = !!this._gesture?.changed;
    this._gesture = null;
    if (changed) this._emit("gesture-end");
    return changed;
  }

  /** Abort the gesture in progress and restore the state from before it. */
  cancelGesture() {
    const g = this._gesture;
    this._gesture = null;
    if (!g?.changed) return;
    this._undo.pop();
    this._restore(g.before);
    this._emit("cancel");
  }

  get gestureActive() { return this._gesture !== null; }
}
