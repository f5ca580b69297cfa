// Toolbar and form of the RefComp layout editor: draw mode, snap, image size, undo/redo,
// stacking, import and a bigger editor; the selected box's ref / caption / depth / α. Needs a
// DOM but not ComfyUI. Every edit goes through LayoutState. Every focusable control is an
// <input> (see dom.js).

import { button, el } from "./dom.js";
import { DEPTHS, formatIssues } from "./layout_state.js";

/** @typedef {import("./layout_state.js").LayoutState} LayoutState */

let uid = 0;

export class BoxPanel {
  /**
   * @param {HTMLElement} containerEl
   * @param {LayoutState} state
   * @param {{onSizeChange?: (w: number, h: number) => void, onCommit?: () => void,
   *          onImport?: (text: string) => void, onExpand?: (() => void)|null,
   *          onKey?: (e: KeyboardEvent) => void}} [opts]
   *   onSizeChange: after the user edits width/height here (ComfyUI mirrors them to node widgets);
   *   onCommit: an edit is finished; onImport: text of a chosen file; onExpand: open the big editor;
   *   onKey: keys pressed on a button or choice (not in a text field) go to the canvas's shortcuts
   */
  constructor(containerEl, state, { onSizeChange, onCommit, onImport, onExpand = null, onKey } = {}) {
    this.state = state;
    /** Message from the last rejected edit in this panel. */
    this._fieldError = "";
    this.onSizeChange = onSizeChange;
    this.onCommit = onCommit;
    const doc = containerEl.ownerDocument;
    this.doc = doc;
    const s = state;
    const num = (name, min, max, step, width) => el(doc, "input", { type: "number", min, max, step,
      style: { width }, dataset: { field: name } });
    const act = (label, title, fn, action) => button(doc, label, title, () => { fn(); this._commit(); },
      { dataset: { action } });

    this.drawToggle = act("draw", "Draw mode (B): every drag draws a new box, even over other boxes. "
      + "Without it, drag on empty space draws, Shift+drag draws anywhere.", () => s.setDrawMode(!s.drawMode), "draw-mode");
    this.snap = el(doc, "input", { type: "checkbox", dataset: { field: "snap" }, onchange: () => s.setSnap(this.snap.checked) });
    this.widthInput = num("width", 16, 16384, 16, "54px");
    this.heightInput = num("height", 16, 16384, 16, "54px");
    this.widthInput.onchange = this.heightInput.onchange = () => this._applySize();
    this.fileInput = el(doc, "input", { type: "file", accept: ".json,application/json", style: { display: "none" },
      dataset: { action: "import-file" } });
    this.fileInput.onchange = async () => {
      const file = this.fileInput.files?.[0];
      this.fileInput.value = "";
      if (file) onImport?.(await file.text());
    };
    this.toolbar = el(doc, "div", { className: "refcomp-row refcomp-toolbar" }, [
      this.drawToggle,
      el(doc, "label", { title: "Snap edges to the 16 px token grid" }, [this.snap, "snap"]),
      "W", this.widthInput, "H", this.heightInput,
      act("↶", "Undo (Ctrl+Z in the canvas)", () => s.undo(), "undo"),
      act("↷", "Redo (Ctrl+Y)", () => s.redo(), "redo"),
      act("dup", "Duplicate (Ctrl+D)", () => s.duplicate(s.selected), "duplicate"),
      act("del", "Delete (Del)", () => s.remove(s.selected), "delete"),
      act("front", "Bring to front (Shift+])", () => s.bringToFront(s.selected), "front"),
      act("back", "Send to back (Shift+[)", () => s.sendToBack(s.selected), "back"),
      button(doc, "open", "Import a layout file: layout v1, InstanceAssemble JSON or ComfyUI BOUNDING_BOXES "
        + "(or paste one with Ctrl+V in the canvas, or drop the file on it)", () => this.fileInput.click(),
      { dataset: { action: "import" } }),
      this.fileInput,
      ...(onExpand ? [button(doc, "⤢", "Bigger editor", onExpand, { dataset: { action: "expand" } })] : []),
    ]);

    this.title = el(doc, "span", { style: { minWidth: "46px" } });
    this.ref = el(doc, "input", { type: "number", min: 0, step: 1, placeholder: "none", style: { width: "52px" },
      dataset: { field: "ref" }, title: "Reference index (empty = caption only)" });
    this.caption = el(doc, "input", { type: "text", placeholder: "caption", style: { flex: "1", minWidth: "80px" },
      dataset: { field: "caption" } });
    const group = `refcomp-depth-${++uid}`;
    this.depthInputs = ["", ...DEPTHS].map((d) => el(doc, "input", { type: "radio", name: group, value: d,
      dataset: { field: "depth" }, onchange: () => this._set("depth", d || null) }));
    this.depth = el(doc, "span", { className: "refcomp-seg", title: "Depth: fg keeps identity, mg/bg only placement" },
      this.depthInputs.map((r) => el(doc, "label", {}, [r, r.value || "auto"])));
    this.alphaOn = el(doc, "input", { type: "checkbox", title: "Override α (identity vs layout routing)", dataset: { field: "alpha-on" } });
    this.alpha = el(doc, "input", { type: "number", min: 0, max: 1, step: 0.05, style: { width: "52px" }, dataset: { field: "alpha" } });
    this.error = el(doc, "div", { className: "refcomp-error", style: { color: "#ff7875", font: "11px sans-serif", minHeight: "13px" } });

    this.ref.onchange = () => this._set("ref", this.ref.value === "" ? null : Number(this.ref.value));
    this.caption.oninput = () => this._set("caption", this.caption.value, false);
    this.caption.onchange = () => this._commit();
    this.alphaOn.onchange = () => this._set("alpha", this.alphaOn.checked ? this._alphaValue(0.5) : null);
    this.alpha.onchange = () => { if (this.alphaOn.checked) this._set("alpha", this._alphaValue(NaN)); };
    this.refLabel = el(doc, "label", {}, ["ref ", this.ref]);
    this.alphaLabel = el(doc, "label", {}, [this.alphaOn, "α"]);
    this.form = el(doc, "div", { className: "refcomp-row" }, [this.title, this.refLabel, this.caption, this.depth,
      this.alphaLabel, this.alpha]);

    this.root = el(doc, "div", { className: "refcomp-panel", style: { padding: "2px 4px" } },
      [this.toolbar, this.form, this.error]);
    // Keys typed in the form must not reach ComfyUI's shortcuts (Delete removes nodes). On a
    // button or a choice, the canvas's shortcuts apply (Ctrl+Z after clicking "draw" undoes).
    this.root.addEventListener("keydown", (e) => {
      const t = /** @type {HTMLInputElement} */ (e.target);
      if (!["text", "number", "file"].includes(t.type)) onKey?.(e);
      e.stopPropagation();
    });
    containerEl.appendChild(this.root);
    this._unsubscribe = state.subscribe(() => this.refresh());
    this.refresh();
  }

  destroy() {
    this._unsubscribe();
    this.root.remove();
  }

  _commit() {
    this.onCommit?.();
  }

  /** @param {number} fallback */
  _alphaValue(fallback) {
    const v = this.alpha.value === "" ? fallback : Number(this.alpha.value);
    return Number.isFinite(v) ? v : /** @type {any} */ (this.alpha.value);
  }

  /** @param {"ref"|"caption"|"depth"|"alpha"} field @param {any} value @param {boolean} [commit] */
  _set(field, value, commit = true) {
    try {
      this._fieldError = "";
      this.state.setField(this.state.selected, field, value);
      if (commit) this._commit();
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
      this._commit();
    } catch (e) {
      this._fieldError = /** @type {Error} */ (e).message;
      this.widthInput.blur();
      this.heightInput.blur();
    }
    this.refresh();
  }

  /** Show the state; leaves the field being typed in alone. */
  refresh() {
    const s = this.state;
    if (s.selected !== this._lastSelected) { this._fieldError = ""; this._lastSelected = s.selected; }
    const active = this.doc.activeElement;
    /** @param {any} input @param {string} prop @param {any} value */
    const put = (input, prop, value) => { if (input !== active && input[prop] !== value) input[prop] = value; };
    this.drawToggle.setAttribute("aria-pressed", String(s.drawMode));
    put(this.snap, "checked", s.snap);
    put(this.widthInput, "value", String(s.width));
    put(this.heightInput, "value", String(s.height));
    put(this.ref, "max", s.refCount == null ? "" : String(Math.max(s.refCount - 1, 0)));
    const inst = s.instances[s.selected];
    for (const c of [this.ref, this.caption, this.alphaOn, ...this.depthInputs]) c.disabled = !inst;
    for (const l of [this.refLabel, this.alphaLabel, ...this.depth.children]) l.classList.toggle("refcomp-disabled", !inst);
    this.title.textContent = inst ? `box #${s.selected}` : "no box";
    put(this.ref, "value", inst?.ref == null ? "" : String(inst.ref));
    put(this.caption, "value", inst?.caption ?? "");
    for (const r of this.depthInputs) put(r, "checked", Boolean(inst) && r.value === (inst?.depth ?? ""));
    put(this.alphaOn, "checked", inst?.alpha != null);
    put(this.alpha, "value", inst?.alpha != null ? String(inst.alpha) : "");
    this.alpha.disabled = !inst || inst.alpha == null;
    const issues = formatIssues(s.validate());
    const summary = issues.length ? issues[0] + (issues.length > 1 ? ` (+${issues.length - 1} more)` : "") : "";
    this.error.textContent = this._fieldError || summary;
  }
}
