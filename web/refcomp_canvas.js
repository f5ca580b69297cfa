// ComfyUI glue for the RefComp layout canvas. Everything else lives in the ComfyUI-free
// modules next to this file (layout_state.js, layout_editor.js, ...).
//
// For nodes of type RefCompLayoutCanvas: the declared STRING input `layout_json` is hidden
// but keeps the layout v1 JSON, so saved workflows and API prompts carry it; a DOM widget
// shows the editor and writes the JSON back on every change. The `width`/`height` INT widgets
// follow the layout's image size and back. Reference count and thumbnails follow the node's
// inputs (comfy_refs.js). Each finished canvas edit is one step of ComfyUI's undo history.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { ReferenceTracker, UI_KEY, findWidget, upstream } from "./comfy_refs.js";
import { isInstanceAssemble } from "./layout_codec.js";
import { createLayoutEditor } from "./layout_editor.js";
import { LayoutState } from "./layout_state.js";
import { RefImages } from "./ref_images.js";

const NODE_TYPE = "RefCompLayoutCanvas";
const JSON_WIDGET = "layout_json";
/** State changes that do not change the JSON. */
const NO_WRITE = new Set(["select", "snap", "limit", "load", "mode", "refs"]);
const MIN_SIZE = [600, 780];

/** Hide a widget but keep its value serialized. @param {any} w */
function hideWidget(w) {
  w.hidden = true; // current frontends
  w.computeSize = () => [0, -4]; // legacy litegraph layout
  if (w.element) w.element.style.display = "none";
  else w.type = "refcomp-hidden"; // legacy litegraph skips drawing unknown types
}

/**
 * Keep a DOM widget as wide as its node. Frontends draw unknown widget types in the
 * properties panel by setting `widget.width` to the panel's width (and never resetting it),
 * and the DOM widget then takes that width on the node too. The editor always follows the node.
 * @param {any} w
 */
function followNodeWidth(w) {
  Object.defineProperty(w, "width", { configurable: true, enumerable: false, get: () => undefined, set: () => {} });
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
  return upstream(node, "background")?.imgs?.[0]?.src ?? null;
}

/** One step of ComfyUI's workflow undo history for the edit just finished. */
function commitToHistory() {
  const c = app.canvas;
  if (typeof c?.emitBeforeChange !== "function" || typeof c?.emitAfterChange !== "function") return;
  c.emitBeforeChange();
  c.emitAfterChange();
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
  const images = new RefImages(document);
  const el = document.createElement("div");
  Object.assign(el.style, { width: "100%", height: "100%", minHeight: "360px" });

  const writeJson = () => {
    jsonWidget.value = state.serialize();
    if (wW && wW.value !== state.width) wW.value = state.width;
    if (hW && hW.value !== state.height) hW.value = state.height;
    node.setDirtyCanvas?.(true, false);
  };
  /** Size from the node's INT widgets, if it has them. */
  const syncSizeFromWidgets = () => {
    if (!wW || !hW) return;
    try { state.setSize(Number(wW.value), Number(hW.value)); } catch (e) { console.warn("[RefComp]", e); }
  };
  /**
   * Load layout JSON into the editor: the hidden widget's after creation or configure, or a new
   * value set from outside (e.g. the properties panel). InstanceAssemble JSON is converted and
   * written back as layout v1. @param {any} value @param {boolean} [external] a user edit (undoable)
   */
  const loadJson = (value, external = false) => {
    const text = typeof value === "string" ? value : JSON.stringify(value ?? "");
    let convert = false;
    try {
      convert = isInstanceAssemble(JSON.parse(text));
    } catch { /* reported by load */ }
    try {
      state.load(text, { keepHistory: external });
    } catch (e) {
      console.warn(`[RefComp] node ${node.id}: cannot read ${JSON_WIDGET}; the canvas starts empty and will overwrite it on the first edit.`, e);
      editor?.view.flash(String(/** @type {Error} */ (e).message), 6000);
    }
    if (convert) writeJson();
    else syncSizeFromWidgets();
    if (!external) state.clearHistory();
    refs.update();
  };

  const refs = new ReferenceTracker(node, state, images, api, (m) => editor?.view.flash(m, 5000));
  /** @type {import("./layout_editor.js").LayoutEditor|null} */
  let editor = null;
  editor = createLayoutEditor(el, state, {
    images,
    onChange: (_s, reason) => { if (!NO_WRITE.has(reason)) writeJson(); },
    onSizeChange: (w, h) => { if (wW) wW.value = w; if (hW) hW.value = h; },
    onCommit: commitToHistory,
  });
  loadJson(jsonWidget.value);

  const domWidget = node.addDOMWidget("layout_canvas", "REFCOMP_CANVAS", el, {
    getValue: () => state.serialize(),
    setValue: (/** @type {any} */ v) => loadJson(v),
    serialize: false,
    getMinHeight: () => 360,
  });
  domWidget.serialize = false;
  followNodeWidth(domWidget);

  const tagId = () => { if (el.dataset.refcompNode !== String(node.id)) el.dataset.refcompNode = String(node.id); };
  const undo = [
    chain(node, "onConfigure", () => loadJson(jsonWidget.value)),
    chain(node, "onDrawForeground", () => { tagId(); refs.update(); editor?.view.setBackground(backgroundUrl(node)); }),
    chain(node, "onConnectionsChange", () => refs.update()),
    chain(node, "onExecuted", (/** @type {any} */ output) => { if (output?.[UI_KEY]) refs.executed(output); }),
    chain(jsonWidget, "callback", (/** @type {any} */ v) => { if (v !== state.serialize()) loadJson(v, true); }),
  ];
  for (const w of [wW, hW]) if (w) undo.push(chain(w, "callback", syncSizeFromWidgets));
  const numRefs = findWidget(node, "num_refs");
  if (numRefs) undo.push(chain(numRefs, "callback", () => refs.update()));
  chain(node, "onRemoved", () => {
    editor?.destroy();
    editor = null;
    for (const u of undo) u();
  });
  if (!(node.size?.[0] >= MIN_SIZE[0] && node.size?.[1] >= MIN_SIZE[1])) {
    node.setSize?.([Math.max(node.size?.[0] ?? 0, MIN_SIZE[0]), Math.max(node.size?.[1] ?? 0, MIN_SIZE[1])]);
  }
  tagId();
}

app.registerExtension({
  name: "RefComp.LayoutCanvas",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;
    chain(nodeType.prototype, "onNodeCreated", function () { attachEditor(this); });
  },
});
