// The overview under (or beside) the RefComp canvas: a strip of the reference images (click
// one to give it to the selected box) and a list of the boxes, front first, each with its
// reference thumbnail, ref / depth / α and caption; click a row to select the box, ▲ / ▼ to
// change its stacking. Needs a DOM but not ComfyUI.

import { paintContained } from "./canvas_paint.js";
import { button, el } from "./dom.js";

/**
 * @typedef {import("./layout_state.js").LayoutState} LayoutState
 * @typedef {import("./ref_images.js").RefImages} RefImages
 */

const THUMB = 28;

export class BoxList {
  /**
   * @param {HTMLElement} containerEl @param {LayoutState} state @param {RefImages|null} images
   * @param {{onCommit?: () => void, onPick?: () => void, collapsed?: boolean}} [opts]
   *   onPick: a row or thumbnail was clicked (the editor gives the canvas focus back)
   */
  constructor(containerEl, state, images, { onCommit, onPick, collapsed = true } = {}) {
    const doc = containerEl.ownerDocument;
    Object.assign(this, { doc, state, images, onCommit, onPick });
    this.strip = el(doc, "div", { className: "refcomp-strip" });
    this.toggle = button(doc, "", "Show or hide the list of boxes", () => this.setCollapsed(!this.collapsed),
      { dataset: { action: "list" } });
    this.rows = el(doc, "div", { className: "refcomp-list-rows" });
    this.list = el(doc, "div", { className: "refcomp-list" }, [this.rows]);
    this.root = el(doc, "div", { className: "refcomp-overview", style: { display: "flex", flexDirection: "column",
      minHeight: "0", padding: "0 4px" } }, [this.strip, el(doc, "div", { className: "refcomp-row" }, [this.toggle]), this.list]);
    containerEl.appendChild(this.root);
    this.collapsed = collapsed;
    this._unsubscribe = state.subscribe((reason) => { if (!state.gestureActive || reason === "select") this.refresh(); });
    this._unImages = images?.subscribe(() => this.refresh()) ?? (() => {});
    this.refresh();
  }

  destroy() {
    this._unsubscribe();
    this._unImages();
    this.root.remove();
  }

  /** @param {boolean} on */
  setCollapsed(on) {
    this.collapsed = on;
    this.refresh();
  }

  refresh() {
    this._refreshStrip();
    const s = this.state;
    const n = s.instances.length;
    this.toggle.value = `${this.collapsed ? "▸" : "▾"} ${n} box${n === 1 ? "" : "es"}`;
    this.list.style.display = this.collapsed ? "none" : "block";
    if (this.collapsed) return;
    const rows = [];
    for (let i = n - 1; i >= 0; i--) rows.push(this._row(i));
    this.rows.replaceChildren(...rows);
  }

  /** One row of the list (box i). @param {number} i */
  _row(i) {
    const { doc, state: s } = this;
    const inst = s.instances[i];
    const thumb = el(doc, "canvas", { width: THUMB, height: THUMB, style: { width: `${THUMB}px`, height: `${THUMB}px`,
      background: "#333", flex: "0 0 auto" } });
    const img = this.images?.get(inst.ref);
    if (img) paintContained(thumb.getContext("2d"), img, { x: 0, y: 0, w: THUMB, h: THUMB });
    const facts = [`#${i}`, inst.ref == null ? "no ref" : `ref ${inst.ref}`, inst.depth ?? "auto",
      inst.alpha == null ? "" : `α ${inst.alpha}`].filter(Boolean).join(" · ");
    const row = el(doc, "div", { className: "refcomp-list-row", title: inst.caption || "(no caption)",
      dataset: { index: String(i) }, onclick: () => { s.select(i); this.onPick?.(); } }, [
      thumb, el(doc, "span", { textContent: facts, style: { flex: "0 0 auto" } }),
      el(doc, "span", { className: "refcomp-cap", textContent: inst.caption ?? "" }),
      button(doc, "▲", "Bring forward (drawn over the box above in this list)", (e) => this._move(e, i, i + 1),
        { tabIndex: -1, disabled: i === s.instances.length - 1, dataset: { action: "forward" } }),
      button(doc, "▼", "Send backward", (e) => this._move(e, i, i - 1),
        { tabIndex: -1, disabled: i === 0, dataset: { action: "backward" } }),
    ]);
    row.setAttribute("aria-selected", String(i === s.selected));
    return row;
  }

  /** @param {Event} e @param {number} i @param {number} to */
  _move(e, i, to) {
    e.stopPropagation();
    this.state.reorder(i, to);
    this.onCommit?.();
    this.onPick?.();
  }

  _refreshStrip() {
    const { doc, images, state: s } = this;
    const n = images?.count ?? 0;
    this.strip.style.display = n ? "flex" : "none";
    const sel = s.instances[s.selected];
    const key = `${n}|${images?.items.map((it) => it.url).join()}|${sel?.ref}|${images?.items.filter((it) => it.img?.complete).length}`;
    if (key === this._stripKey) return;
    this._stripKey = key;
    const figs = [];
    for (let r = 0; r < n; r++) {
      const c = el(doc, "canvas", { width: 36, height: 36, style: { width: "36px", height: "36px", background: "#333", display: "block" } });
      const img = images?.get(r);
      if (img) paintContained(c.getContext("2d"), img, { x: 0, y: 0, w: 36, h: 36 });
      const fig = el(doc, "figure", { title: `ref ${r}${images?.name(r) ? ` · ${images.name(r)}` : ""}: click to use it `
        + "for the selected box", dataset: { ref: String(r) }, onclick: () => this._pick(r) },
      [c, el(doc, "figcaption", { textContent: String(r) })]);
      fig.setAttribute("aria-selected", String(sel?.ref === r));
      figs.push(fig);
    }
    this.strip.replaceChildren(...figs);
  }

  /** Give reference r to the selected box. @param {number} r */
  _pick(r) {
    const s = this.state;
    if (s.selected < 0) return;
    try {
      s.setField(s.selected, "ref", r);
      this.onCommit?.();
    } catch (e) {
      console.warn("[RefComp]", e);
    }
    this.onPick?.();
  }
}
