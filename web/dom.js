// Small DOM helpers for the RefComp editor, and its stylesheet (injected once per document).
//
// Focus rule: every control of the editor that can take keyboard focus is an <input> (buttons
// are <input type="button">, choices are radio inputs). Hosts treat keys typed into an INPUT as
// that input's own, so ComfyUI's workflow undo never runs for a Ctrl+Z pressed in the editor.

/**
 * @param {Document} doc @param {string} tag @param {Record<string, any>} [props]
 * @param {(Node|string)[]} [children] @returns {any}
 */
export function el(doc, tag, props = {}, children = []) {
  const node = doc.createElement(tag);
  const { style, dataset, ...rest } = props;
  Object.assign(node, rest);
  if (style) Object.assign(node.style, style);
  if (dataset) Object.assign(node.dataset, dataset);
  for (const c of children) node.append(c);
  return node;
}

/** A focusable button that is an <input>. @param {Document} doc @param {string} label @param {string} title */
export function button(doc, label, title, onclick, props = {}) {
  return el(doc, "input", { type: "button", value: label, title, className: "refcomp-btn", onclick, ...props });
}

const CSS = `
.refcomp-editor { color: #ccc; font: 12px sans-serif; }
.refcomp-editor input { background: #222; color: #ddd; border: 1px solid #555; border-radius: 3px; font: 12px sans-serif;
  box-sizing: border-box; height: 22px; padding: 0 4px; margin: 0; }
.refcomp-editor input[type=checkbox], .refcomp-editor input[type=radio] { height: auto; margin: 0 2px 0 0; }
.refcomp-editor input.refcomp-btn { cursor: pointer; padding: 0 6px; }
.refcomp-editor input.refcomp-btn:hover:not(:disabled) { background: #333; }
.refcomp-editor input.refcomp-btn[aria-pressed=true] { background: #2f5d8a; border-color: #6aa7e0; color: #fff; }
.refcomp-editor input:disabled, .refcomp-editor label.refcomp-disabled { opacity: 0.4; cursor: not-allowed; }
.refcomp-editor input:focus-visible { outline: 1px solid #6aa7e0; }
.refcomp-row { display: flex; gap: 4px; align-items: center; flex-wrap: wrap; margin: 2px 0; }
.refcomp-seg { display: inline-flex; border: 1px solid #555; border-radius: 3px; overflow: hidden; }
.refcomp-seg label { padding: 1px 5px; cursor: pointer; display: inline-flex; align-items: center; }
.refcomp-seg label:has(input:checked) { background: #2f5d8a; color: #fff; }
.refcomp-list { overflow-y: auto; border-top: 1px solid #333; }
.refcomp-list-row { display: flex; gap: 6px; align-items: center; padding: 1px 4px; cursor: pointer; white-space: nowrap; }
.refcomp-list-row:hover { background: #2a2a2a; }
.refcomp-list-row[aria-selected=true] { background: #2f4a66; }
.refcomp-list-row .refcomp-cap { overflow: hidden; text-overflow: ellipsis; flex: 1; min-width: 0; }
.refcomp-strip { display: flex; gap: 3px; overflow-x: auto; padding: 2px 0; }
.refcomp-strip figure { margin: 0; position: relative; cursor: pointer; flex: 0 0 auto; border: 2px solid transparent; }
.refcomp-strip figure[aria-selected=true] { border-color: #6aa7e0; }
.refcomp-strip figcaption { position: absolute; left: 0; top: 0; background: rgba(0,0,0,.65); color: #fff; font: 10px sans-serif; padding: 0 2px; }
.refcomp-modal { position: fixed; inset: 0; z-index: 10000; background: rgba(0,0,0,.6); display: flex; align-items: center; justify-content: center; }
.refcomp-modal-box { width: 92vw; height: 90vh; display: flex; background: #1e1e1e; border: 1px solid #555; border-radius: 6px; overflow: hidden; }
`;

/** Add the editor's stylesheet to `doc` once. @param {Document} doc */
export function ensureStyle(doc) {
  if (doc.getElementById("refcomp-editor-style")) return;
  doc.head.append(el(doc, "style", { id: "refcomp-editor-style", textContent: CSS }));
}
