// Form and toolbar for the RefComp layout editor: image size, snap, stacking and
// undo buttons, and the selected box's ref / caption / depth / alpha. Needs a DOM
// but not ComfyUI. Every edit goes through LayoutState.

import { DEPTHS, DEFAULT_MAX_INSTANCES, formatIssues } from "./layout_state.js";

/** @typedef {import("./layout_state.js").LayoutState} LayoutState */

/**
 * @param {Document} doc @param {string} tag @param {Record<string, any>} [props]
 * @param {(Node|string)[]} [children] @returns {any}
 */
function el(doc, tag, props = {}, children = []) {
  const node = doc.createElement(tag);
  const { style, dataset, ...rest } = props;
  Object.assign(node, rest);
  if (style) Object.assign(node.style, style);
  if (dataset) Object.assign(node.dataset, dataset);
  for (const c of children) node.append(c);
  return node;
}

const ROW = { display: "flex", gap: "4px", alignItems: "center", flexWrap: "wrap", margin: "2px 0" };
const INPUT = { background: "#222", color: "#ddd", border: "1px solid #555", borderRadius: "3px", font: "12px sans-serif" };

export class BoxPanel {
  /**
   * @param {HTMLElement} containerEl
   * @param {LayoutState} state
   * @param {{onSizeChange?: (w: number, h: number) => void}} [opts]
   *   called after the user edits width/height here (ComfyUI mirrors them to node widgets)
   */
  constructor(containerEl, state, { onSizeChange } = {}) {
    this.state = state;
    /** Message from the last rejected edit in this panel. */
    this._fieldError = "";
    this.onSizeChange = onSizeChange;
    const doc = containerEl.ownerDocument;
    this.doc = doc;
    const num = (name, min, max, step) => el(doc, "input", { type: "number", min, max, step, style: { ...INPUT, width: "64px" }, dataset: { field: name } });
    const btn = (label, title, fn) => el(doc, "button", { textContent: label, title, style: INPUT, onclick: fn });
    const s = state;

    this.snap = el(doc, "input", { type: "checkbox", dataset: { field: "snap" }, onchange: () => s.setSnap(this.snap.checked) });
    this.widthInput = num("width", 16, 16384, 16);
    this.heightInput = num("height", 16, 16384, 16);
    const onSize = () => this._applySize();
    this.widthInput.onchange = onSize;
    this.heightInput.onchange = onSize;
    const toolbar = el(doc, "div", { style: ROW }, [
      el(doc, "label", { title: "Snap edges to the 16 px token grid" }, [this.snap, " snap"]),
      "W", this.widthInput, "H", this.heightInput,
      btn("undo", "Undo (Ctrl+Z)", () => s.undo()),
      btn("redo", "Redo (Ctrl+Y)", () => s.redo()),
      btn("dup", "Duplicate (Ctrl+D)", () => s.duplicate(s.selected)),
      btn("del", "Delete (Del)", () => s.remove(s.selected)),
      btn("front", "Bring to front (Shift+])", () => s.bringToFront(s.selected)),
      btn("back", "Send to back (Shift+[)", () => s.sendToBack(s.selected)),
    ]);

    this.title = el(doc, "span", { style: { minWidth: "52px" } });
    this.ref = el(doc, "select", { style: INPUT, dataset: { field: "ref" }, title: "Reference image index (none = caption only)" });
    this.caption = el(doc, "input", { type: "text", placeholder: "caption", style: { ...INPUT, flex: "1", minWidth: "80px" }, dataset: { field: "caption" } });
    this.depth = el(doc, "select", { style: INPUT, dataset: { field: "depth" }, title: "Depth: fg keeps identity, mg/bg only placement" },
      [el(doc, "option", { value: "", textContent: "depth: auto" }), ...DEPTHS.map((d) => el(doc, "option", { value: d, textContent: d }))]);
    this.alphaOn = el(doc, "input", { type: "checkbox", title: "Override α (identity vs layout routing)", dataset: { field: "alpha-on" } });
    this.alpha = el(doc, "input", { type: "number", min: 0, max: 1, step: 0.05, style: { ...INPUT, width: "56px" }, dataset: { field: "alpha" } });
    this.error = el(doc, "div", { style: { color: "#ff7875", font: "11px sans-serif", minHeight: "13px" } });

    this.ref.onchange = () => this._set("ref", this.ref.value === "" ? null : Number(this.ref.value));
    this.caption.oninput = () => this._set("caption", this.caption.value);
    this.depth.onchange = () => this._set("depth", this.depth.value || null);
    this.alphaOn.onchange = () => this._set("alpha", this.alphaOn.checked ? this._alphaValue(0.5) : null);
    this.alpha.onchange = () => { if (this.alphaOn.checked) this._set("alpha", this._alphaValue(NaN)); };
    this.form = el(doc, "div", { style: ROW }, [this.title, this.ref, this.caption, this.depth,
      el(doc, "label", {}, [this.alphaOn, " α"]), this.alpha]);

    this.root = el(doc, "div", { className: "refcomp-panel", style: { color: "#ccc", font: "12px sans-serif", padding: "2px 4px" } },
      [toolbar, this.form, this.error]);
    // Keys typed in the form must not reach ComfyUI's shortcuts (Delete removes nodes).
    this.root.addEventListener("keydown", (e) => e.stopPropagation());
    containerEl.appendChild(this.root);
    this._unsubscribe = state.subscribe(() => this.refresh());
    this.refresh();
  }

  destroy() {
    this._unsubscribe();
    this.root.remove();
  }

  /** @param {number} fallback */
  _alphaValue(fallback) {
    const v = this.alpha.value === "" ? fallback : Number(this.alpha.value);
    return Number.isFinite(v) ? v : /** @type {any} */ (this.alpha.value);
  }

  /** @param {"ref"|"caption"|"depth"|"alpha"} field @param {any} value */
  _set(field, value) {
    try {
      this._fieldError = "";
      this.state.setField(this.state.selected, field, value);
    } catch (e) {
      this._fieldError = /** @type {Error} */ (e).message;
    }
    this.refresh();
  }

  _applySize() {
    const w = Number(this.widthInput.value);
    const h = Number(this.heightInput.value);
    try {
      this._fieldError = "";
      this.state.setSize(w, h);
      this.onSizeChange?.(w, h);
    } catch (e) {
      this._fieldError = /** @type {Error} */ (e).message;
      this.widthInput.blur();
      this.heightInput.blur();
    }
    this.refresh();
  }

  /** Refill the options for ref: none, 0..refCount-1 (or 0..max-1 when unknown). */
  _fillRefs() {
    const s = this.state;
    const n = s.refCount ?? DEFAULT_MAX_INSTANCES;
    if (this.ref.options.length === n + 1) return;
    this.ref.replaceChildren(el(this.doc, "option", { value: "", textContent: "ref: none" }),
      ...Array.from({ length: n }, (_, i) => el(this.doc, "option", { value: String(i), textContent: `ref ${i}` })));
  }

  /** Show the state; leaves the field being typed in alone. */
  refresh() {
    const s = this.state;
    if (s.selected !== this._lastSelected) { this._fieldError = ""; this._lastSelected = s.selected; }
    const active = this.doc.activeElement;
    /** @param {any} input @param {string} prop @param {any} value */
    const put = (input, prop, value) => { if (input !== active && input[prop] !== value) input[prop] = value; };
    put(this.snap, "checked", s.snap);
    put(this.widthInput, "value", String(s.width));
    put(this.heightInput, "value", String(s.height));
    this._fillRefs();
    const inst = s.instances[s.selected];
    for (const c of [this.ref, this.caption, this.depth, this.alphaOn, this.alpha]) c.disabled = !inst;
    this.title.textContent = inst ? `box #${s.selected}` : "no box";
    put(this.ref, "value", inst?.ref == null ? "" : String(inst.ref));
    put(this.caption, "value", inst?.caption ?? "");
    put(this.depth, "value", inst?.depth ?? "");
    put(this.alphaOn, "checked", inst?.alpha != null);
    put(this.alpha, "value", inst?.alpha != null ? String(inst.alpha) : "");
    this.alpha.disabled = !inst || inst.alpha == null;
    const issues = formatIssues(s.validate());
    const summary = issues.length ? issues[0] + (issues.length > 1 ? ` (+${issues.length - 1} more)` : "") : "";
    this.error.textContent = this._fieldError || summary;
  }
}
