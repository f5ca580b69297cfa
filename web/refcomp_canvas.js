// ComfyUI glue for the RefComp layout canvas. Everything else lives in the
// ComfyUI-free modules next to this file (layout_state.js, layout_editor.js, ...).
//
// For nodes of type RefCompLayoutCanvas: the declared STRING input `layout_json` is
// hidden but keeps the layout v1 JSON, so saved workflows and API prompts carry it;
// a DOM widget shows the editor and writes the JSON back on every change. Optional
// `width`/`height` INT widgets are kept in sync with the layout's image size. A
// background image is only ever shown from a URL, never stored.

import { app } from "../../scripts/app.js";
import { LayoutState } from "./layout_state.js";
import { createLayoutEditor } from "./layout_editor.js";

const NODE_TYPE = "RefCompLayoutCanvas";
const JSON_WIDGET = "layout_json";
const REF_COUNT_WIDGETS = ["ref_count", "num_refs"];
/** State changes that do not change the JSON. */
const NO_WRITE = new Set(["select", "snap", "limit", "load"]);

/** @param {any} node @param {string} name */
const findWidget = (node, name) => node.widgets?.find((/** @type {any} */ w) => w.name === name);

/** Hide a widget but keep its value serialized. @param {any} w */
function hideWidget(w) {
  w.hidden = true; // current frontends
  w.computeSize = () => [0, -4]; // legacy litegraph layout
  if (w.element) w.element.style.display = "none";
  else w.type = "refcomp-hidden"; // legacy litegraph skips drawing unknown types
}

/** Chain a method on an object; the original runs first. @param {any} obj @param {string} name @param {Function} fn */
function chain(obj, name, fn) {
  const orig = obj[name];
  obj[name] = function (...args) {
    const r = orig?.apply(this, args);
    fn.apply(this, args);
    return r;
  };
  return () => { obj[name] = orig; };
}

/** URL of an image to show behind the boxes: this node's preview, else the upstream IMAGE's. @param {any} node */
function backgroundUrl(node) {
  if (node.imgs?.[0]?.src) return node.imgs[0].src;
  const graph = node.graph ?? app.graph;
  for (const input of node.inputs ?? []) {
    if (input.type !== "IMAGE" || input.link == null) continue;
    const link = graph?.links?.get?.(input.link) ?? graph?.links?.[input.link];
    const origin = link ? graph.getNodeById(link.origin_id) : null;
    if (origin?.imgs?.[0]?.src) return origin.imgs[0].src;
  }
  return null;
}

/** @param {any} node */
function attachEditor(node) {
  const jsonWidget = findWidget(node, JSON_WIDGET);
  if (!jsonWidget) {
    console.warn(`[RefComp] ${NODE_TYPE} has no '${JSON_WIDGET}' widget; layout canvas disabled`);
    return;
  }
  hideWidget(jsonWidget);
  const wW = findWidget(node, "width");
  const hW = findWidget(node, "height");
  const state = new LayoutState();
  const el = document.createElement("div");
  Object.assign(el.style, { width: "100%", height: "100%", minHeight: "300px" });

  const writeJson = () => { jsonWidget.value = state.serialize(); node.setDirtyCanvas?.(true, false); };
  /** Size from the node's INT widgets, if it has them. */
  const syncSizeFromWidgets = () => {
    if (!wW || !hW) return;
    try { state.setSize(Number(wW.value), Number(hW.value)); } catch (e) { console.warn("[RefComp]", e); }
  };
  /** Load the hidden widget's JSON (after creation, configure or setValue). @param {any} value */
  const loadJson = (value) => {
    try {
      state.load(typeof value === "string" ? value : JSON.stringify(value ?? ""), { keepHistory: false });
    } catch (e) {
      console.warn(`[RefComp] node ${node.id}: cannot read ${JSON_WIDGET}; the canvas starts empty and will overwrite it on the first edit.`, e);
      editor?.view.flash(String(/** @type {Error} */ (e).message));
    }
    const rc = REF_COUNT_WIDGETS.map((n) => findWidget(node, n)).find(Boolean);
    state.refCount = rc && Number.isInteger(rc.value) ? rc.value : null;
    syncSizeFromWidgets();
    state.clearHistory();
  };

  /** @type {import("./layout_editor.js").LayoutEditor|null} */
  let editor = null;
  editor = createLayoutEditor(el, state, {
    onChange: (_s, reason) => { if (!NO_WRITE.has(reason)) writeJson(); },
    onSizeChange: (w, h) => { if (wW) wW.value = w; if (hW) hW.value = h; },
  });
  loadJson(jsonWidget.value);

  const domWidget = node.addDOMWidget("layout_canvas", "REFCOMP_CANVAS", el, {
    getValue: () => state.serialize(),
    setValue: (/** @type {any} */ v) => loadJson(v),
    serialize: false,
    getMinHeight: () => 320,
  });
  domWidget.serialize = false;

  const tagId = () => { if (el.dataset.refcompNode !== String(node.id)) el.dataset.refcompNode = String(node.id); };
  const undo = [
    chain(node, "onConfigure", () => loadJson(jsonWidget.value)),
    chain(node, "onDrawForeground", () => { tagId(); editor?.view.setBackground(backgroundUrl(node)); }),
  ];
  for (const w of [wW, hW]) if (w) undo.push(chain(w, "callback", syncSizeFromWidgets));
  chain(node, "onRemoved", () => {
    editor?.destroy();
    editor = null;
    for (const u of undo) u();
  });
  if (node.size?.[1] < 480) node.setSize?.([Math.max(node.size[0], 420), 480]);
}

app.registerExtension({
  name: "RefComp.LayoutCanvas",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;
    chain(nodeType.prototype, "onNodeCreated", function () { attachEditor(this); });
  },
});
