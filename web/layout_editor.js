// The whole RefComp layout editor (canvas + panel) in one element. Needs a DOM but
// not ComfyUI: refcomp_canvas.js mounts it in a node, the browser test in a page.

import { LayoutCanvasView } from "./canvas_view.js";
import { BoxPanel } from "./box_panel.js";

/**
 * @typedef {import("./layout_state.js").LayoutState} LayoutState
 * @typedef {{root: HTMLElement, view: LayoutCanvasView, panel: BoxPanel, destroy: () => void}} LayoutEditor
 */

/**
 * Build the editor inside `containerEl`.
 * @param {HTMLElement} containerEl
 * @param {LayoutState} state
 * @param {{onChange?: (state: LayoutState, reason: string) => void,
 *          onSizeChange?: (w: number, h: number) => void}} [opts]
 * @returns {LayoutEditor}
 */
export function createLayoutEditor(containerEl, state, { onChange, onSizeChange } = {}) {
  const doc = containerEl.ownerDocument;
  const root = doc.createElement("div");
  root.className = "refcomp-editor";
  Object.assign(root.style, { display: "flex", flexDirection: "column", width: "100%", height: "100%",
    boxSizing: "border-box", background: "#1e1e1e" });
  const canvasHost = doc.createElement("div");
  Object.assign(canvasHost.style, { flex: "1 1 auto", minHeight: "120px", position: "relative", overflow: "hidden" });
  const panelHost = doc.createElement("div");
  panelHost.style.flex = "0 0 auto";
  root.append(canvasHost, panelHost);
  containerEl.appendChild(root);
  const view = new LayoutCanvasView(canvasHost, state, onChange);
  Object.assign(view.canvas.style, { position: "absolute", left: "0", top: "0" });
  const panel = new BoxPanel(panelHost, state, { onSizeChange });
  return {
    root, view, panel,
    destroy() {
      view.destroy();
      panel.destroy();
      root.remove();
    },
  };
}
