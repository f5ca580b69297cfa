// The whole RefComp layout editor (toolbar, canvas, form, reference strip, box list) in one
// element, and its bigger pop-out version. Needs a DOM but not ComfyUI: refcomp_canvas.js
// mounts it in a node, the browser test in a page.

import { LayoutCanvasView } from "./canvas_view.js";
import { BoxList } from "./box_list.js";
import { BoxPanel } from "./box_panel.js";
import { el, ensureStyle } from "./dom.js";

/**
 * @typedef {import("./layout_state.js").LayoutState} LayoutState
 * @typedef {import("./ref_images.js").RefImages} RefImages
 * @typedef {{root: HTMLElement, view: LayoutCanvasView, panel: BoxPanel, list: BoxList,
 *            expand: () => void, collapse: () => void, readonly expanded: boolean,
 *            importText: (text: string) => void, destroy: () => void}} LayoutEditor
 */

/**
 * Build the editor inside `containerEl`.
 * @param {HTMLElement} containerEl
 * @param {LayoutState} state
 * @param {{onChange?: (state: LayoutState, reason: string) => void,
 *          onSizeChange?: (w: number, h: number) => void, onCommit?: () => void,
 *          images?: RefImages|null, expandable?: boolean}} [opts]
 *   onCommit: an edit is finished (one host undo step); expandable: offer the bigger editor
 * @returns {LayoutEditor}
 */
export function createLayoutEditor(containerEl, state, { onChange, onSizeChange, onCommit, images = null,
  expandable = true } = {}) {
  const doc = containerEl.ownerDocument;
  ensureStyle(doc);
  const root = el(doc, "div", { className: "refcomp-editor", style: { display: "flex", flexDirection: "column",
    width: "100%", height: "100%", boxSizing: "border-box", background: "#1e1e1e", overflow: "hidden" } });
  const main = el(doc, "div", { style: { display: "flex", flexDirection: "column", flex: "1 1 auto", minWidth: "0", minHeight: "0" } });
  const canvasHost = el(doc, "div", { style: { flex: "1 1 auto", minHeight: "120px", position: "relative", overflow: "hidden" } });
  const panelHost = el(doc, "div", { style: { flex: "0 0 auto" } });
  const side = el(doc, "div", { style: { flex: "0 0 auto", display: "flex", flexDirection: "column", minHeight: "0", maxHeight: "40%" } });
  main.append(panelHost, canvasHost);
  root.append(main, side);
  containerEl.appendChild(root);

  /** @type {LayoutEditor} */
  let editor;
  const importText = (/** @type {string} */ text) => {
    try {
      const { kind, count } = state.importText(text);
      view.flash(kind === "bounding_boxes" ? `Added ${count} box(es) from BOUNDING_BOXES`
        : `Imported ${count} box(es) (${kind === "instanceassemble" ? "InstanceAssemble" : "layout v1"})`);
      onSizeChange?.(state.width, state.height);
      onCommit?.();
    } catch (e) {
      view.flash(`Import failed: ${/** @type {Error} */ (e).message}`, 6000);
    }
  };
  const view = new LayoutCanvasView(canvasHost, state, onChange, { images, onCommit, onImport: importText });
  const panel = new BoxPanel(panelHost, state, { onSizeChange, onCommit, onImport: importText,
    onKey: (e) => view.handleKey(e),
    onExpand: expandable ? () => (editor.expanded ? editor.collapse() : editor.expand()) : null });
  const list = new BoxList(side, state, images, { onCommit, onPick: () => view.focus() });

  /** @type {{overlay: HTMLElement, placeholder: HTMLElement, onKey: (e: KeyboardEvent) => void}|null} */
  let popout = null;
  editor = {
    root, view, panel, list, importText,
    get expanded() { return popout !== null; },
    /** Move the editor into a large dialog over the page, with the box list beside the canvas. */
    expand() {
      if (popout) return;
      const placeholder = el(doc, "div", { className: "refcomp-placeholder", textContent: "Editing in the bigger editor…",
        style: { color: "#aaa", font: "12px sans-serif", padding: "12px" } });
      root.replaceWith(placeholder);
      const box = el(doc, "div", { className: "refcomp-modal-box" }, [root]);
      const overlay = el(doc, "div", { className: "refcomp-modal", role: "dialog", ariaLabel: "RefComp layout editor" }, [box]);
      overlay.addEventListener("pointerdown", (e) => { if (e.target === overlay) editor.collapse(); });
      const onKey = (/** @type {KeyboardEvent} */ e) => { if (e.key === "Escape") { e.stopPropagation(); editor.collapse(); } };
      overlay.addEventListener("keydown", onKey);
      Object.assign(root.style, { flexDirection: "row" });
      Object.assign(side.style, { maxHeight: "none", width: "min(34%, 420px)", borderLeft: "1px solid #333" });
      list.setCollapsed(false);
      doc.body.append(overlay);
      popout = { overlay, placeholder, onKey };
      view.resize();
      view.focus();
    },
    collapse() {
      if (!popout) return;
      popout.placeholder.replaceWith(root);
      popout.overlay.remove();
      popout = null;
      Object.assign(root.style, { flexDirection: "column" });
      Object.assign(side.style, { maxHeight: "40%", width: "", borderLeft: "" });
      list.setCollapsed(true);
      view.resize();
    },
    destroy() {
      editor.collapse();
      view.destroy();
      panel.destroy();
      list.destroy();
      root.remove();
    },
  };
  return editor;
}
